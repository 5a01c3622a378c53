package supervisor

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/signals"
	"github.com/supervisor-dev/supervisor/workers"
)

// randomRun feeds a simulated master events chosen by pick (pick(n) is in
// [0, n)): readiness, crashes, exits, STOPPING=1, X_REQUESTS, HUP, reloads
// with --wait, bad configs, TTIN/TTOU, scale, status, failed forks and
// ticks. After every step it checks the invariants:
//   - the master never starts a process beyond workers+max_surge;
//   - a step of the master's own (what is due, then the plan) never takes
//     the ready count below workers while running: only the events
//     themselves (a crash, a worker leaving) may;
//   - in a forward rollout, at most one target worker starts until one
//     has been ready (the canary), however many HUPs came: a burst is one
//     rollout to the newest generation, never a fork per HUP;
//   - a reload that was accepted makes its generation the target.
//
// Then it stops the master and checks that every process got SIGKILL by
// its deadline, nothing was started after the stop, every reload --wait
// was answered exactly once, and nothing is left.
func randomRun(t testing.TB, pick func(n int) int, events int) {
	t.Helper()
	edit := func(c *Config) {
		c.Workers = 1 + pick(4)
		c.MaxSurge = []string{"25%", "1", "2"}[pick(3)]
		c.ReadyTimeout = 2 * time.Second
		c.GracefulTimeout = 3 * time.Second
		c.MaxRequests = []int{0, 5}[pick(2)]
		c.MaxLifetime = []time.Duration{0, 4 * time.Second}[pick(2)]
		c.ShutdownDelay = []time.Duration{0, time.Second}[pick(2)]
	}
	// Half the runs steer (steer.go, drain.go), through a fake group whose
	// queues are empty and whose workers read everything at once.
	var ss *steerSim
	var s *sim
	if pick(2) == 1 {
		ss = newSteerSim(t, edit)
		s = ss.sim
	} else {
		s = newSim(t, edit)
	}
	step := 0
	proven := map[int]bool{} // generations that had a ready worker
	s.check = func(readyBefore, spawnedBefore int) {
		t.Helper()
		cfg := s.m.configs[s.m.target]
		if n := len(s.m.workers); s.spawned > spawnedBefore && n > cfg.Workers+cfg.Surge {
			t.Fatalf("step %d: started a process, now %d, over %d+%d: %s", step, n, cfg.Workers, cfg.Surge, s.describe())
		}
		if ready := len(s.pids(wReady, 0)); s.m.phase == running && ready < min(readyBefore, cfg.Workers) {
			t.Fatalf("step %d: the master's step took the ready count from %d to %d, under %d: %s", step, readyBefore, ready, cfg.Workers, s.describe())
		}
		if len(s.pids(wReady, s.m.target)) > 0 {
			proven[s.m.target] = true
		}
		if r := s.m.rollout; r != nil && !r.rollback && !proven[s.m.target] {
			if live := len(s.pids(wStarting, s.m.target)); live > 1 {
				t.Fatalf("step %d: %d target workers start before the canary is ready: %s", step, live, s.describe())
			}
		}
		if ss != nil {
			if w := ss.g.weights(); len(w) > 0 && slices.Max(w) == 0 {
				t.Fatalf("step %d: a program with no weight anywhere: %v", step, w)
			}
			if len(ss.unprotected) > 0 {
				t.Fatalf("step %d: ready workers asked to stop while their generation still got connections: %v: %s", step, ss.unprotected, s.describe())
			}
		}
	}
	var waiters []chan Response
	reload := func(do func()) {
		wasRunning := s.m.phase == running
		before := s.m.lastGen
		do()
		if wasRunning && s.m.lastGen == before+1 && s.m.target != s.m.lastGen {
			t.Fatalf("step %d: reload to generation %d, target %d", step, s.m.lastGen, s.m.target)
		}
	}
	some := func(pids []int) int { return pids[pick(len(pids))] }
	unsignalled := func() []int {
		var out []int
		for _, pid := range s.pids(-1, 0) {
			if !s.procs[pid].signalled() {
				out = append(out, pid)
			}
		}
		return out
	}
	requests := map[int]int64{}

	for step = 0; step < events && s.m.phase != stopping; step++ {
		s.pump()
		switch pick(15) {
		case 0, 1, 2:
			if ps := s.pids(wStarting, 0); len(ps) > 0 {
				s.ready(some(ps))
			}
		case 3:
			if ps := unsignalled(); len(ps) > 0 {
				s.exit(some(ps), []syscall.WaitStatus{1 << 8, syscall.WaitStatus(syscall.SIGKILL)}[pick(2)])
			}
		case 4, 5:
			if pid := s.signalledPid(); pid != 0 {
				s.exit(pid, 0)
			}
		case 6:
			if ps := s.pids(wReady, 0); len(ps) > 0 {
				s.notify(some(ps), workers.Message{Stopping: true})
			}
		case 7:
			if ps := s.pids(wReady, 0); len(ps) > 0 {
				pid := some(ps)
				requests[pid] += int64(1 + pick(4))
				s.notify(pid, workers.Message{Requests: requests[pid], HasRequests: true})
			}
		case 8:
			s.load = nil
			reload(func() { s.intent(signals.Reload) })
		case 9:
			n := 1 + pick(4)
			s.load = func() (*Resolved, error) {
				c := s.m.cfg().Config
				c.Workers = n
				return c.Validate()
			}
			reload(func() { waiters = append(waiters, s.call(Request{Command: "reload", Wait: true})) })
		case 10:
			s.load = func() (*Resolved, error) { return nil, errors.New("bad config") }
			reload(func() { s.intent(signals.Reload) })
		case 11:
			s.intent([]signals.Intent{signals.ScaleUp, signals.ScaleDown}[pick(2)])
		case 12:
			n := len(s.m.workers) // the answer comes before the step that follows
			if r := answer(t, s.call(Request{Command: "status"})); !r.OK || len(r.Status.Pool) != n {
				t.Fatalf("step %d: status %+v, want %d workers", step, r, n)
			}
		case 13:
			s.failing = true
			s.tick(time.Duration(pick(300)) * time.Millisecond)
			s.failing = false
		case 14:
			s.tick([]time.Duration{time.Duration(pick(300)) * time.Millisecond, time.Duration(1+pick(4)) * time.Second}[pick(2)])
		}
	}
	if s.m.phase == stopping {
		return // the boot failed: the master gave up, as it should
	}

	// Stop, and let the clock run past shutdown_delay: every worker is
	// stopping (signalled, or leaving on its own) with SIGKILL pending;
	// then past graceful_timeout.
	s.intent(signals.Stop)
	s.tick(s.m.cfg().ShutdownDelay)
	if s.m.phase != stopping {
		t.Fatalf("not stopping after TERM and shutdown_delay: %s", s.describe())
	}
	spawned := s.spawned
	for _, pid := range s.pids(-1, 0) {
		if w := s.m.workers[pid]; w.state != wStopping || (!s.procs[pid].killed() && w.killAt.IsZero()) {
			t.Fatalf("stopping: worker %d is %s, got %v, no SIGKILL pending: %s", pid, w.state, s.procs[pid].signals, s.describe())
		}
	}
	s.tick(3 * time.Second)
	for _, pid := range s.pids(-1, 0) {
		if !s.procs[pid].killed() {
			t.Fatalf("after the graceful timeout worker %d was not killed: %v", pid, s.procs[pid].signals)
		}
		s.exit(pid, syscall.WaitStatus(syscall.SIGKILL))
	}
	if !s.m.done() || len(s.procs) != 0 || s.spawned != spawned {
		t.Fatalf("after stop: done %v, %d processes left, %d started after the stop", s.m.done(), len(s.procs), s.spawned-spawned)
	}
	for _, w := range waiters {
		answer(t, w)
	}
}

// Many random event sequences, each seeded, keep every invariant.
func TestSimRandomEvents(t *testing.T) {
	seeds := 300
	if testing.Short() {
		seeds = 30
	}
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			randomRun(t, rand.New(rand.NewPCG(uint64(seed), 7)).IntN, 400)
		})
	}
}

// FuzzSimEvents runs randomRun with the fuzzer's bytes as the choices.
func FuzzSimEvents(f *testing.F) {
	f.Add([]byte{0, 1, 2, 8, 0, 0, 4, 9, 3, 14, 11, 0, 13, 7, 6})
	f.Add([]byte{3, 1, 0, 1, 1, 8, 8, 8, 8, 0, 0, 0, 4, 4, 4, 4, 14, 14})
	f.Fuzz(func(t *testing.T, b []byte) {
		i := 0
		pick := func(n int) int {
			if i >= len(b) {
				return 0
			}
			i++
			return int(b[i-1]) % n
		}
		randomRun(t, pick, len(b))
	})
}
