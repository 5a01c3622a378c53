package supervisor

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

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

// fastGrace is how long INT/QUIT (and a failed start) wait after SIGTERM
// before SIGKILL.
const fastGrace = time.Second

// master is the state the loop owns. No other goroutine touches it.
type master struct {
	cfg     *Resolved
	opts    Options
	log     *zap.Logger
	notify  string // NOTIFY_SOCKET for workers
	reaper  *signals.Reaper
	exited  chan workers.Exit
	now     func() time.Time
	gen     int
	phase   phase
	workers map[int]*worker // by pid
	// restarts holds slots waiting out a crash backoff, with when to start.
	restarts   map[int]time.Time
	crashes    map[int]int // consecutive crashes per slot
	drainUntil time.Time
	failure    error // why the master gives up; returned by Run
}

// loop runs until every worker is gone after a stop, and returns the reason
// the master failed, or nil after a requested stop.
func (m *master) loop(notes <-chan workers.Notification) error {
	for s := 0; s < m.cfg.Workers; s++ {
		m.start(s)
	}
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
			m.onIntent(sig)
		case reply := <-m.opts.status:
			reply <- m.snapshot()
		case <-tick:
		}
		m.onTick(m.now())
	}
	return m.failure
}

// nextDeadline is the earliest time the loop must wake without an event.
func (m *master) nextDeadline() (time.Time, bool) {
	ts := []time.Time{m.drainUntil}
	for _, w := range m.workers {
		ts = append(ts, w.deadline)
	}
	for _, at := range m.restarts {
		ts = append(ts, at)
	}
	return earliest(ts...)
}

// start forks a worker for slot. A failed fork counts as a crash.
func (m *master) start(slot int) {
	delete(m.restarts, slot)
	names := make([]string, len(m.opts.Sockets))
	fds := make([]int, len(m.opts.Sockets))
	for i, s := range m.opts.Sockets {
		names[i], fds[i] = s.Name, s.RawFD()
	}
	spec := workers.Spec{
		Path:       m.cfg.Path,
		Args:       m.cfg.Command,
		Shim:       m.opts.Shim,
		Dir:        m.cfg.Chdir,
		Env:        workers.Env(os.Environ(), m.cfg.Env, workers.Contract{Names: names, NotifySocket: m.notify, Slot: slot, Generation: m.gen}),
		Sockets:    fds,
		Stdout:     m.opts.Stdout,
		Stderr:     m.opts.Stderr,
		Credential: m.cfg.Credential,
		Forker:     m.reaper,
		Exited:     m.exited,
	}
	p, err := workers.Start(spec)
	if err != nil {
		m.log.Error("worker start failed", zap.Int("slot", slot), zap.Int("generation", m.gen), zap.Error(err))
		if m.phase == booting {
			m.fail(fmt.Errorf("worker %d: %w", slot, err))
			return
		}
		m.scheduleRestart(slot, 0)
		return
	}
	w := &worker{proc: p, slot: slot, gen: m.gen, state: wStarting}
	w.deadline = p.Started.Add(m.cfg.ReadyTimeout)
	if m.cfg.Ready == ReadyDelay {
		w.deadline = p.Started.Add(m.cfg.ReadyDelay)
	}
	m.workers[p.Pid] = w
	m.log.Info("worker started", append(w.fields(), zap.String("ready", m.cfg.Ready))...)
}

// onExit handles a reaped worker.
func (m *master) onExit(ex workers.Exit) {
	w, ok := m.workers[ex.Pid]
	if !ok {
		return
	}
	delete(m.workers, ex.Pid)
	// Its group may outlive its leader: leave no orphan behind (invariant 4).
	_ = w.proc.Signal(syscall.SIGKILL)
	how := workers.Describe(ex.Status)
	if w.state == wStopping && !w.failed {
		m.log.Info("worker stopped", append(w.fields(), zap.String("how", how))...)
		return
	}
	if m.phase == booting {
		m.fail(fmt.Errorf("worker %d (pid %d) %s before it was ready: %s", w.slot, ex.Pid, how, m.commandLine()))
		return
	}
	if m.phase == stopping {
		m.log.Info("worker ended", append(w.fields(), zap.String("how", how))...)
		return
	}
	prior := priorCrashes(m.crashes[w.slot], ex.At.Sub(w.proc.Started))
	m.crashes[w.slot] = prior + 1
	delay := crashDelay(prior)
	m.log.Warn("worker exited unexpectedly; replacing it", append(w.fields(), zap.String("how", how), zap.Duration("after", delay))...)
	m.scheduleRestart(w.slot, delay)
}

