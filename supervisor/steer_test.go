package supervisor

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/workers"
	"golang.org/x/sys/unix"
)

// fakeGroup is a steered bind's group in the simulator: sockets without a
// descriptor, queues the test sets, and the programs attached.
type fakeGroup struct {
	socks    []*listener.Socket
	queue    map[*listener.Socket]int // connections waiting, by socket
	attached [][]uint32               // every program's weights, in order
	probe    listener.Steer           // the program attached last
	probing  []listener.Steer         // every program with a probe port, in order
	removed  int
}

func (g *fakeGroup) Len() int                      { return len(g.socks) }
func (g *fakeGroup) Socket(i int) *listener.Socket { return g.socks[i] }
func (g *fakeGroup) Close()                        { g.socks = g.socks[:1] }

func (g *fakeGroup) Add() (*listener.Socket, int, error) {
	s := &listener.Socket{Name: g.socks[0].Name, Addr: fmt.Sprintf("sibling %d", len(g.socks))}
	g.socks = append(g.socks, s)
	return s, len(g.socks) - 1, nil
}

func (g *fakeGroup) Remove(i int) error {
	last := len(g.socks) - 1
	g.socks[i] = g.socks[last]
	g.socks = g.socks[:last]
	g.removed++
	return nil
}

func (g *fakeGroup) Attach(s listener.Steer) error {
	if len(s.Weights) != len(g.socks) {
		return fmt.Errorf("%d weights for %d sockets", len(s.Weights), len(g.socks))
	}
	g.attached = append(g.attached, slices.Clone(s.Weights))
	g.probe = s
	if s.ProbePort != 0 {
		g.probing = append(g.probing, s)
	}
	return nil
}

func (g *fakeGroup) QueueLen(i int) (int, error) { return g.queue[g.socks[i]], nil }

// weights is the program attached last.
func (g *fakeGroup) weights() []uint32 {
	if len(g.attached) == 0 {
		return nil
	}
	return g.attached[len(g.attached)-1]
}

// steerSim is a simulated master whose TCP bind steers through a
// fakeGroup; unread and listening answer from the test's sets.
type steerSim struct {
	*sim
	g         *fakeGroup
	unread    map[int]bool // pids whose group holds a request not read yet
	listening map[int]bool // pids still waiting for connections once signalled
	checks    int          // unread checks made
	// weighed: the weight its generation had in the program attached last
	// when the master first signalled pid.
	weighed map[int]uint32
	// probeErr is what each canary probe attempt gets; probes counts them.
	probeErr error
	probes   int
	// unprotected lists the ready workers asked to stop (stop_signal, while
	// running) whose generation still weighed something while another did
	// too: a steered stop that skipped its drain though it had stand-ins.
	unprotected []string
}

func newSteerSim(t testing.TB, edit func(*Config)) *steerSim {
	t.Helper()
	ss := &steerSim{unread: map[int]bool{}, listening: map[int]bool{}, weighed: map[int]uint32{}}
	s := buildSimWith(t, edit, func(s *sim) {
		s.m.opts.Open = func(addrs []listener.Addr) ([]*listener.Socket, error) {
			var out []*listener.Socket
			for _, a := range addrs {
				out = append(out, &listener.Socket{Name: a.Raw, Addr: "127.0.0.1:8080"})
			}
			return out, nil
		}
		s.m.env.group = func(first *listener.Socket, more []*listener.Socket) (steerGroup, error) {
			if ss.g != nil {
				return nil, errors.New("one steered bind per simulator")
			}
			ss.g = &fakeGroup{socks: append([]*listener.Socket{first}, more...), queue: map[*listener.Socket]int{}}
			return ss.g, nil
		}
		s.m.env.unread = func(pids []int) (map[int]bool, error) {
			ss.checks++
			out := map[int]bool{}
			for _, pid := range pids {
				out[pid] = ss.unread[pid]
			}
			return out, nil
		}
		s.m.env.listening = func(watch map[int][]uint64) ([]int, map[int]error) {
			var out []int
			for pid := range watch {
				if ss.listening[pid] {
					out = append(out, pid)
				}
			}
			return out, nil
		}
		s.m.env.async = func(f func()) { f() }
		s.m.env.probeSocket = func(netip.AddrPort) (int, uint16, error) {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			return fd, uint16(40000 + ss.probes), err
		}
		s.m.env.probe = func(a probeAttempt) error {
			unix.Close(a.fd)
			ss.probes++
			return ss.probeErr
		}
		signal := s.m.env.signal
		s.m.env.signal = func(p *workers.Process, sig syscall.Signal) error {
			if w := s.m.workers[p.Pid]; w != nil {
				if _, ok := ss.weighed[p.Pid]; !ok {
					ss.weighed[p.Pid] = ss.weightOf(w.gen)
				}
				others := 0 // the weights as the master has them now
				for _, g := range s.m.steer["127.0.0.1:0"].gens {
					if g != w.gen {
						others += s.m.weight(g)
					}
				}
				if own := s.m.weight(w.gen); sig == w.cfg.StopSig && w.wasReady && s.m.phase == running && own > 0 && others > 0 {
					ss.unprotected = append(ss.unprotected, fmt.Sprintf("%d (generation %d weighs %d, the others %d)", p.Pid, w.gen, own, others))
				}
			}
			return signal(p, sig)
		}
	})
	ss.sim = s
	s.m.step() // as the loop begins
	s.m.applyWeights()
	return ss
}

