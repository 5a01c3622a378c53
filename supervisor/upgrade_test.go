package supervisor

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeUpgrader is tableflip for two simulated masters: AddFile keeps the
// new master's end of the link, Upgrade returns what the test sends.
type fakeUpgrader struct {
	link    *os.File
	outcome chan error
	stopped bool
}

func (f *fakeUpgrader) AddFile(name string, file *os.File) error {
	if name != LinkName {
		return errors.New("unexpected file " + name)
	}
	raw, err := file.SyscallConn()
	if err != nil {
		return err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if derr != nil {
		return derr
	}
	f.link = os.NewFile(uintptr(fd), name)
	return nil
}

func (f *fakeUpgrader) Upgrade() error { return <-f.outcome }
func (f *fakeUpgrader) Stop()          { f.stopped = true }

// twoMasters is an old master (running, all ready) upgrading to a new one,
// both simulated, talking over a real link.
type twoMasters struct {
	t        *testing.T
	old, new *sim
	up       *fakeUpgrader
	want     int // workers + max_surge: the process bound across both
}

func newTwoMasters(t *testing.T, workers int, surge string) *twoMasters {
	edit := func(c *Config) { c.Workers, c.MaxSurge = workers, surge }
	tm := &twoMasters{t: t, old: newSim(t, edit), up: &fakeUpgrader{outcome: make(chan error, 1)}}
	tm.old.m.opts.Upgrader = tm.up
	tm.old.readyAll()
	tm.want = workers + tm.old.m.cfg().Surge
	t.Cleanup(func() {
		select {
		case tm.up.outcome <- nil: // ends an Upgrade still waiting
		default:
		}
		for _, s := range []*sim{tm.old, tm.new} {
			if s != nil && s.m.upgradeLink() != nil {
				s.m.upgradeLink().close()
			}
		}
	})
	return tm
}

// start is `supervisor upgrade` on the old master and the new master's
// boot up to its first step.
func (tm *twoMasters) start() {
	tm.t.Helper()
	if r := tm.old.call(Request{Command: "upgrade"}); !(<-r).OK {
		tm.t.Fatal("upgrade refused")
	}
	tm.new = buildSim(tm.t, func(c *Config) { c.Workers, c.MaxSurge = tm.old.m.cfg().Workers, tm.old.m.cfg().MaxSurge })
	tm.new.next = 10_000 // pids apart from the old master's
	l, err := newLink(tm.up.link)
	if err != nil {
		tm.t.Fatal(err)
	}
	if err := tm.new.m.takeOver(l); err != nil {
		tm.t.Fatal(err)
	}
	tm.new.m.genSockets[tm.new.m.stable] = tm.new.m.genSockets[1]
	tm.new.advance()
}

// deliver hands one message (or the end of the link) to whichever master
// has one; false when neither got one within a second.
func (tm *twoMasters) deliver() bool {
	select {
	case msg, ok := <-tm.old.m.linkIn():
		tm.old.m.onLink(msg, ok)
		tm.old.advance()
	case msg, ok := <-tm.new.m.linkIn():
		tm.new.m.onLink(msg, ok)
		tm.new.advance()
	case <-time.After(time.Second):
		return false
	}
	return true
}

// check asserts the bounds across both masters: at most want processes,
// at least `workers` ready.
func (tm *twoMasters) check(stage string) {
	tm.t.Helper()
	procs := len(tm.old.procs) + len(tm.new.procs)
	ready := len(tm.old.pids(wReady, 0)) + len(tm.new.pids(wReady, 0))
	if procs > tm.want || ready < tm.old.m.configs[tm.old.m.stable].Workers {
		tm.t.Fatalf("%s: %d processes (at most %d), %d ready\nold: %s\nnew: %s", stage, procs, tm.want, ready, tm.old.describe(), tm.new.describe())
	}
	// Once the new master answers /health/ready, it counts the old
	// master's workers too: ready all through the handover.
	if tm.new != nil && tm.new.m.phase == running && !tm.new.m.metrics.snap.Load().ready {
		tm.t.Fatalf("%s: the new master reports not ready: %+v", stage, tm.new.m.metrics.snap.Load().status)
	}
}

// Before the commit the new master starts one canary and the old master
// changes nothing; from the commit every new worker ready retires one old
// worker, within max_surge across both; the old master ends with no worker
// and tells systemd the new pid; the new master ends the upgrade when the
// link closes, and continues the generation count.
func TestSimUpgradeHandsOverWithinSurge(t *testing.T) {
	for _, tc := range []struct {
		workers int
		surge   string
	}{{2, "1"}, {4, "1"}, {4, "2"}} {
		tm := newTwoMasters(t, tc.workers, tc.surge)
		oldGen := tm.old.m.lastGen
		tm.start()
		for tm.deliver() { // the new master's first report
		}
		tm.check("before the commit")
		if n := len(tm.new.procs); n != 1 {
			t.Fatalf("%d workers of the new master before its commit, want 1 canary", n)
		}
		if pid := tm.old.signalledPid(); pid != 0 {
			t.Fatalf("the old master signalled %d before the commit", pid)
		}
		if got := tm.new.m.stable; got != oldGen+1 {
			t.Errorf("the new master's generation %d, want %d", got, oldGen+1)
		}
		for range 10_000 {
			tm.check("handing over")
			switch {
			case len(tm.new.pids(wStarting, 0)) > 0:
				tm.new.ready(tm.new.pids(wStarting, 0)[0])
			case tm.old.signalledPid() != 0:
				tm.old.exit(tm.old.signalledPid(), 0)
			case tm.old.m.done() && tm.old.m.pair != nil:
				tm.old.m.oldExit()
				tm.old.m.pair.close() // the old master exits
				tm.old.m.pair = nil
			case tm.deliver():
			default:
				goto settled
			}
		}
	settled:
		if tm.new.m.upgrade != nil || len(tm.new.pids(wReady, 0)) != tc.workers || len(tm.old.procs) != 0 {
			t.Fatalf("%+v: not handed over: old %s; new %s", tc, tm.old.describe(), tm.new.describe())
		}
		if n := tm.new.logs.FilterMessageSnippet("upgraded from pid").Len(); n != 1 {
			t.Errorf("%d \"upgraded from pid\" lines, want 1", n)
		}
	}
}

// A new master that fails before its commit leaves the old one as it was:
// no worker signalled, none started, the next upgrade possible.
func TestSimUpgradeFailureLeavesTheOldMasterAlone(t *testing.T) {
	tm := newTwoMasters(t, 2, "1")
	tm.start()
	tm.new.m.fail(errors.New("canary exited"))
	tm.up.outcome <- errors.New("child pid=1 exited: exit status 1")
	for tm.old.m.upgrade != nil && tm.deliver() {
	}
	if tm.old.m.upgrade != nil {
		t.Fatal("the old master still upgrading")
	}
	if !strings.Contains(tm.old.m.lastUpgrade, "canary exited") {
		t.Errorf("last upgrade %q, want the new master's own reason", tm.old.m.lastUpgrade)
	}
	if pid := tm.old.signalledPid(); pid != 0 || tm.old.spawned != 2 {
		t.Errorf("the old master signalled %d, spawned %d; want neither", pid, tm.old.spawned)
	}
	if r := tm.old.call(Request{Command: "reload"}); !(<-r).OK {
		t.Error("reload refused after a failed upgrade")
	}
}

// While an upgrade is under way the old master refuses reloads, scaling and
// another upgrade, saying why.
func TestSimUpgradeRefusesOtherChanges(t *testing.T) {
	tm := newTwoMasters(t, 2, "1")
	tm.start()
	for _, req := range []Request{{Command: "reload"}, {Command: "scale", Scale: "3"}, {Command: "upgrade"}} {
		r := <-tm.old.call(req)
		if r.OK || !strings.Contains(r.Error, "upgrade") {
			t.Errorf("%s during an upgrade: %+v, want refused naming the upgrade", req.Command, r)
		}
	}
}