func (m *master) scheduleRestart(slot int, after time.Duration) {
	m.restarts[slot] = m.now().Add(after)
}

// onNotify applies one sd_notify datagram. It counts for a worker when its
// sender is the worker or in the worker's process group (the group leader's
// pid is the group id).
func (m *master) onNotify(n workers.Notification) {
	w := m.workers[n.PID]
	if w == nil && n.PGID > 0 {
		w = m.workers[n.PGID]
	}
	if w == nil {
		m.log.Debug("notify from an unknown sender ignored", zap.Int("sender", n.PID))
		return
	}
	if n.Msg.HasStatus {
		w.status = n.Msg.Status
	}
	if n.Msg.HasRequests {
		w.requests = n.Msg.Requests
	}
	if n.Msg.Ready && w.state == wStarting {
		m.markReady(w)
	}
	if n.Msg.Stopping && w.state != wStopping {
		// Leaving on its own: it stops serving soon, so replace it now.
		m.log.Info("worker is leaving on its own; replacing it", w.fields()...)
		w.state, w.deadline = wStopping, m.now().Add(m.cfg.GracefulTimeout)
		if m.phase == running || m.phase == draining {
			m.start(w.slot)
		}
	}
}

func (m *master) markReady(w *worker) {
	now := m.now()
	w.state, w.readyAt, w.deadline = wReady, now, time.Time{}
	m.log.Info("worker ready", append(w.fields(), zap.Duration("boot", now.Sub(w.proc.Started)))...)
	if m.phase != booting || m.count(wReady) < m.cfg.Workers {
		return
	}
	m.phase = running
	m.log.Info("ready", zap.Int("workers", m.cfg.Workers), zap.String("command", m.commandLine()))
	if m.opts.OnReady != nil {
		if err := m.opts.OnReady(); err != nil {
			m.log.Warn("after ready", zap.Error(err))
		}
	}
	m.tellSystemd(fmt.Sprintf("READY=1\nSTATUS=%d workers ready", m.cfg.Workers))
}

// onIntent acts on a signal.
func (m *master) onIntent(sig os.Signal) {
	intent := signals.IntentOf(sig)
	m.log.Info("signal", zap.String("signal", sig.String()), zap.Stringer("intent", intent))
	switch intent {
	case signals.Stop:
		if m.phase == draining || m.phase == stopping {
			return
		}
		if m.cfg.ShutdownDelay > 0 && m.phase == running {
			m.phase, m.drainUntil = draining, m.now().Add(m.cfg.ShutdownDelay)
			m.tellSystemd("STOPPING=1")
			m.log.Info("shutdown delay: still serving", zap.Duration("for", m.cfg.ShutdownDelay))
			return
		}
		m.stopAll(m.cfg.StopSig, m.cfg.GracefulTimeout)
	case signals.FastStop:
		m.stopAll(syscall.SIGTERM, min(fastGrace, m.cfg.GracefulTimeout))
	case signals.ScaleUp:
		m.scale(m.cfg.Workers + 1)
	case signals.ScaleDown:
		m.scale(m.cfg.Workers - 1)
	case signals.ReopenLogs:
		for _, w := range m.workers {
			_ = w.proc.Signal(syscall.SIGUSR1)
		}
	default:
		m.log.Warn("signal not handled by this version", zap.String("signal", sig.String()))
	}
}

// scale changes the number of workers: new slots start at once, removed
// slots (the highest) are stopped gracefully.
func (m *master) scale(n int) {
	if n < 1 || m.phase != running {
		m.log.Warn("scale ignored", zap.Int("workers", n))
		return
	}
	m.cfg.Workers = n
	for slot := range m.restarts {
		if slot >= n {
			delete(m.restarts, slot)
		}
	}
	for _, w := range m.workers {
		if w.slot >= n && w.state != wStopping {
			m.stop(w, m.cfg.StopSig, m.cfg.GracefulTimeout)
		}
	}
	m.fillSlots()
	m.log.Info("scaled", zap.Int("workers", n))
}

