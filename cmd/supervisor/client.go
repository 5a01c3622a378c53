package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// The client commands speak the control protocol (supervisor.CallControl)
// to a running master; the master does the work.

// clientTimeout bounds every exchange but reload --wait.
const clientTimeout = 10 * time.Second

// controlTarget is the --control and --pid flags every client command has.
type controlTarget struct {
	control, pidFile string
}

func (t *controlTarget) addFlags(f *pflag.FlagSet) {
	f.StringVar(&t.control, "control", "", "the master's control socket (default: $XDG_RUNTIME_DIR/supervisor/control.sock, else beside --pid, else /run/supervisor or /tmp/supervisor-UID)")
	f.StringVar(&t.pidFile, "pid", "", "the master's --pid file, to find its control socket beside it")
}

func (t *controlTarget) path() string {
	if t.control != "" {
		return t.control
	}
	return supervisor.DefaultControlPath(t.pidFile)
}

// call sends req and turns a refusal (OK false) into an error.
func (t *controlTarget) call(req supervisor.Request, timeout time.Duration) (supervisor.Response, error) {
	resp, err := supervisor.CallControl(t.path(), req, timeout)
	if err != nil {
		return resp, err
	}
	if !resp.OK {
		if resp.Error == "" {
			resp.Error = req.Command + " failed (the master gave no reason)"
		}
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}

// say prints the master's message, or def when it sent none.
func say(w io.Writer, resp supervisor.Response, def string) {
	if resp.Message != "" {
		def = resp.Message
	}
	fmt.Fprintln(w, def)
}

func newReloadCommand() *cobra.Command {
	return newWaitingCommand(waiting{
		name:  "reload",
		short: "Roll out a new generation of workers (like kill -HUP)",
		long: `Ask the master to re-read its config and roll out a new generation of
workers, like kill -HUP. With --wait, wait for the outcome: exit 0 once the
new generation serves, non-zero with the reason when the rollout was rolled
back or did not end within --timeout (0 = wait as long as it takes).`,
		waitHelp: "wait for the rollout to succeed or roll back; the exit code says which",
		asked:    "reload requested",
		done:     "reloaded",
		stillOn:  "the rollout may still be running",
	})
}

func newUpgradeCommand() *cobra.Command {
	return newWaitingCommand(waiting{
		name:  "upgrade",
		short: "Replace the master itself with the binary now on disk (like kill -USR2)",
		long: `Ask the master to start the binary now at the path it was started from,
with the same arguments, as its successor, like kill -USR2. The new master
inherits every socket, starts one canary and takes over once it is ready;
then each of its workers that becomes ready retires one of the old master's,
within max_surge, and the old master exits when its last worker is gone. If
the new master fails before it takes over, it is discarded and the old one
carries on. With --wait, exit 0 once the old master handed over, non-zero
with the reason when the upgrade failed or did not end within --timeout.`,
		waitHelp: "wait until the old master handed over, or the upgrade failed; the exit code says which",
		asked:    "upgrade requested",
		done:     "upgraded",
		stillOn:  "the upgrade may still be under way",
	})
}

// waiting describes a command that may wait for its outcome (reload and
// upgrade, with --wait [--timeout D]).
type waiting struct {
	name, short, long, waitHelp string
	asked, done                 string // what to print when the master says nothing
	stillOn                     string // after a timeout: what may still be happening
}

func newWaitingCommand(d waiting) *cobra.Command {
	var t controlTarget
	var wait bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   d.name + " [--wait [--timeout D]]",
		Short: d.short,
		Long:  d.long,
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if c.Flags().Changed("timeout") && !wait {
				return fmt.Errorf("%s: --timeout only applies with --wait", d.name)
			}
			if timeout < 0 {
				return fmt.Errorf("%s: --timeout %s: must not be negative", d.name, timeout)
			}
			req := supervisor.Request{Command: d.name, Wait: wait}
			limit := clientTimeout
			if wait {
				req.Timeout, limit = timeout.String(), timeout
			}
			resp, err := t.call(req, limit)
			if wait && errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("%s --wait: no outcome within %s (%s; see supervisor status)", d.name, timeout, d.stillOn)
			}
			if err != nil {
				return err
			}
			def := d.asked
			if wait {
				def = d.done
			}
			say(c.OutOrStdout(), resp, def)
			return nil
		},
	}
	t.addFlags(c.Flags())
	c.Flags().BoolVar(&wait, "wait", false, d.waitHelp)
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "with --wait: give up waiting after this long (0 = no limit)")
	return c
}

