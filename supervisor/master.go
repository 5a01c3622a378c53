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
	booting     phase = iota // starting the first workers
	running                  // all workers were ready once; crashes are replaced
	draining                 // TERM with shutdown_delay: not ready, still serving
	stopping                 // workers are being stopped; exit when none is left
	handingOver              // an upgrade committed: stop what the new master says; exit when none is left
)

func (p phase) String() string {
	return [...]string{"booting", "running", "draining", "stopping", "handing over"}[p]
}

// fastGrace is how long INT/QUIT (and a failed start) wait after SIGTERM
// before SIGKILL.
const fastGrace = time.Second

// master is the state the loop owns. No other goroutine touches it.
type master struct {
	opts        Options
	env         env
	log         *zap.Logger
	metrics     *Metrics
	notify      *notifySockets // the sockets workers' NOTIFY_SOCKET names; nil in the simulated master
	forker      workers.Forker
	exited      chan workers.Exit
	listenScans chan listenScan    // from scanListen, buffered 1
	rss         chan map[int]int64 // from sampleMemory, buffered 1
	inodes      map[int]uint64     // socket fd -> inode, for listen readiness
	started     time.Time

	phase   phase
	workers map[int]*worker // by pid

	// Generations: each reload's config gets the next number. stable is
	// the one in force; target the one every slot should run (= stable
	// unless a rollout is under way). configs and genSockets hold every
	// generation that still has a use: stable, target, or live workers.
	configs    map[int]*Resolved
	genSockets map[int][]*listener.Socket
	sockets    map[string][]*listener.Socket // by bind key (listener.Addr.Key)
	stable     int
	target     int
	lastGen    int
	rollout    *rollout // nil when none
	lastReload string   // outcome of the last reload, for status

	// restarts holds target slots waiting out a crash backoff: slot ->
	// when step may start it again.
	restarts     map[int]time.Time
	crashes      map[int]int    // consecutive crashes per slot
	refill       map[int]string // why a target slot lost its worker: the next start's reason
	requestsDone int64          // X_REQUESTS of the workers gone, for the requests counter
	drainUntil   time.Time      // draining: when shutdown_delay ends
	nextSample   time.Time      // next RSS sample, when max_memory is set
	sampling     bool           // an RSS sample is under way
	nextScan     time.Time      // next listen-readiness scan, while a starting worker is watched
	scanning     bool           // a listen-readiness scan is under way
	nextTrim     time.Time      // when a quiet pool trims the master's memory (trim.go)
	trimmed      bool           // trimmed since the pool was last busy
	failure      error          // why the master gives up; returned by Run

	// A master upgrade (upgrade.go, upgrade_new.go).
	upgrade     *upgrade     // nil when none is under way
	pair        *linkPair    // the old master's side of the link, once it upgraded
	parent      *link        // the new master's end of the link, until the old master is gone
	handedOver  bool         // an upgrade committed here once (tableflip upgrades once)
	upgradeNext *pendingCall // an upgrade waiting for the drains under way
	lastUpgrade string       // outcome of the last upgrade, for status
	metricsStop func()       // stops serving the metrics port; nil when not serving

	nice bootNice // boot_nice, fixed at start (bootnice.go)

	// Steering (steer.go, drain.go).
	steerOn      bool                 // steer: auto at start
	steer        map[string]*steered  // by bind key: the binds that steer
	inherit      map[string]inherited // by bind key: groups the master before an upgrade steered, until opened
	dr           drainState
	probe        *probing         // the canary being probed (probe.go); nil: none
	probed       map[int]bool     // generations whose canary passed its probe
	probeResults chan probeResult // from a probe attempt, buffered 1
}