// pump applies the checks and probe attempts that came back: the loop's
// other event sources.
func (s *sim) pump() {
	for {
		select {
		case c := <-s.m.dr.checks:
			s.m.onDrainCheck(c)
			s.advance()
		case r := <-s.m.probeResults:
			s.m.onProbeResult(r)
			s.advance()
		default:
			return
		}
	}
}

// settle moves time on in drain polls until no drain is left, every
// signalled worker exiting at once (a Go app), at most a second of it.
func (s *steerSim) settle(check func()) {
	s.t.Helper()
	for range 1000 {
		check()
		switch {
		case len(s.pids(wStarting, 0)) > 0:
			s.ready(s.pids(wStarting, 0)[0])
		case s.signalledPid() != 0:
			s.exit(s.signalledPid(), 0)
		case len(s.m.dr.drains) > 0:
			s.tick(drainPoll)
		default:
			return
		}
		s.pump()
	}
	s.t.Fatalf("the pool does not settle: %s", s.describe())
}

// serving is the number of ready workers whose generation has a weight in
// the program attached last (workers chosen to stop whose generation is
// not paused yet serve too).
func (s *steerSim) serving() int {
	w := s.g.weights()
	n := 0
	for _, wk := range s.m.workers {
		i := slices.Index(s.m.steer["127.0.0.1:0"].gens, wk.gen)
		d := s.m.dr.drains[wk.proc.Pid]
		if i >= 0 && i < len(w) && w[i] > 0 && (wk.state == wReady || (d != nil && d.phase == drainWaiting)) {
			n++
		}
	}
	return n
}

// weightOf is the weight of generation gen in the program attached last.
func (s *steerSim) weightOf(gen int) uint32 {
	i := slices.Index(s.m.steer["127.0.0.1:0"].gens, gen)
	if w := s.g.weights(); i >= 0 && i < len(w) {
		return w[i]
	}
	return 0
}