func newStatusCommand() *cobra.Command {
	var t controlTarget
	var asJSON bool
	c := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show the master and every worker",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			resp, err := t.call(supervisor.Request{Command: "status"}, clientTimeout)
			if err != nil {
				return err
			}
			if resp.Status == nil {
				return errors.New("status: the master sent no status")
			}
			if asJSON {
				b, err := json.MarshalIndent(resp.Status, "", "  ")
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(c.OutOrStdout(), "%s\n", b)
				return err
			}
			return printStatus(c.OutOrStdout(), resp.Status, time.Now())
		},
	}
	t.addFlags(c.Flags())
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return c
}

// printStatus writes a header line for the master and a table of workers.
func printStatus(w io.Writer, st *supervisor.Status, now time.Time) error {
	gen := fmt.Sprintf("generation %d", st.Generation)
	if st.Target != st.Generation {
		gen += fmt.Sprintf(" (rolling out %d)", st.Target)
	}
	last := st.LastReload
	if last == "" {
		last = "none"
	}
	fmt.Fprintf(w, "master %d: %s, %s, ready %d/%d, up %s, last reload: %s\n",
		st.Pid, st.Phase, gen, st.Ready, st.Workers, age(st.Started, now), last)
	switch {
	case st.Upgrade != "":
		fmt.Fprintf(w, "upgrade: %s\n", st.Upgrade)
	case st.LastUpgrade != "":
		fmt.Fprintf(w, "last upgrade: %s\n", st.LastUpgrade)
	}
	if st.Target != st.Generation {
		for _, line := range generationLines(st) {
			fmt.Fprintln(w, line)
		}
	}
	for _, g := range st.Steer {
		fmt.Fprintln(w, steerLine(g))
	}
	if err := printPool(w, st.Pool, now); err != nil {
		return err
	}
	if p := st.Peer; p != nil {
		fmt.Fprintf(w, "other master %d: %s, generation %d, ready %d/%d\n", p.Pid, p.Phase, p.Generation, p.Ready, p.Workers)
		return printPool(w, p.Pool, now)
	}
	return nil
}

