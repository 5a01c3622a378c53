package supervisor

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/supervisor-dev/supervisor/signals"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// onCall answers a control request (supervisor status/reload/scale/stop).
func (m *master) onCall(c Call) {
	switch c.Command {
	case "status":
		st := m.status()
		c.Reply <- Response{OK: true, Status: &st}
	case "reload":
		m.reload(c.Reply, c.Wait)
	case "scale":
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
	case "stop":
		intent := signals.Stop
		if c.Fast {
			intent = signals.FastStop
		}
		m.onIntent(intent, "control")
		c.Reply <- Response{OK: true, Message: "stopping"}
	default:
		c.Reply <- Response{Error: fmt.Sprintf("unknown command %q: want status, reload, scale or stop", c.Command)}
	}
}

// onIntent acts on a signal (or the same request from the control socket).
func (m *master) onIntent(intent signals.Intent, from string) {
	m.log.Info("signal", zap.String("signal", from), zap.Stringer("intent", intent))
	cfg := m.cfg()
	switch intent {
	case signals.Stop:
		if m.phase == draining || m.phase == stopping {
			return
		}
		if cfg.ShutdownDelay > 0 && m.phase == running {
			m.phase, m.drainUntil = draining, m.now().Add(cfg.ShutdownDelay)
			m.tellSystemd("STOPPING=1")
			m.log.Info("shutdown delay: still serving", zap.Duration("for", cfg.ShutdownDelay))
			return
		}
		m.stopAll(cfg.StopSig, cfg.GracefulTimeout)
	case signals.FastStop:
		m.stopAll(syscall.SIGTERM, min(fastGrace, cfg.GracefulTimeout))
	case signals.Reload:
		m.reload(nil, false)
	case signals.ScaleUp, signals.ScaleDown:
		n := cfg.Workers + 1
		if intent == signals.ScaleDown {
			n = cfg.Workers - 1
		}
		if err := m.scale(n); err != nil {
			m.log.Warn("scale ignored", zap.Error(err))
		}
	case signals.ReopenLogs:
		for _, w := range m.workers {
			_ = w.proc.Signal(syscall.SIGUSR1)
		}
	default:
		m.log.Warn("signal not handled by this version", zap.String("signal", from))
	}
}

// scale sets the number of workers of the generation in force: step
// starts new slots and stops the highest ones. It lasts until the next
// reload, which takes the count from the config again.
func (m *master) scale(n int) error {
	switch {
	case n < 1:
		return fmt.Errorf("scale to %d: want at least 1 worker", n)
	case m.phase != running:
		return fmt.Errorf("scale refused: the master is %s", m.phase)
	case m.rollout != nil:
		return fmt.Errorf("scale refused: a reload is under way (generation %d)", m.target)
	}
	c := *m.cfg()
	surge, err := ResolveSurge(c.MaxSurge, n)
	if err != nil {
		return fmt.Errorf("scale to %d: %w", n, err)
	}
	c.Workers, c.Surge = n, surge
	m.configs[m.stable] = &c
	for slot := range m.restarts {
		if slot >= n {
			delete(m.restarts, slot)
		}
	}
	m.log.Info("scaled", zap.Int("workers", n))
	return nil
}

// stop asks one worker to stop: sig to its group now, SIGKILL after grace.
// A worker already stopping is signalled again only to shorten its grace.
func (m *master) stop(w *worker, sig syscall.Signal, grace time.Duration) {
	at := m.now().Add(grace)
	if w.state == wStopping && !w.deadline.IsZero() && !at.Before(w.deadline) {
		return
	}
	w.setState(wStopping)
	w.deadline = at
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
		if r := m.rollout; r != nil && !r.rollback {
			for _, c := range r.waiters {
				respond(c, Response{Error: "reload abandoned: the master is stopping"})
			}
			r.waiters = nil
		}
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
	m.stopAll(syscall.SIGTERM, min(fastGrace, m.cfg().GracefulTimeout))
}

// status is the master and its pool, for `supervisor status`.
func (m *master) status() Status {
	pool := make([]WorkerInfo, 0, len(m.workers))
	ready := 0
	for _, w := range m.workers {
		if w.state == wReady {
			ready++
		}
		pool = append(pool, WorkerInfo{Pid: w.proc.Pid, Slot: w.slot, Generation: w.gen, State: w.state.String(),
			Started: w.proc.Started, Requests: w.requests, Status: w.status, RSS: w.rss, Recycle: w.due})
	}
	slices.SortFunc(pool, func(a, b WorkerInfo) int { return cmp.Or(a.Slot-b.Slot, a.Generation-b.Generation, a.Pid-b.Pid) })
	return Status{Pid: os.Getpid(), Phase: m.phase.String(), Generation: m.stable, Target: m.target,
		Workers: m.configs[m.target].Workers, Ready: ready, Started: m.started, LastReload: m.lastReload, Pool: pool}
}

func (m *master) tellSystemd(state string) {
	if err := workers.Notify(m.opts.Systemd, state); err != nil {
		m.log.Warn("notify systemd", zap.Error(err))
	}
}