// A reload gives the new generation a socket of its own (the group has
// two from the start); the program weights each generation by its ready
// workers; no old worker is signalled while its generation has a weight;
// once the rollout is done the old socket is idle, and the next
// generation takes it.
func TestSimSteerRollout(t *testing.T) {
	s := newSteerSim(t, func(c *Config) { c.Workers = 2 })
	if got := s.g.weights(); !slices.Equal(got, []uint32{1, 0}) {
		t.Fatalf("at boot, before any worker is ready: weights %v, want [1 0] (connections wait for the boot)", got)
	}
	s.readyAll()
	if got := s.g.weights(); !slices.Equal(got, []uint32{2, 0}) {
		t.Fatalf("booted: weights %v, want [2 0]", got)
	}
	s.call(Request{Command: "reload"})
	if s.g.Len() != 2 || s.m.steer["127.0.0.1:0"].gens[1] != 2 {
		t.Fatalf("after HUP: %d sockets, gens %v; want generation 2 on a second socket", s.g.Len(), s.m.steer["127.0.0.1:0"].gens)
	}
	if got := s.g.weights(); !slices.Equal(got, []uint32{2, 0}) {
		t.Fatalf("canary starting: weights %v, want [2 0]", got)
	}
	s.ready(s.pids(wStarting, 2)[0])
	if got := s.g.weights(); !slices.Equal(got, []uint32{0, 1}) {
		// max_surge 1 of 2 workers: nothing can start to stand in, so
		// the old generation pauses at once for its first stop.
		t.Fatalf("canary ready: weights %v, want [0 1]", got)
	}
	minServing := 2
	s.settle(func() { minServing = min(minServing, s.serving()) })
	if len(s.weighed) != 2 {
		t.Fatalf("%d old workers signalled, want 2", len(s.weighed))
	}
	for pid, w := range s.weighed {
		if w != 0 {
			t.Errorf("old worker %d signalled while its generation weighed %d", pid, w)
		}
	}
	if s.m.rollout != nil || len(s.pids(wReady, 2)) != 2 || len(s.m.workers) != 2 {
		t.Fatalf("rollout not done: %s", s.describe())
	}
	if got := s.g.weights(); !slices.Equal(got, []uint32{0, 2}) {
		t.Fatalf("done: weights %v, want [0 2]", got)
	}
	if minServing != 1 {
		t.Errorf("serving workers went down to %d during the rollout, want 1 (max_surge 1: each pause leaves the canary)", minServing)
	}
	// The next generation takes the idle socket 0, and the two take
	// turns: nothing is added or removed.
	s.call(Request{Command: "reload"})
	if gens := s.m.steer["127.0.0.1:0"].gens; !slices.Equal(gens, []int{3, 2}) {
		t.Fatalf("third generation: gens %v, want [3 2]", gens)
	}
	s.settle(func() {})
	if gens := s.m.steer["127.0.0.1:0"].gens; !slices.Equal(gens, []int{3, 0}) || s.g.removed != 0 || s.g.Len() != 2 {
		t.Fatalf("after the third: gens %v, %d sockets, %d removed; want [3 0], 2 and none", gens, s.g.Len(), s.g.removed)
	}
}

// Three generations at once (a HUP during a rollout) need a third socket;
// once the pool is down to one generation again, the idle socket at the
// end of the group is closed, and only that one (nobody is renumbered).
func TestSimSteerGroupGrowsAndShrinks(t *testing.T) {
	s := newSteerSim(t, func(c *Config) { c.Workers = 1 })
	s.readyAll()
	s.call(Request{Command: "reload"}) // generation 2 on socket 1, its canary starting
	s.call(Request{Command: "reload"}) // generation 3: no idle socket
	gens := s.m.steer["127.0.0.1:0"].gens
	if !slices.Equal(gens, []int{1, 2, 3}) {
		t.Fatalf("two HUPs: gens %v, want [1 2 3]", gens)
	}
	s.settle(func() {})
	if gens := s.m.steer["127.0.0.1:0"].gens; !slices.Equal(gens, []int{0, 0, 3}) || s.g.removed != 0 {
		t.Fatalf("generation 3 serving: gens %v, %d removed; want [0 0 3] and none (3 is last)", gens, s.g.removed)
	}
	s.call(Request{Command: "reload"})
	s.settle(func() {})
	if gens := s.m.steer["127.0.0.1:0"].gens; !slices.Equal(gens, []int{4, 0}) || s.g.removed != 1 {
		t.Fatalf("generation 4 serving: gens %v, %d removed; want [4 0] and the last one removed", gens, s.g.removed)
	}
}

// With max_surge at 100%, a stop waits until the new generation serves
// with every worker: the serving workers never drop below `workers`.
func TestSimSteerPauseWaitsForStandIns(t *testing.T) {
	s := newSteerSim(t, func(c *Config) { c.Workers, c.MaxSurge = 3, "100%" })
	s.readyAll()
	s.call(Request{Command: "reload"})
	minServing := 3
	s.settle(func() { minServing = min(minServing, s.serving()) })
	if minServing < 3 {
		t.Fatalf("serving workers went down to %d, want never below 3", minServing)
	}
	if s.m.rollout != nil || len(s.pids(wReady, 2)) != 3 {
		t.Fatalf("rollout not done: %s", s.describe())
	}
}