// printPool writes a table of workers.
func printPool(w io.Writer, pool []supervisor.WorkerInfo, now time.Time) error {
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tSLOT\tGEN\tSTATE\tAGE\tREQUESTS\tRSS\tSTATUS")
	for _, wi := range pool {
		state := wi.State
		if wi.Drain != "" {
			state += "/" + wi.Drain // a steered stop's drain
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%d\t%s\t%s\n",
			wi.Pid, wi.Slot, wi.Generation, state, age(wi.Started, now), wi.Requests, size(wi.RSS), wi.Status)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for line := range strings.Lines(table.String()) {
		if _, err := fmt.Fprintln(w, strings.TrimRight(line, " \n")); err != nil {
			return err
		}
	}
	return nil
}

// generationLines are one line per generation in the pool, during a
// rollout: "  generation 3 (target): 2 workers: 1 ready, 1 starting".
func generationLines(st *supervisor.Status) []string {
	type count struct{ total, starting, ready, stopping int }
	by := map[int]*count{}
	var gens []int
	for _, wi := range st.Pool {
		c := by[wi.Generation]
		if c == nil {
			c = &count{}
			by[wi.Generation] = c
			gens = append(gens, wi.Generation)
		}
		c.total++
		switch wi.State {
		case "starting":
			c.starting++
		case "ready":
			c.ready++
		case "stopping":
			c.stopping++
		}
	}
	slices.Sort(gens)
	var lines []string
	for _, g := range gens {
		c := by[g]
		role := ""
		switch g {
		case st.Generation:
			role = " (in force)"
		case st.Target:
			role = " (target)"
		}
		lines = append(lines, fmt.Sprintf("  generation %d%s: %d workers: %d ready, %d starting, %d stopping",
			g, role, c.total, c.ready, c.starting, c.stopping))
	}
	return lines
}

// steerLine is one steered bind's sockets in index order: "steer
// 127.0.0.1:8080: socket:[123] generation 3 weight 2, socket:[124] idle".
func steerLine(g supervisor.SteerGroup) string {
	parts := make([]string, len(g.Sockets))
	for i, s := range g.Sockets {
		p := fmt.Sprintf("socket:[%d] ", s.Inode)
		if s.Generation == 0 {
			p += "idle"
		} else {
			p += fmt.Sprintf("generation %d weight %d", s.Generation, s.Weight)
		}
		if s.Paused {
			p += " (paused)"
		}
		if s.Queued > 0 {
			p += fmt.Sprintf(" queued %d", s.Queued)
		}
		parts[i] = p
	}
	return "steer " + g.Bind + ": " + strings.Join(parts, ", ")
}

// size is a byte count for people (12.3MiB), "-" when unknown (0).
func size(n int64) string {
	const unit = 1024
	if n <= 0 {
		return "-"
	}
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 3 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f%ciB", v, "KMGT"[i])
}

// age is now - since to the second, "-" when since is unknown.
func age(since, now time.Time) string {
	if since.IsZero() {
		return "-"
	}
	return max(now.Sub(since), 0).Round(time.Second).String()
}

// negativeCount is an argument pflag would take for a shorthand flag.
var negativeCount = regexp.MustCompile(`^-[0-9]`)

func newScaleCommand() *cobra.Command {
	var t controlTarget
	c := &cobra.Command{
		Use:   "scale N|+N|-N",
		Short: "Set the number of workers, or add or remove some (like TTIN / TTOU)",
		Long: `Set the pool to N workers, or add (+N) or remove (-N) workers, like
kill -TTIN / -TTOU. Removed workers are the newest, stopped gracefully.`,
		// Flags are parsed here, so that -1 is a count, not a shorthand flag.
		DisableFlagParsing: true,
		RunE: func(c *cobra.Command, args []string) error {
			var counts, rest []string
			for i, a := range args {
				if a == "--" {
					counts = append(counts, args[i+1:]...)
					break
				}
				if negativeCount.MatchString(a) {
					counts = append(counts, a)
				} else {
					rest = append(rest, a)
				}
			}
			if err := c.Flags().Parse(rest); err != nil {
				return c.FlagErrorFunc()(c, err)
			}
			if help, _ := c.Flags().GetBool("help"); help {
				return c.Help()
			}
			counts = append(c.Flags().Args(), counts...)
			if len(counts) != 1 {
				return fmt.Errorf("scale: want one argument, N, +N or -N, got %d", len(counts))
			}
			if _, _, err := supervisor.ParseScale(counts[0]); err != nil {
				return fmt.Errorf("scale: %w", err)
			}
			resp, err := t.call(supervisor.Request{Command: "scale", Scale: counts[0]}, clientTimeout)
			if err != nil {
				return err
			}
			say(c.OutOrStdout(), resp, "scale "+strconv.Quote(counts[0])+" requested")
			return nil
		},
	}
	t.addFlags(c.Flags())
	return c
}

func newStopCommand() *cobra.Command {
	var t controlTarget
	var fast bool
	c := &cobra.Command{
		Use:   "stop [--fast]",
		Short: "Stop the master and its workers gracefully (like kill -TERM; --fast: like -QUIT)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			resp, err := t.call(supervisor.Request{Command: "stop", Fast: fast}, clientTimeout)
			if err != nil {
				return err
			}
			say(c.OutOrStdout(), resp, "stop requested")
			return nil
		},
	}
	t.addFlags(c.Flags())
	c.Flags().BoolVar(&fast, "fast", false, "stop workers at once (SIGTERM with a short grace) instead of draining")
	return c
}
