package supervisor

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/signals"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// sim drives the master's handlers through event sequences, the way its
// loop does (one event, then advance), with fake processes and a fake
// clock: no process, no socket, no timer, a few microseconds a step.
type sim struct {
	t     testing.TB
	m     *master
	now   time.Time
	next  int              // the next fake pid
	procs map[int]*simProc // processes not yet reaped, by pid
	logs  *observer.ObservedLogs
	load  func() (*Resolved, error) // what the next reload loads; nil: the config in force

	spawned int         // processes started so far
	nices   map[int]int // pid -> the Spec.Nice it was started with
	reniced map[int]int // pid -> the nice value renice set its group to
	renices map[int]int // pid -> how many times renice was called
	failing bool        // spawn fails
	trims   int         // memory trims the master asked for

	// check, when set, runs after every advance with the number of ready
	// workers and of processes spawned just before it.
	check func(readyBefore, spawnedBefore int)
}

// simProc is a fake worker process: the signals the master sent its group.
type simProc struct {
	pid     int
	signals []syscall.Signal
}

func (p *simProc) signalled() bool { return len(p.signals) > 0 }

func (p *simProc) killed() bool { return slices.Contains(p.signals, syscall.SIGKILL) }

// newSim makes a master of cfg (Defaults with a command and a bind, --ready
// notify, edited by edit) and takes its first step: the boot's workers are
// started, none ready yet.
func newSim(t testing.TB, edit func(*Config)) *sim {
	t.Helper()
	s := buildSim(t, edit)
	s.m.step()
	return s
}

// buildSim is newSim before the first step.
func buildSim(t testing.TB, edit func(*Config)) *sim {
	t.Helper()
	return buildSimWith(t, edit, nil)
}

// buildSimWith is buildSim with setup run on the master before it opens
// its binds (to give it other sockets, a steering group).
func buildSimWith(t testing.TB, edit func(*Config), setup func(*sim)) *sim {
	t.Helper()
	cfg := Defaults()
	cfg.Command, cfg.Bind, cfg.Ready = []string{"/bin/true"}, []string{"127.0.0.1:0"}, ReadyNotify
	if edit != nil {
		edit(&cfg)
	}
	res, err := cfg.Validate()
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	s := &sim{t: t, now: time.Unix(1_000_000, 0), next: 100, procs: map[int]*simProc{}, logs: logs}
	s.nices, s.reniced, s.renices = map[int]int{}, map[int]int{}, map[int]int{}
	e := env{spawn: s.spawn, signal: s.signal, now: func() time.Time { return s.now }, rand: func(n int64) int64 { return n / 2 },
		renice: func(p *workers.Process, nice int) error { s.reniced[p.Pid] = nice; s.renices[p.Pid]++; return nil },
		trim:   func() { s.trims++ }}
	opts := Options{
		Log:  zap.New(core),
		Open: func([]listener.Addr) ([]*listener.Socket, error) { return nil, nil },
		Load: func() (*Resolved, error) {
			if s.load == nil {
				return s.m.cfg(), nil
			}
			return s.load()
		},
	}
	s.m = newMaster(res, opts, e)
	if setup != nil {
		setup(s)
	}
	if s.m.genSockets[1], err = s.m.socketsFor(1, res.Addrs); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *sim) spawn(spec workers.Spec) (*workers.Process, error) {
	if s.failing {
		return nil, fmt.Errorf("start %s: fork/exec: resource temporarily unavailable", spec.Path)
	}
	p := &simProc{pid: s.next}
	s.nices[p.pid] = spec.Nice
	s.next++
	s.spawned++
	s.procs[p.pid] = p
	return &workers.Process{Pid: p.pid, Started: s.now}, nil
}

func (s *sim) signal(wp *workers.Process, sig syscall.Signal) error {
	if p := s.procs[wp.Pid]; p != nil {
		p.signals = append(p.signals, sig)
	}
	return nil // a group already gone is not an error
}

// The events. Each is handled, then the master advances, as in its loop.

// advance is the second half of a loop turn: what is due, then the plan.
func (s *sim) advance() {
	ready, spawned := len(s.pids(wReady, 0)), s.spawned
	s.m.advance()
	if s.check != nil {
		s.check(ready, spawned)
	}
}

func (s *sim) notify(pid int, msg workers.Message) {
	s.m.onNotify(workers.Notification{PID: pid, PGID: pid, Msg: msg})
	s.advance()
}

func (s *sim) ready(pid int) { s.notify(pid, workers.Message{Ready: true}) }