// A paused worker is signalled only once its generation's queue has been
// empty for the settle and its group holds no unread request; a request
// it holds for ever is waited out for its graceful timeout at most.
func TestSimSteerDrainWaitsForQueueAndUnread(t *testing.T) {
	s := newSteerSim(t, func(c *Config) { c.Workers, c.GracefulTimeout = 1, 2*time.Second })
	s.readyAll()
	old := s.pids(wReady, 1)[0]
	oldSock := s.g.Socket(0)
	s.call(Request{Command: "reload"})
	s.g.queue[oldSock] = 3
	s.unread[old] = true
	s.ready(s.pids(wStarting, 2)[0])
	if s.weightOf(1) != 0 {
		t.Fatalf("the old generation still weighs %d after the canary", s.weightOf(1))
	}
	s.tick(100 * time.Millisecond)
	s.pump()
	if s.procs[old].signalled() {
		t.Fatal("signalled with 3 connections in its generation's queue")
	}
	s.g.queue[oldSock] = 0
	s.tick(drainPoll)
	s.pump()
	s.tick(steerSettle)
	s.pump()
	if s.procs[old].signalled() || s.checks == 0 {
		t.Fatalf("signalled with an unread request (%d checks)", s.checks)
	}
	s.unread[old] = false
	s.tick(unreadRetry)
	s.pump()
	if !s.procs[old].signalled() {
		t.Fatalf("not signalled once drained: %s", s.describe())
	}

	// A request never read: the graceful timeout bounds the wait.
	s.exit(old, 0)
	s.settle(func() {})
	s.call(Request{Command: "reload"})
	second := s.pids(wReady, 2)[0]
	s.unread[second] = true
	s.ready(s.pids(wStarting, 3)[0])
	s.tick(time.Second)
	s.pump()
	if s.procs[second].signalled() {
		t.Fatal("signalled a second after its pause, with an unread request")
	}
	s.tick(time.Second)
	s.pump()
	if !s.procs[second].signalled() {
		t.Fatal("not signalled once its graceful timeout passed")
	}
	if s.logs.FilterMessageSnippet("did not drain within the graceful timeout").Len() != 1 {
		t.Error("want one line saying the generation did not drain")
	}
}

// The loop wakes when a paused generation's settle ends, not at the queue
// poll after it: the unread check, and the signal, come no later than
// they must.
func TestSimSteerSettleEndsOnTime(t *testing.T) {
	s := newSteerSim(t, func(c *Config) { c.Workers = 1 })
	s.readyAll()
	s.call(Request{Command: "reload"})
	s.ready(s.pids(wStarting, 2)[0])
	if s.weightOf(1) != 0 {
		t.Fatalf("the old generation still weighs %d after the canary", s.weightOf(1))
	}
	settled := s.now.Add(steerSettle) // its queue was empty from the pause on
	for range 100 {
		next, ok := s.m.nextDeadline()
		if !ok || next.After(settled) {
			t.Fatalf("the loop next wakes %v after the settle ends (any wake: %v)", next.Sub(settled), ok)
		}
		if !next.Before(settled) {
			return
		}
		s.tick(next.Sub(s.now))
	}
	t.Fatal("the loop never wakes when the settle ends")
}

// A signalled worker that still accepts keeps its generation paused until
// it stops listening (or for unlistenCap), so the others of its
// generation get new connections only once it can take no more.
func TestSimSteerPauseUntilUnlisten(t *testing.T) {
	s := newSteerSim(t, func(c *Config) { c.Workers = 2 })
	s.readyAll()
	s.call(Request{Command: "reload"})
	for _, pid := range s.pids(wReady, 1) {
		s.listening[pid] = true
	}
	s.ready(s.pids(wStarting, 2)[0])
	s.tick(steerSettle + drainPoll)
	s.pump()
	var first int
	for _, pid := range s.pids(wStopping, 1) {
		if s.procs[pid].signalled() {
			first = pid
		}
	}
	if first == 0 {
		t.Fatalf("no old worker signalled: %s", s.describe())
	}
	s.tick(100 * time.Millisecond)
	s.pump()
	if s.weightOf(1) != 0 {
		t.Fatalf("generation 1 weighs %d while its signalled worker still listens", s.weightOf(1))
	}
	s.listening[first] = false
	s.tick(unlistenPoll)
	s.pump()
	if s.weightOf(1) != 1 {
		t.Fatalf("generation 1 weighs %d once its signalled worker stopped listening, want 1 (the other)", s.weightOf(1))
	}
}

