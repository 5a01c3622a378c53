package supervisor

import (
	"fmt"
	"os"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/signals"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// phase is where the master is in its life.
type phase int

const (
	booting  phase = iota // starting the first workers
	running               // all workers were ready once; crashes are replaced
	draining              // TERM with shutdown_delay: not ready, still serving
	stopping              // workers are being stopped; exit when none is left
)

func (p phase) String() string {
	return [...]string{"booting", "running", "draining", "stopping"}[p]
}

// fastGrace is how long INT/QUIT (and a failed start) wait after SIGTERM
// before SIGKILL.
const fastGrace = time.Second

// master is the state the loop owns. No other goroutine touches it.
type master struct {
	opts    Options
	log     *zap.Logger
	notify  string // NOTIFY_SOCKET for workers
	reaper  *signals.Reaper
	exited  chan workers.Exit
	seen    chan listenSeen    // from watchListen
	rss     chan map[int]int64 // from sampleMemory, buffered 1
	rand    func(int64) int64  // uniform in [0, n): recycling jitter
	inodes  map[int]uint64     // socket fd -> inode, for listen readiness
	now     func() time.Time
	started time.Time

	phase   phase
	workers map[int]*worker // by pid

	// Generations: each reload's config gets the next number. stable is
	// the one in force; target the one every slot should run (= stable
	// unless a rollout is under way). configs and genSockets hold every
	// generation that still has a use: stable, target, or live workers.
	configs    map[int]*Resolved
	genSockets map[int][]*listener.Socket
	sockets    map[string][]*listener.Socket // by bind key, see bindKeys
	stable     int
	target     int
	lastGen    int
	rollout    *rollout // nil when none
	lastReload string   // outcome of the last reload, for status

	// restarts holds target slots waiting out a crash backoff.
	restarts   map[int]time.Time
	crashes    map[int]int // consecutive crashes per slot
	drainUntil time.Time
	nextSample time.Time // next RSS sample, when max_memory is set
	sampling   bool      // an RSS sample is under way
	failure    error     // why the master gives up; returned by Run
}

// loop runs until every worker is gone after a stop, and returns the reason
// the master failed, or nil after a requested stop.
func (m *master) loop(notes <-chan workers.Notification) error {
	m.step()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for !(m.phase == stopping && len(m.workers) == 0) {
		var tick <-chan time.Time
		if at, ok := m.nextDeadline(); ok {
			timer.Reset(max(at.Sub(m.now()), 0))
			tick = timer.C
		}
		select {
		case ex := <-m.exited:
			m.onExit(ex)
		case n := <-notes:
			m.onNotify(n)
		case sig := <-m.opts.Signals:
			m.onIntent(signals.IntentOf(sig), sig.String())
		case c := <-m.opts.Control:
			m.onCall(c)
		case s := <-m.seen:
			m.onListenSeen(s)
		case rss := <-m.rss:
			m.onRSS(rss)
		case <-tick:
		}
		m.onTick(m.now())
		m.step()
	}
	return m.failure
}

// nextDeadline is the earliest time the loop must wake without an event.
func (m *master) nextDeadline() (time.Time, bool) {
	ts := []time.Time{m.drainUntil, m.nextSample}
	for _, w := range m.workers {
		ts = append(ts, w.deadline)
		if w.state == wReady && w.due == "" {
			ts = append(ts, w.retireAt)
		}
	}
	for _, at := range m.restarts {
		ts = append(ts, at)
	}
	return earliest(ts...)
}

// cfg is the configuration in force.
func (m *master) cfg() *Resolved { return m.configs[m.stable] }

// start forks a worker of generation gen for slot. A failed fork counts
// as a crash.
func (m *master) start(slot, gen int) {
	cfg := m.configs[gen]
	socks := m.genSockets[gen]
	names := make([]string, len(socks))
	fds := make([]int, len(socks))
	for i, s := range socks {
		names[i], fds[i] = s.Name, s.RawFD()
	}
	p, err := workers.Start(workers.Spec{
		Path: cfg.Path,
		Args: cfg.Command,
		Shim: m.opts.Shim,
		Dir:  cfg.Chdir,
		Env: workers.Env(os.Environ(), cfg.Env, workers.Contract{Names: names, NotifySocket: m.notify,
			Slot: slot, Generation: gen, Watchdog: cfg.Timeout}),
		Sockets:    fds,
		Stdout:     m.opts.Stdout,
		Stderr:     m.opts.Stderr,
		Credential: cfg.Credential,
		Forker:     m.reaper,
		Exited:     m.exited,
	})
	if err != nil {
		m.log.Error("worker start failed", zap.Int("slot", slot), zap.Int("generation", gen), zap.Error(err))
		m.workerFailed(slot, gen, fmt.Sprintf("worker %d: %v", slot, err), 0, []zap.Field{zap.Int("slot", slot), zap.Int("generation", gen)})
		return
	}
	w := &worker{proc: p, slot: slot, gen: gen, cfg: cfg, state: wStarting}
	w.deadline = p.Started.Add(cfg.ReadyTimeout)
	if cfg.Ready == ReadyDelay {
		w.deadline = p.Started.Add(cfg.ReadyDelay)
	}
	m.setLimits(w)
	if cfg.MaxRSS > 0 && m.nextSample.IsZero() {
		m.nextSample = p.Started.Add(memCheckEvery)
	}
	m.workers[p.Pid] = w
	m.log.Info("worker started", append(w.fields(), zap.String("ready", cfg.Ready))...)
	if watchesListen(cfg.Ready) {
		inodes := make([]uint64, len(fds))
		for i, fd := range fds {
			inodes[i] = m.inodes[fd]
		}
		w.unwatch = make(chan struct{})
		go watchListen(p.Pid, inodes, w.unwatch, m.seen)
	}
}

// step applies the pool plan: it starts and stops workers toward the
// target generation, then settles a rollout that has arrived.
func (m *master) step() {
	if m.phase == stopping {
		return
	}
	cfg := m.configs[m.target]
	p := pool{target: m.target, want: cfg.Workers, surge: cfg.Surge,
		canary: m.rollout != nil && !m.rollout.rollback, scheduled: map[int]bool{}}
	for s := range m.restarts {
		p.scheduled[s] = true
	}
	for _, w := range m.workers {
		p.workers = append(p.workers, wview{pid: w.proc.Pid, slot: w.slot, gen: w.gen, state: w.state, due: w.due != "", born: w.proc.Started})
	}
	pl := planPool(p)
	for _, pid := range pl.stop {
		w := m.workers[pid]
		m.log.Info("stopping worker", append(w.fields(), zap.Int("target", m.target))...)
		m.stop(w, w.cfg.StopSig, w.cfg.GracefulTimeout)
	}
	for _, s := range pl.start {
		m.start(s, m.target)
		if m.phase == stopping {
			return
		}
	}
	m.settle()
	m.release()
}
