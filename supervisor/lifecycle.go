package supervisor

import (
	"cmp"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// The master's lifecycle: stopping a worker or all of them, giving up,
// the status it reports, and what it tells systemd.

// stop asks one worker to stop: sig to its group now, SIGKILL after grace.
// A worker already stopping is signalled again only to shorten its grace.
func (m *master) stop(w *worker, sig syscall.Signal, grace time.Duration) {
	at := m.env.now().Add(grace)
	if w.state == wStopping && !w.killAt.IsZero() && !at.Before(w.killAt) {
		return
	}
	w.setState(wStopping)
	w.killAt = at
	if w.drainFrom.IsZero() {
		w.drainFrom = m.env.now()
	}
	if err := m.env.signal(w.proc, sig); err != nil {
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
			m.metrics.reloads.WithLabelValues(reloadAbandoned).Inc()
			for _, c := range r.waiters {
				respond(c, Response{Error: "reload abandoned: the master is stopping"})
			}
			r.waiters = nil
		}
		m.stopUpgrade()
	}
	clear(m.restarts)
	m.dropDrains()
	for _, w := range m.workers {
		m.stop(w, sig, grace)
	}
}

// fail records why the master gives up and stops everything fast.
func (m *master) fail(err error) {
	if m.failure == nil {
		m.failure = err
	}
	if u := m.upgrade; u != nil && !u.old && !u.committed {
		m.tellParent(linkMsg{Fail: err.Error()})
	}
	m.stopAll(syscall.SIGTERM, min(fastGrace, m.cfg().GracefulTimeout))
}

// status is the master and its pool, for `supervisor status`, in slot,
// generation, pid order.
func (m *master) status() Status {
	st := m.unsortedStatus()
	sortPool(st.Pool)
	return st
}

// sortPool orders a pool by slot, generation, pid.
func sortPool(pool []WorkerInfo) {
	slices.SortFunc(pool, func(a, b WorkerInfo) int { return cmp.Or(a.Slot-b.Slot, a.Generation-b.Generation, a.Pid-b.Pid) })
}

// unsortedStatus is status with the pool in no order: what the loop
// publishes after every turn, where sorting hundreds of workers would
// cost more than the rest of the snapshot.
func (m *master) unsortedStatus() Status {
	pool := make([]WorkerInfo, 0, len(m.workers))
	ready := 0
	for _, w := range m.workers {
		if w.state == wReady {
			ready++
		}
		pool = append(pool, WorkerInfo{Pid: w.proc.Pid, Slot: w.slot, Generation: w.gen, State: w.state.String(),
			Started: w.proc.Started, Requests: w.requests, Status: w.status, RSS: w.rss, Recycle: w.recycleReason,
			Drain: m.drainOf(w.proc.Pid)})
	}
	st := Status{Pid: os.Getpid(), Phase: m.phase.String(), Generation: m.stable, Target: m.target,
		Workers: m.configs[m.target].Workers, Ready: ready, Started: m.started, LastReload: m.lastReload, Pool: pool,
		LastUpgrade: m.lastUpgrade}
	if u := m.upgrade; u != nil {
		st.Upgrade, st.Peer = u.describe(), u.peer
	}
	st.Steer = m.steerStatus()
	return st
}

func (m *master) tellSystemd(state string) {
	if err := workers.Notify(m.opts.SystemdNotify, state); err != nil {
		m.log.Warn("notify systemd", zap.Error(err))
	}
}