// A stop chosen once its generation's pause has begun its unread check
// waits for the next pause: in a long rolling rollout a pause lasts one
// round of checks, and the generation's other workers serve between
// rounds, instead of staying paused while new stops keep joining.
func TestSimSteerLateStopWaitsForNextPause(t *testing.T) {
	s := newSteerSim(t, func(c *Config) { c.Workers, c.MaxSurge = 4, "2" })
	s.readyAll()
	for _, pid := range s.pids(wReady, 1) {
		s.listening[pid] = true
	}
	s.call(Request{Command: "reload"})
	s.readyAll() // the canary, then a second: the pool is full (4 + 2)
	s.tick(steerSettle + drainPoll)
	s.pump()
	var signalled []int
	for _, pid := range s.pids(wStopping, 1) {
		if s.procs[pid].signalled() {
			signalled = append(signalled, pid)
		}
	}
	if len(signalled) != 2 {
		t.Fatalf("%d old workers signalled after the first round, want 2: %s", len(signalled), s.describe())
	}
	// One exits; the other still listens, so the pause goes on, and the
	// replacement started in the freed slot becomes ready meanwhile.
	s.listening[signalled[0]] = false
	s.exit(signalled[0], 0)
	s.readyAll()
	var late int
	for _, pid := range s.pids(wStopping, 1) {
		if !s.procs[pid].signalled() {
			late = pid
		}
	}
	if late == 0 {
		t.Fatalf("no third old worker chosen to stop: %s", s.describe())
	}
	s.tick(100 * time.Millisecond)
	s.pump()
	if got := s.m.drainOf(late); got != "serving" || s.procs[late].signalled() || s.weightOf(1) != 0 {
		t.Fatalf("a stop chosen during a closed pause: phase %q, signalled %v, generation 1 weighs %d; want serving, not signalled, 0",
			got, s.procs[late].signalled(), s.weightOf(1))
	}
	s.listening[signalled[1]] = false
	s.tick(unlistenPoll)
	s.pump()
	if next, ok := s.m.nextDeadline(); !ok || next.After(s.now.Add(drainPoll)) {
		t.Fatalf("the pause ended with a stop waiting, and the loop next wakes at %v (%v)", next.Sub(s.now), ok)
	}
	s.tick(drainPoll) // its own pause begins
	s.tick(steerSettle)
	s.pump()
	if !s.procs[late].signalled() {
		t.Fatalf("the late stop was not signalled in the next pause: phase %q: %s", s.m.drainOf(late), s.describe())
	}
}

// A recycle in the only generation has nobody to stand in for its
// worker's generation: it is signalled at once, as without steering, once
// its replacement is ready.
func TestSimSteerRecycleOnlyGeneration(t *testing.T) {
	s := newSteerSim(t, func(c *Config) { c.Workers = 2 })
	s.readyAll()
	old := s.pids(wReady, 1)[0]
	s.m.recycle(s.m.workers[old], recycleRequests)
	s.advance()
	s.ready(s.pids(wStarting, 1)[0])
	if !s.procs[old].signalled() {
		t.Fatalf("recycled worker not signalled once its replacement was ready: %s", s.describe())
	}
	if len(s.m.dr.pauses) != 0 || s.weightOf(1) != 2 {
		t.Fatalf("pauses %v, weight %d; want no pause and both others serving", s.m.dr.pauses, s.weightOf(1))
	}
}

// A bind that cannot steer (a unix socket) is shared by every generation,
// said once; the rollout goes as without steering.
func TestSimSteerSharedBind(t *testing.T) {
	s := buildSimWith(t, func(c *Config) { c.Workers = 1 }, func(s *sim) {
		s.m.opts.Open = func(addrs []listener.Addr) ([]*listener.Socket, error) {
			return []*listener.Socket{{Name: addrs[0].Raw}}, nil
		}
		s.m.env.group = func(*listener.Socket, []*listener.Socket) (steerGroup, error) {
			return nil, errors.New("not a listening plain-TCP socket")
		}
	})
	s.m.step()
	s.readyAll()
	if len(s.m.steer) != 0 || s.logs.FilterMessage("bind shared by every generation: not steered").Len() != 1 {
		t.Fatalf("steered %v; want the bind shared, said once", s.m.steer)
	}
	s.call(Request{Command: "reload"})
	s.drive(func() {})
	if s.m.rollout != nil || s.m.stable != 2 {
		t.Fatalf("rollout not done: %s", s.describe())
	}
}