// newMaster is the master before its first step: generation 1 is cfg, no
// socket is open and no worker started.
func newMaster(cfg *Resolved, opts Options, e env) *master {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics("")
	}
	return &master{
		opts:         opts,
		env:          e,
		log:          opts.Log,
		metrics:      opts.Metrics,
		exited:       make(chan workers.Exit, 64),
		listenScans:  make(chan listenScan, 1),
		rss:          make(chan map[int]int64, 1),
		inodes:       map[int]uint64{},
		started:      e.now(),
		configs:      map[int]*Resolved{1: cfg},
		genSockets:   map[int][]*listener.Socket{},
		sockets:      map[string][]*listener.Socket{},
		stable:       1,
		target:       1,
		lastGen:      1,
		workers:      make(map[int]*worker),
		restarts:     make(map[int]time.Time),
		crashes:      make(map[int]int),
		refill:       make(map[int]string),
		steerOn:      cfg.Steer == SteerAuto,
		steer:        map[string]*steered{},
		inherit:      map[string]inherited{},
		dr:           newDrainState(),
		probed:       map[int]bool{},
		probeResults: make(chan probeResult, 1),
	}
}

// loop runs until every worker is gone after a stop, and returns the reason
// the master failed, or nil after a requested stop. Each turn handles one
// event, then advances.
func (m *master) loop(notes <-chan []workers.Notification) error {
	m.step()
	m.applyWeights()
	m.publish()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for !m.done() {
		var tick <-chan time.Time
		if at, ok := m.nextDeadline(); ok {
			timer.Reset(max(at.Sub(m.env.now()), 0))
			tick = timer.C
		}
		select {
		case ex := <-m.exited:
			m.onExit(ex)
		case batch := <-notes:
			if !m.onNotifies(batch) {
				// Nothing changed, nothing to advance: a flood of
				// datagrams from non-workers costs the loop a map
				// lookup each, not a turn. A timer due meanwhile is
				// ready at the next select.
				continue
			}
		case sig := <-m.opts.Signals:
			m.onIntent(signals.IntentOf(sig), sig.String())
		case c := <-m.opts.Control:
			m.onCall(c)
		case s := <-m.listenScans:
			m.onListenScan(s)
		case rss := <-m.rss:
			m.onRSS(rss)
		case c := <-m.dr.checks:
			m.onDrainCheck(c)
		case r := <-m.probeResults:
			m.onProbeResult(r)
		case msg, ok := <-m.linkIn():
			m.onLink(msg, ok)
		case <-m.metrics.live.wake: // a liveness check: the turn answers it
		case <-tick:
		}
		m.advance()
	}
	m.oldExit()
	return m.failure
}

// advance ends a turn of the loop: it does what is due now, applies the
// pool plan, and publishes the state for scrapes.
func (m *master) advance() {
	now := m.env.now()
	m.onTick(now)
	m.step()
	m.advanceDrains(now)
	m.advanceProbe(now)
	m.applyWeights()
	m.launchProbe()
	m.startPendingUpgrade()
	m.planTrim(now)
	m.publish()
	m.report()
}

// done reports whether the master has stopped, or handed over to a new
// one, and every worker is gone.
func (m *master) done() bool {
	return (m.phase == stopping || m.phase == handingOver) && len(m.workers) == 0
}

// cfg is the configuration in force.
func (m *master) cfg() *Resolved { return m.configs[m.stable] }

