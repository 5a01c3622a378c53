package supervisor

import (
	"slices"
	"syscall"
	"testing"

	"github.com/supervisor-dev/supervisor/signals"
)

// USR1 goes to every worker that has been ready; one still starting gets
// it once it is ready, since before that USR1 may end it (the exec shim,
// an app without its handlers yet). Found by TestChaosSignalStorm: a USR1
// killed canaries before they were ready, and each such reload rolled back.
func TestReopenLogsWaitsForReadiness(t *testing.T) {
	s := newSim(t, func(c *Config) { c.Workers = 2 })
	s.readyAll()
	old := s.pids(wReady, 1)
	s.intent(signals.Reload)
	canary := s.pids(wStarting, 2)
	if len(old) != 2 || len(canary) != 1 {
		t.Fatalf("ready %v, canary %v; want 2 ready and one canary starting", old, canary)
	}
	usr1 := func(pid int) int {
		return len(slices.DeleteFunc(slices.Clone(s.procs[pid].signals), func(sig syscall.Signal) bool { return sig != syscall.SIGUSR1 }))
	}
	s.intent(signals.ReopenLogs)
	for _, pid := range old {
		if n := usr1(pid); n != 1 {
			t.Errorf("ready worker %d got %d USR1, want 1", pid, n)
		}
	}
	if n := usr1(canary[0]); n != 0 {
		t.Fatalf("starting canary %d got %d USR1, want none before it is ready", canary[0], n)
	}
	s.ready(canary[0])
	if n := usr1(canary[0]); n != 1 {
		t.Errorf("canary %d got %d USR1 once ready, want 1", canary[0], n)
	}
	s.ready(canary[0]) // a second READY=1 sends nothing more
	if n := usr1(canary[0]); n != 1 {
		t.Errorf("canary %d got %d USR1 after a second READY=1, want 1", canary[0], n)
	}
}