// With canary_probe, a steered reload's canary that says it is ready is
// probed first: its generation gets no weight, the program sends the
// probe's port to its socket, and it counts as ready only once a probe
// passes; a probe that keeps failing fails it at its ready timeout, which
// rolls the reload back and says why. The next reload's canary passes at
// its first attempt and the rollout goes on.
func TestSimCanaryProbe(t *testing.T) {
	s := newSteerSim(t, func(c *Config) {
		c.Workers, c.CanaryProbe, c.ReadyTimeout = 2, "http:/health/ready", 2*time.Second
	})
	s.readyAll()
	s.probeErr = errors.New("GET http://127.0.0.1:8080/health/ready: 503 Service Unavailable, want 200 OK")
	reply := s.call(Request{Command: "reload", Wait: true})
	canary := s.pids(wStarting, 2)[0]
	s.ready(canary)
	s.pump()
	if w := s.m.workers[canary]; w.state != wStarting || s.weightOf(2) != 0 {
		t.Fatalf("canary said ready, probe failing: state %s, weight %d; want starting with no weight", w.state, s.weightOf(2))
	}
	if len(s.g.probing) != 1 || s.g.probing[0].ProbeIndex != 1 || s.g.probing[0].Weights[1] != 0 || s.probes != 1 {
		t.Fatalf("programs with a probe port %+v after %d attempts; want one, sending it to socket 1, weightless", s.g.probing, s.probes)
	}
	for range 15 {
		s.tick(probeEvery)
		s.pump()
	}
	if s.probes < 10 || s.m.workers[canary].state != wStarting {
		t.Fatalf("%d attempts in 1.5s, canary %s; want one each 100ms and still starting", s.probes, s.m.workers[canary].state)
	}
	s.tick(time.Second) // past its ready timeout
	r := answer(t, reply)
	if r.OK || !containsAll(r.Error, "rolled back", "failed its canary probe", "503 Service Unavailable", "--canary-probe http:/health/ready") {
		t.Fatalf("reload --wait answered %+v", r)
	}
	s.settle(func() {})
	if s.m.stable != 1 || len(s.pids(wReady, 1)) != 2 || s.m.probe != nil {
		t.Fatalf("after the rollback: %s, probe %+v", s.describe(), s.m.probe)
	}

	s.probeErr, s.probes = nil, 0
	reply = s.call(Request{Command: "reload", Wait: true})
	s.ready(s.pids(wStarting, 3)[0])
	s.pump()
	if s.probes != 1 || len(s.pids(wReady, 3)) != 1 || s.weightOf(3) == 0 {
		t.Fatalf("probe passing: %d attempts, %s, weight %d; want the canary ready and weighted after one", s.probes, s.describe(), s.weightOf(3))
	}
	s.settle(func() {})
	if r := answer(t, reply); !r.OK || s.probes != 1 {
		t.Fatalf("reload --wait answered %+v after %d probes; want success, only the canary probed", r, s.probes)
	}
	if s.g.probe.ProbePort != 0 {
		t.Errorf("the probe's port is still in the program: %+v", s.g.probe)
	}
}

func TestParseProbe(t *testing.T) {
	for in, want := range map[string]string{"": "<nil>", "tcp": "tcp", "http:/health/ready": "http:/health/ready"} {
		p, err := ParseProbe(in)
		if got := fmt.Sprint(p); err != nil || (p == nil) != (in == "") || (p != nil && got != want) {
			t.Errorf("ParseProbe(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, in := range []string{"http", "http:", "http:health", "https:/x", "http:/a b", "udp"} {
		if _, err := ParseProbe(in); err == nil || !strings.Contains(err.Error(), "--canary-probe") {
			t.Errorf("ParseProbe(%q): %v, want an error naming --canary-probe", in, err)
		}
	}
}

// BenchmarkTurnBigRollout is one turn of the loop in the middle of a
// steered rolling rollout of 256 workers (max_surge 64): 33 new workers
// are ready, 31 still starting, and the 33 old workers they replace wait
// for the batch to stand in for them. A reload of 256 workers takes
// about a thousand such turns.
func BenchmarkTurnBigRollout(b *testing.B) {
	s := newSteerSim(b, func(c *Config) { c.Workers = 256 })
	s.readyAll()
	s.call(Request{Command: "reload"})
	s.ready(s.pids(wStarting, 2)[0]) // the canary: the batch starts
	for _, pid := range s.pids(wStarting, 2)[:32] {
		s.ready(pid)
	}
	if n := len(s.m.dr.drains); n != 33 || len(s.pids(wStarting, 2)) != 31 {
		b.Fatalf("%d drains, %d starting; want 33 and 31: %s", n, len(s.pids(wStarting, 2)), s.describe())
	}
	for b.Loop() {
		s.m.advance()
	}
}