// exit reaps pid with status ws.
func (s *sim) exit(pid int, ws syscall.WaitStatus) {
	if s.procs[pid] == nil {
		s.t.Fatalf("exit of %d: no such process", pid)
	}
	delete(s.procs, pid)
	s.m.onExit(workers.Exit{Pid: pid, Status: ws, At: s.now})
	s.advance()
}

func (s *sim) intent(i signals.Intent) {
	s.m.onIntent(i, "test")
	s.advance()
}

// call sends a control request; the reply channel holds the answers.
func (s *sim) call(req Request) chan Response {
	reply := make(chan Response, 2) // room for a wrong second answer
	s.m.onCall(Call{Request: req, Reply: reply})
	s.advance()
	return reply
}

func (s *sim) tick(d time.Duration) {
	s.now = s.now.Add(d)
	s.advance()
}

// Views of the master's state.

// pids lists the master's workers in state st (any state: -1) of
// generation gen (any: 0), lowest pid first.
func (s *sim) pids(st wstate, gen int) []int {
	var out []int
	for pid, w := range s.m.workers {
		if (st < 0 || w.state == st) && (gen == 0 || w.gen == gen) {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

func (s *sim) readyAll() {
	for starting := s.pids(wStarting, 0); len(starting) > 0; starting = s.pids(wStarting, 0) {
		s.ready(starting[0])
	}
}

// signalledPid is the lowest pid the master has signalled, 0 when none.
func (s *sim) signalledPid() int {
	for _, pid := range s.pids(-1, 0) {
		if s.procs[pid].signalled() {
			return pid
		}
	}
	return 0
}

// drive lets the pool move one event at a time, calling check before
// each: a starting worker becomes ready, else a signalled one exits
// (status 0, as a worker that drains at once), until neither is left.
func (s *sim) drive(check func()) {
	s.t.Helper()
	for range 1000 {
		check()
		if starting := s.pids(wStarting, 0); len(starting) > 0 {
			s.ready(starting[0])
		} else if pid := s.signalledPid(); pid != 0 {
			s.exit(pid, 0)
		} else {
			return
		}
	}
	s.t.Fatalf("the pool does not settle: %s", s.describe())
}

func (s *sim) describe() string {
	var out []string
	for _, pid := range s.pids(-1, 0) {
		w := s.m.workers[pid]
		out = append(out, fmt.Sprintf("%d:slot%d/gen%d/%s", pid, w.slot, w.gen, w.state))
	}
	return fmt.Sprintf("phase %s stable %d target %d workers %v", s.m.phase, s.m.stable, s.m.target, out)
}

func answer(t testing.TB, reply chan Response) Response {
	t.Helper()
	select {
	case r := <-reply:
		if len(reply) > 0 {
			t.Fatalf("answered twice: %+v, then %+v", r, <-reply)
		}
		return r
	default:
		t.Fatal("no answer yet")
	}
	return Response{}
}

func noAnswer(t testing.TB, reply chan Response) {
	t.Helper()
	if len(reply) > 0 {
		t.Fatalf("answered too early: %+v", <-reply)
	}
}

// boot makes a simulated master with n workers, all ready.
func boot(t *testing.T, n int, edit func(*Config)) *sim {
	s := newSim(t, func(c *Config) {
		c.Workers = n
		if edit != nil {
			edit(c)
		}
	})
	s.readyAll()
	if s.m.phase != running || len(s.pids(wReady, 1)) != n {
		t.Fatalf("after boot: %s", s.describe())
	}
	return s
}

// A canary that exits before it is ready aborts the rollout: the new
// generation is gone, the old workers were never signalled, the rollback
// settles at once and reload --wait says why.
func TestSimCanaryExitRollsBack(t *testing.T) {
	s := boot(t, 2, nil)
	old := s.pids(wReady, 1)
	reply := s.call(Request{Command: "reload", Wait: true})
	canary := s.pids(wStarting, 2)
	if len(canary) != 1 || len(s.m.workers) != 3 {
		t.Fatalf("after HUP: %s; want one canary of generation 2", s.describe())
	}
	noAnswer(t, reply)
	s.exit(canary[0], syscall.WaitStatus(3<<8))
	r := answer(t, reply)
	want := fmt.Sprintf("reload rolled back: generation 2 failed: worker 0 (pid %d) exited with status 3 before it was ready: /bin/true", canary[0])
	if r.OK || r.Error != want {
		t.Fatalf("reload --wait answered %+v, want %q", r, want)
	}
	if s.m.rollout != nil || s.m.target != 1 || s.m.stable != 1 {
		t.Fatalf("rollback not settled: %s, rollout %+v", s.describe(), s.m.rollout)
	}
	if got := s.pids(-1, 0); !slices.Equal(got, old) {
		t.Fatalf("workers %v after the rollback, want the old %v", got, old)
	}
	for _, pid := range old {
		if s.procs[pid].signalled() {
			t.Errorf("old worker %d got %v", pid, s.procs[pid].signals)
		}
	}
	if s.logs.FilterMessage("rolled back").Len() != 1 {
		t.Errorf("want one 'rolled back' line")
	}
}

// A canary that is not ready within ready_timeout is stopped and the
// reload rolled back, likewise.
func TestSimCanaryNotReadyRollsBack(t *testing.T) {
	s := boot(t, 1, nil)
	s.load = func() (*Resolved, error) {
		c := s.m.cfg().Config
		c.ReadyTimeout = 500 * time.Millisecond
		return c.Validate()
	}
	reply := s.call(Request{Command: "reload", Wait: true})
	canary := s.pids(wStarting, 2)
	s.tick(499 * time.Millisecond)
	noAnswer(t, reply)
	s.tick(time.Millisecond)
	if r := answer(t, reply); r.OK || !containsAll(r.Error, "rolled back", "was not ready within 500ms") {
		t.Fatalf("reload --wait answered %+v", r)
	}
	if p := s.procs[canary[0]]; len(p.signals) != 1 || p.signals[0] != syscall.SIGTERM {
		t.Fatalf("canary got %v, want SIGTERM", p.signals)
	}
	s.tick(time.Second) // fastGrace
	if !s.procs[canary[0]].killed() {
		t.Fatalf("canary not killed 1s after SIGTERM: %v", s.procs[canary[0]].signals)
	}
}

// A HUP during a rollout merges into it: the newest config becomes the
// target, both waiters get the one outcome, and the pool never runs more
// than workers+max_surge processes.
func TestSimHUPDuringRolloutMerges(t *testing.T) {
	s := boot(t, 4, nil) // max_surge 25%: 1
	first := s.call(Request{Command: "reload", Wait: true})
	s.ready(s.pids(wStarting, 2)[0]) // the canary: one old worker stops, one more starts
	if got := len(s.pids(wReady, 2)); got != 1 {
		t.Fatalf("after the canary: %s", s.describe())
	}
	second := s.call(Request{Command: "reload", Wait: true})
	if s.m.target != 3 || s.m.lastGen != 3 {
		t.Fatalf("second HUP: target %d, want 3", s.m.target)
	}
	if n := len(s.pids(wStarting, 3)); n > 1 {
		t.Fatalf("second HUP: %d starting workers of generation 3, want at most one canary", n)
	}
	s.drive(func() {
		if len(s.m.workers) > 5 {
			t.Fatalf("%d processes, over 4+1: %s", len(s.m.workers), s.describe())
		}
	})
	if got := len(s.pids(wReady, 3)); got != 4 || len(s.m.workers) != 4 {
		t.Fatalf("after the merged rollout: %s", s.describe())
	}
	for _, reply := range []chan Response{first, second} {
		if r := answer(t, reply); !r.OK || !containsAll(r.Message, "generation 3 serving") {
			t.Errorf("waiter answered %+v, want generation 3 serving", r)
		}
	}
	if n := s.logs.FilterMessage("reload succeeded").Len(); n != 1 {
		t.Errorf("%d 'reload succeeded' lines, want one rollout", n)
	}
}

// Consecutive crashes of a slot are replaced after 0, 100, 200, 400 ms...;
// a worker that stayed up 10 s resets the count.
func TestSimCrashBackoffSchedule(t *testing.T) {
	s := boot(t, 1, nil)
	crash := func() {
		t.Helper()
		s.exit(s.pids(wReady, 1)[0], syscall.WaitStatus(1<<8))
	}
	restartAfter := func(want time.Duration) {
		t.Helper()
		if want > 0 {
			s.tick(want - time.Millisecond)
			if n := len(s.pids(-1, 0)); n != 0 {
				t.Fatalf("restarted before the %s backoff ended", want)
			}
			s.tick(time.Millisecond)
		}
		if n := len(s.pids(wStarting, 1)); n != 1 {
			t.Fatalf("not restarted after %s: %s", want, s.describe())
		}
		s.readyAll()
	}
	for _, d := range []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond} {
		crash()
		restartAfter(d)
	}
	s.tick(crashResetAfter)
	crash()
	restartAfter(0)
}

// Recycles and a reload share max_surge: two workers over max_requests
// are replaced one at a time, and a HUP meanwhile does not add a second
// extra process.
func TestSimRecyclesAndReloadShareSurge(t *testing.T) {
	s := boot(t, 4, func(c *Config) { c.MaxRequests = 10 }) // surge 1
	ready := s.pids(wReady, 1)
	s.notify(ready[0], workers.Message{Requests: 10, HasRequests: true})
	s.notify(ready[1], workers.Message{Requests: 12, HasRequests: true})
	if n := len(s.m.workers); n != 5 {
		t.Fatalf("two recycles with surge 1: %d processes, want 5: %s", n, s.describe())
	}
	s.intent(signals.Reload)
	s.drive(func() {
		if n := len(s.m.workers); n > 5 {
			t.Fatalf("%d processes, over 4+1: %s", n, s.describe())
		}
		if r := len(s.pids(wReady, 0)); r < 4 {
			t.Fatalf("%d ready, under 4: %s", r, s.describe())
		}
	})
	if len(s.pids(wReady, 2)) != 4 || s.m.rollout != nil {
		t.Fatalf("after the reload: %s", s.describe())
	}
}

// scale is refused while a rollout is under way, by the control socket
// and by TTIN alike, and the pool is left as it is.
func TestSimScaleRefusedMidRollout(t *testing.T) {
	s := boot(t, 2, nil)
	s.intent(signals.Reload)
	before := s.describe()
	r := answer(t, s.call(Request{Command: "scale", Scale: "+1"}))
	if r.OK || r.Error != "scale refused: a reload is under way (generation 2)" {
		t.Fatalf("scale answered %+v", r)
	}
	s.intent(signals.ScaleUp)
	if s.logs.FilterMessage("scale ignored").Len() != 1 {
		t.Error("TTIN mid-rollout: want 'scale ignored'")
	}
	if after := s.describe(); after != before || s.m.cfg().Workers != 2 {
		t.Fatalf("pool changed: %s, then %s", before, after)
	}
}

// The commands table answers an unknown command itself with the list of
// known ones, the same words the server uses.
func TestSimUnknownCommand(t *testing.T) {
	s := boot(t, 1, nil)
	r := answer(t, s.call(Request{Command: "explode"}))
	if want := `unknown command "explode" (want status, reload, scale, stop or upgrade)`; r.Error != want {
		t.Fatalf("got %+v, want %q", r, want)
	}
	if err := checkCommand(Request{Command: "scale", Scale: "x"}); err == nil {
		t.Error(`checkCommand(scale "x") passed`)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// A listen scan's result counts only for the workers it was taken of: a
// pid reaped while the scan ran, and reused by a new worker, is not made
// ready by it; a worker whose files could not be read is no longer watched.
func TestSimListenScanAppliesToTheWorkerItWasTakenOf(t *testing.T) {
	s := newSim(t, func(c *Config) { c.Workers = 2 })
	pids := s.pids(wStarting, 1)
	a, b := s.m.workers[pids[0]], s.m.workers[pids[1]]
	a.listenInodes, b.listenInodes = []uint64{7}, []uint64{7}
	stale := &worker{} // what the scan saw at b's pid: another process
	s.m.scanning = true
	s.m.onListenScan(listenScan{
		scanned:   map[int]*worker{pids[0]: a, pids[1]: stale},
		listening: []int{pids[0], pids[1]},
	})
	// (No advance: its tick would scan these fake pids in the real /proc.)
	if a.state != wReady || b.state != wStarting {
		t.Fatalf("after the scan: %s; want %d ready (seen listening), %d starting (the scan saw another process)", s.describe(), pids[0], pids[1])
	}
	if s.m.scanning {
		t.Error("the scan is still under way after its result")
	}
	s.m.onListenScan(listenScan{
		scanned: map[int]*worker{pids[1]: b},
		errs:    map[int]error{pids[1]: fmt.Errorf("/proc/%d/fd: permission denied", pids[1])},
	})
	if b.listenInodes != nil || b.state != wStarting {
		t.Errorf("a worker whose files could not be read: watched %v, state %s; want unwatched, still starting", b.listenInodes, b.state)
	}
	if n := s.logs.FilterMessageSnippet("cannot watch the worker for listen readiness").Len(); n != 1 {
		t.Errorf("%d warnings about the unreadable worker, want 1", n)
	}
}
