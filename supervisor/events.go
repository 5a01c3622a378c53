package supervisor

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// onExit handles a reaped worker.
func (m *master) onExit(ex workers.Exit) {
	w, ok := m.workers[ex.Pid]
	if !ok {
		return
	}
	delete(m.workers, ex.Pid)
	m.forgetDrain(ex.Pid)
	// Its group may outlive its leader: leave no orphan behind (invariant 4).
	_ = m.env.signal(w.proc, syscall.SIGKILL)
	m.requestsDone += w.requests
	m.metrics.exits.WithLabelValues(m.exitHow(w)).Inc()
	if !w.drainFrom.IsZero() {
		m.metrics.drain.Observe(ex.At.Sub(w.drainFrom).Seconds())
	}
	how := workers.Describe(ex.Status)
	if w.state == wStopping || m.phase == stopping {
		m.log.Info("worker stopped", append(w.fields(), zap.String("how", how))...)
		return
	}
	when := ""
	if w.state == wStarting {
		when = " before it was ready"
	}
	reason := fmt.Sprintf("worker %d (pid %d) %s%s: %s", w.slot, ex.Pid, how, when, commandLine(w.cfg))
	m.workerFailed(w.slot, w.gen, reason, ex.At.Sub(w.proc.Started), append(w.fields(), zap.String("how", how)), msgReplacing)
}

// exitHow is how a worker that just exited ended, for
// supervisor_worker_exits_total.
func (m *master) exitHow(w *worker) string {
	switch {
	case w.timedOut:
		return exitTimedOut
	case w.killed:
		return exitKilled
	case w.state == wStopping || m.phase == stopping:
		return exitStopped
	}
	return exitCrashed
}

// msgReplacing is workerFailed's log message for a worker that was
// running (or starting) and failed.
const msgReplacing = "worker exited unexpectedly; replacing it"

// workerFailed handles a worker that exited unexpectedly, missed its ready
// deadline, or could not be started: at boot the master gives up; in a
// forward rollout, a target worker's failure rolls the rollout back;
// otherwise a target slot is refilled after its crash backoff (logged as
// msg, with the reason and the wait), and an old generation's slot is left
// to the rollout.
func (m *master) workerFailed(slot, gen int, reason string, up time.Duration, fields []zap.Field, msg string) {
	switch {
	case m.phase == booting:
		m.fail(errors.New(reason))
	case m.rollout != nil && !m.rollout.rollback && !m.rollout.handover && gen == m.target:
		m.abort(reason)
	case gen == m.target:
		prior := priorCrashes(m.crashes[slot], up)
		m.crashes[slot] = prior + 1
		m.refill[slot] = startCrash
		delay := crashDelay(prior)
		m.restarts[slot] = m.env.now().Add(delay)
		m.log.Warn(msg, append(fields, zap.String("reason", reason), zap.Duration("after", delay))...)
	default:
		m.log.Warn("worker of an old generation exited; the rollout replaces it", append(fields, zap.String("reason", reason))...)
	}
}

// onNotifies applies a batch of sd_notify datagrams in order; it returns
// whether any of them counted for a worker.
func (m *master) onNotifies(batch []workers.Notification) bool {
	changed := false
	for _, n := range batch {
		changed = m.onNotify(n) || changed
	}
	return changed
}

// onNotify applies one sd_notify datagram. It counts for a worker when its
// sender is the worker or in the worker's process group (the group leader's
// pid is the group id). A datagram from anyone else is counted as ignored
// and changes nothing: onNotify then returns false.
func (m *master) onNotify(n workers.Notification) bool {
	w := m.workers[n.PID]
	if w == nil && n.PGID > 0 {
		w = m.workers[n.PGID]
	}
	if w == nil {
		m.metrics.notifyIgnored.Inc()
		m.log.Debug("notify from an unknown sender ignored", zap.Int("sender", n.PID))
		return false
	}
	if n.Msg.HasStatus {
		w.status = n.Msg.Status
	}
	if n.Msg.Ready && w.state == wStarting {
		m.markReady(w)
	}
	if n.Msg.Watchdog && w.state == wReady && w.cfg.Timeout > 0 {
		w.heartbeatBy = m.env.now().Add(w.cfg.Timeout)
	}
	if n.Msg.HasRequests {
		w.requests = n.Msg.Requests
		if w.maxRequests > 0 && w.requests >= w.maxRequests {
			m.recycle(w, recycleRequests, zap.Int64("requests", w.requests), zap.Int64("limit", w.maxRequests))
		}
	}
	if n.Msg.Stopping && w.state != wStopping {
		// Leaving on its own: its slot is free, so step replaces it now.
		m.log.Info("worker is leaving on its own; replacing it", w.fields()...)
		if w.gen == m.target && w.recycleReason == "" {
			m.refill[w.slot] = startReplace
		}
		w.setState(wStopping)
		w.drainFrom = m.env.now()
		w.killAt = m.env.now().Add(w.cfg.GracefulTimeout)
	}
	return true
}

// markReady moves a starting worker to ready and starts its heartbeat.
// The last worker the boot waits for makes the master ready, in this order:
// OnReady (the pid file), the "ready" log line, READY=1 to systemd; so
// whoever sees the log line or systemd's READY=1 finds the pid file.
func (m *master) markReady(w *worker) {
	if m.mustProbe(w) {
		w.delayedReadyAt = time.Time{} // said; the probe decides now
		m.startProbe(w)                // ready once probed (probe.go)
		return
	}
	now := m.env.now()
	w.setState(wReady)
	w.wasReady = true
	if w.reopenLogs {
		w.reopenLogs = false
		_ = m.env.signal(w.proc, syscall.SIGUSR1)
	}
	m.unnice(w)
	if w.cfg.Timeout > 0 {
		w.heartbeatBy = now.Add(w.cfg.Timeout)
	}
	m.metrics.boot.Observe(now.Sub(w.proc.Started).Seconds())
	m.log.Info("worker ready", append(w.fields(), zap.Duration("boot", now.Sub(w.proc.Started)))...)
	cfg := m.cfg()
	if m.phase == booting && m.upgrade != nil {
		m.commit()
		return
	}
	if m.phase != booting || m.countReady(m.target) < cfg.Workers {
		return
	}
	m.phase = running
	m.metrics.lastReloadOK.Set(unixSeconds(now))
	if m.opts.OnReady != nil {
		if err := m.opts.OnReady(); err != nil {
			m.log.Warn("after ready", zap.Error(err))
		}
	}
	m.log.Info("ready", zap.Int("workers", cfg.Workers), zap.Int("generation", m.stable), zap.String("command", commandLine(cfg)))
	m.tellSystemd(fmt.Sprintf("READY=1\nSTATUS=%d workers ready", cfg.Workers))
}

func (m *master) countReady(gen int) int {
	n := 0
	for _, w := range m.workers {
		if w.gen == gen && w.state == wReady {
			n++
		}
	}
	return n
}

func commandLine(cfg *Resolved) string { return strings.Join(cfg.Command, " ") }

// unixSeconds is t as a Prometheus timestamp gauge value.
func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