// fillSlots starts a worker for every slot that has none.
func (m *master) fillSlots() {
	busy := map[int]bool{}
	for _, w := range m.workers {
		if w.state != wStopping {
			busy[w.slot] = true
		}
	}
	scheduled := map[int]bool{}
	for s := range m.restarts {
		scheduled[s] = true
	}
	for _, s := range freeSlots(m.cfg.Workers, busy, scheduled) {
		m.start(s)
	}
}

// onTick handles everything that is due at now.
func (m *master) onTick(now time.Time) {
	if m.phase == draining && !now.Before(m.drainUntil) {
		m.drainUntil = time.Time{}
		m.stopAll(m.cfg.StopSig, m.cfg.GracefulTimeout)
	}
	for slot, at := range m.restarts {
		if !now.Before(at) && m.phase != stopping && m.phase != booting {
			m.start(slot)
		}
	}
	for _, w := range m.workers {
		if w.deadline.IsZero() || now.Before(w.deadline) {
			continue
		}
		switch w.state {
		case wStarting:
			if m.cfg.Ready == ReadyDelay {
				m.markReady(w)
				continue
			}
			m.notReady(w)
		case wStopping:
			m.log.Warn("worker did not stop within the graceful timeout; killing its group", w.fields()...)
			_ = w.proc.Signal(syscall.SIGKILL)
			w.deadline = time.Time{}
		}
	}
}

// notReady handles a worker that missed its ready deadline.
func (m *master) notReady(w *worker) {
	err := fmt.Errorf("worker %d (pid %d) was not ready within %s: %s (--ready notify waits for READY=1 on $NOTIFY_SOCKET: make the app send it, or use --ready delay)",
		w.slot, w.proc.Pid, m.cfg.ReadyTimeout, m.commandLine())
	m.log.Warn("worker not ready in time; stopping it", append(w.fields(), zap.Duration("ready_timeout", m.cfg.ReadyTimeout))...)
	m.stop(w, m.cfg.StopSig, min(fastGrace, m.cfg.GracefulTimeout))
	w.failed = true
	if m.phase == booting {
		m.fail(err)
	}
}

// stop asks one worker to stop: sig to its group now, SIGKILL after grace.
func (m *master) stop(w *worker, sig syscall.Signal, grace time.Duration) {
	if w.state == wStopping && !w.deadline.IsZero() && w.deadline.Before(m.now().Add(grace)) {
		return
	}
	w.state, w.deadline = wStopping, m.now().Add(grace)
	if err := w.proc.Signal(sig); err != nil {
		m.log.Warn("signal worker", append(w.fields(), zap.Error(err))...)
	}
}

// stopAll moves to the stopping phase and stops every worker.
func (m *master) stopAll(sig syscall.Signal, grace time.Duration) {
	if m.phase != stopping {
		m.phase = stopping
		m.tellSystemd("STOPPING=1")
		m.log.Info("stopping", zap.Int("workers", len(m.workers)), zap.Duration("grace", grace))
	}
	clear(m.restarts)
	for _, w := range m.workers {
		m.stop(w, sig, grace)
	}
}

// fail records why the master gives up and stops everything fast.
func (m *master) fail(err error) {
	if m.failure == nil {
		m.failure = err
	}
	m.stopAll(syscall.SIGTERM, min(fastGrace, m.cfg.GracefulTimeout))
}

// snapshot lists the workers, ordered by slot then pid.
func (m *master) snapshot() []WorkerInfo {
	infos := make([]WorkerInfo, 0, len(m.workers))
	for _, w := range m.workers {
		infos = append(infos, WorkerInfo{Pid: w.proc.Pid, Slot: w.slot, Generation: w.gen, State: w.state.String(),
			Started: w.proc.Started, Requests: w.requests, Status: w.status})
	}
	slices.SortFunc(infos, func(a, b WorkerInfo) int { return cmp.Or(a.Slot-b.Slot, a.Pid-b.Pid) })
	return infos
}

func (m *master) count(s wstate) int {
	n := 0
	for _, w := range m.workers {
		if w.state == s {
			n++
		}
	}
	return n
}

func (m *master) commandLine() string { return strings.Join(m.cfg.Command, " ") }

func (m *master) tellSystemd(state string) {
	if err := workers.Notify(m.opts.Systemd, state); err != nil {
		m.log.Warn("notify systemd", zap.Error(err))
	}
}