// start forks a worker of generation gen for slot. A failed fork counts
// as a crash: at boot the master gives up, later the slot is retried after
// its crash backoff.
func (m *master) start(slot, gen int) {
	cfg := m.configs[gen]
	socks := m.genSockets[gen]
	names := make([]string, len(socks))
	fds := make([]int, len(socks))
	for i, s := range socks {
		names[i], fds[i] = s.Name, s.RawFD()
	}
	p, err := m.env.spawn(workers.Spec{
		Path: cfg.Path,
		Args: cfg.Command,
		Shim: m.opts.Shim,
		Dir:  cfg.Chdir,
		Env: workers.Env(os.Environ(), cfg.Env, workers.Contract{Names: names, NotifySocket: m.notify.addr(cfg),
			Slot: slot, Generation: gen, Watchdog: cfg.Timeout}),
		Sockets:    fds,
		Stdout:     m.opts.Stdout,
		Stderr:     m.opts.Stderr,
		Credential: cfg.Credential,
		Nice:       m.niceFor(cfg),
		Forker:     m.forker,
		Exited:     m.exited,
	})
	if err != nil {
		// One line, from workerFailed: the reason names the limit when
		// one was hit (EMFILE, EAGAIN), and the retry follows the crash
		// backoff, so a fork that keeps failing is not a hot loop.
		m.workerFailed(slot, gen, fmt.Sprintf("worker %d: %v%s", slot, err, limitHint(err)), 0,
			[]zap.Field{zap.Int("slot", slot), zap.Int("generation", gen)}, "worker start failed; retrying")
		return
	}
	w := &worker{proc: p, slot: slot, gen: gen, cfg: cfg, state: wStarting, niced: m.niceFor(cfg) > 0}
	if cfg.Ready == ReadyDelay {
		w.delayedReadyAt = p.Started.Add(cfg.ReadyDelay)
	} else {
		w.readyBy = p.Started.Add(cfg.ReadyTimeout)
	}
	m.setLimits(w)
	if cfg.MaxRSS > 0 && m.nextSample.IsZero() {
		m.nextSample = p.Started.Add(memCheckEvery)
	}
	m.workers[p.Pid] = w
	m.metrics.starts.WithLabelValues(m.startReason(slot)).Inc()
	m.log.Info("worker started", append(w.fields(), zap.String("ready", cfg.Ready))...)
	if watchesListen(cfg.Ready) {
		w.listenInodes = make([]uint64, len(fds))
		for i, fd := range fds {
			w.listenInodes[i] = m.inodes[fd]
		}
		if m.nextScan.IsZero() {
			m.nextScan = p.Started.Add(listenPoll)
		}
	}
}

// startReason is why a worker is being started in slot, for
// supervisor_worker_starts_total; it consumes the slot's refill reason.
func (m *master) startReason(slot int) string {
	why, ok := m.refill[slot]
	delete(m.refill, slot)
	switch {
	case m.upgrade != nil && !m.upgrade.old:
		return startUpgrade
	case m.phase == booting:
		return startBoot
	case m.rollout != nil && m.rollout.rollback:
		return startRollback
	case m.rollout != nil:
		return startReload
	case ok:
		return why
	}
	for _, w := range m.workers {
		if w.slot == slot && w.gen == m.target && w.recycleReason != "" {
			return startRecycle
		}
	}
	return startScale
}

// step applies the pool plan: it starts and stops workers toward the
// target generation, then settles a rollout that has arrived.
//
// The old master of an upgrade does nothing here: until the commit it is
// not to change, and from it the new master plans for both.
func (m *master) step() {
	if m.phase == stopping || m.phase == handingOver || (m.upgrade != nil && m.upgrade.old) {
		return
	}
	cfg := m.configs[m.target]
	taking := m.upgrade != nil && !m.upgrade.committed // a new master before its commit
	p := pool{target: m.target, want: cfg.Workers, surge: cfg.Surge,
		canary: taking || (m.rollout != nil && !m.rollout.rollback), scheduled: map[int]bool{}, workers: m.remoteViews(len(m.workers))}
	for s := range m.restarts {
		p.scheduled[s] = true
	}
	for _, w := range m.workers {
		p.workers = append(p.workers, wview{pid: w.proc.Pid, slot: w.slot, gen: w.gen, state: w.state,
			recycling: w.recycleReason != "", born: w.proc.Started})
	}
	pl := planPool(p)
	for _, pid := range pl.stop {
		w := m.workers[pid]
		if w == nil {
			m.retireRemote(pid)
			continue
		}
		m.log.Info("stopping worker", append(w.fields(), zap.Int("target", m.target))...)
		m.retire(w)
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
