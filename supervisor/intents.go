package supervisor

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/supervisor-dev/supervisor/signals"
	"go.uber.org/zap"
)

// onIntent acts on a signal (or the same request from the control socket):
// the handler of each intent in signals' table.
func (m *master) onIntent(intent signals.Intent, from string) {
	m.log.Info("signal", zap.String("signal", from), zap.Stringer("intent", intent))
	cfg := m.cfg()
	switch intent {
	case signals.Stop:
		if m.phase == draining || m.phase == stopping {
			return
		}
		if cfg.ShutdownDelay > 0 && m.phase == running {
			m.phase, m.drainUntil = draining, m.env.now().Add(cfg.ShutdownDelay)
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
	case signals.Upgrade:
		m.startUpgrade(nil, false)
	case signals.ReopenLogs:
		// A worker that was never ready may not handle USR1 yet (the exec
		// shim, or an app before it sets its handlers: the default action
		// ends it, and a canary's end rolls a reload back); it gets the
		// signal once it is ready.
		for _, w := range m.workers {
			if w.wasReady {
				_ = m.env.signal(w.proc, syscall.SIGUSR1)
			} else {
				w.reopenLogs = true
			}
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
	case m.upgrade != nil:
		return errors.New("scale refused: a master upgrade is under way")
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
