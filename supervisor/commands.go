package supervisor

import (
	"fmt"
	"strings"

	"github.com/supervisor-dev/supervisor/signals"
)

// command is one control command: what the control server checks before a
// request reaches the loop, and what the loop does with it.
type command struct {
	name string
	// check rejects a malformed request in the server, before the loop
	// sees it; nil: every request naming the command is well-formed.
	check func(Request) error
	// run carries the request out in the loop and answers c.Reply exactly
	// once: at once, or later (reload --wait answers when the rollout ends).
	run func(m *master, c Call)
}

// commands is the whole control vocabulary (supervisor status, reload,
// scale, stop): the server validates against it and the loop dispatches
// through it, so a new command is one row here plus its run function.
var commands = []command{
	{name: "status", run: (*master).callStatus},
	{name: "reload", run: (*master).callReload},
	{name: "scale", check: func(r Request) error { _, _, err := ParseScale(r.Scale); return err }, run: (*master).callScale},
	{name: "stop", run: (*master).callStop},
	{name: "upgrade", run: (*master).callUpgrade},
}

// lookupCommand finds a command by name, or says which names there are.
func lookupCommand(name string) (command, error) {
	names := make([]string, len(commands))
	for i, c := range commands {
		if c.name == name {
			return c, nil
		}
		names[i] = c.name
	}
	last := len(names) - 1
	return command{}, fmt.Errorf("unknown command %q (want %s or %s)", name, strings.Join(names[:last], ", "), names[last])
}

// checkCommand is the server's check of a request's command and arguments.
func checkCommand(r Request) error {
	c, err := lookupCommand(r.Command)
	if err == nil && c.check != nil {
		err = c.check(r)
	}
	return err
}

// onCall answers a control request through the commands table.
func (m *master) onCall(c Call) {
	cmd, err := lookupCommand(c.Command)
	if err != nil {
		c.Reply <- Response{Error: err.Error()}
		return
	}
	cmd.run(m, c)
}

func (m *master) callStatus(c Call) {
	st := m.status()
	c.Reply <- Response{OK: true, Status: &st}
}

func (m *master) callReload(c Call) { m.reload(c.Reply, c.Wait) }

func (m *master) callScale(c Call) {
	n, relative, err := ParseScale(c.Scale)
	if relative {
		n += m.cfg().Workers
	}
	if err == nil {
		err = m.scale(n)
	}
	if err != nil {
		c.Reply <- Response{Error: err.Error()}
		return
	}
	c.Reply <- Response{OK: true, Message: fmt.Sprintf("scaling to %d workers", n)}
}

func (m *master) callStop(c Call) {
	intent := signals.Stop
	if c.Fast {
		intent = signals.FastStop
	}
	m.onIntent(intent, "control")
	c.Reply <- Response{OK: true, Message: "stopping"}
}
