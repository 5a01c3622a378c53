package supervisor

import (
	"fmt"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// The loop's timers: what it waits for when no event comes, and what it
// does when one is due. Each is a named field, zero when not set:
//   - master.drainUntil: the end of shutdown_delay;
//   - master.nextSample: the next RSS sample (max_memory);
//   - master.nextScan: the next listen-readiness scan of starting workers;
//   - master.nextTrim: the end of a quiet spell, when memory is trimmed;
//   - master.dr.nextPoll: while a steered generation is paused, the next
//     reading of its queues (drain.go);
//   - master.probe.nextAt: a canary probe's next attempt (probe.go);
//   - master.restarts: a crashed slot's backoff;
//   - worker.readyBy, worker.delayedReadyAt: a starting worker's ready
//     timeout, or its --ready delay;
//   - worker.heartbeatBy: a ready worker's next WATCHDOG=1 (--timeout);
//   - worker.reniceAt: a ready worker's second setting back (boot_nice);
//   - worker.killAt: a stopping worker's SIGKILL;
//   - worker.retireAt: a ready worker's max_lifetime, unless it is already
//     being recycled.

// nextDeadline is the earliest time the loop must wake without an event.
// It runs every turn, so it allocates nothing.
func (m *master) nextDeadline() (time.Time, bool) {
	e, _ := earliest(m.drainUntil, m.nextSample, m.nextScan, m.nextTrim, m.dr.nextPoll)
	if p := m.probe; p != nil && !p.busy && p.fd < 0 {
		e, _ = earliest(e, p.nextAt)
	}
	for _, at := range m.restarts {
		e, _ = earliest(e, at)
	}
	for _, w := range m.workers {
		e, _ = earliest(e, w.readyBy, w.delayedReadyAt, w.heartbeatBy, w.killAt, w.reniceAt)
		if w.state == wReady && w.recycleReason == "" {
			e, _ = earliest(e, w.retireAt)
		}
	}
	return e, !e.IsZero()
}

// earliest returns the earliest non-zero time, and false when all are zero.
func earliest(ts ...time.Time) (time.Time, bool) {
	var e time.Time
	for _, t := range ts {
		if !t.IsZero() && (e.IsZero() || t.Before(e)) {
			e = t
		}
	}
	return e, !e.IsZero()
}

// reached reports whether the timer at is set and due at now.
func reached(at, now time.Time) bool { return !at.IsZero() && !now.Before(at) }

// onTick handles every timer that is due at now.
func (m *master) onTick(now time.Time) {
	if m.phase == draining && reached(m.drainUntil, now) {
		m.drainUntil = time.Time{}
		m.stopAll(m.cfg().StopSig, m.cfg().GracefulTimeout)
	}
	m.sampleMemory(now)
	m.scanListen(now)
	m.onTrimTick(now)
	for slot, at := range m.restarts {
		if reached(at, now) {
			delete(m.restarts, slot) // step starts it
		}
	}
	for _, w := range m.workers {
		if reached(w.reniceAt, now) {
			w.reniceAt = time.Time{}
			m.renice(w)
		}
		if w.state == wReady && reached(w.retireAt, now) {
			m.recycle(w, recycleLifetime, zap.Duration("age", now.Sub(w.proc.Started)))
		}
		switch {
		case reached(w.delayedReadyAt, now):
			m.markReady(w)
		case reached(w.readyBy, now):
			m.notReady(w)
		case reached(w.heartbeatBy, now):
			m.missedHeartbeat(w)
		case reached(w.killAt, now):
			m.log.Warn("worker did not stop within the graceful timeout; killing its group", w.fields()...)
			_ = m.env.signal(w.proc, syscall.SIGKILL)
			w.killAt, w.killed = time.Time{}, true
		}
	}
}

// missedHeartbeat handles a ready worker silent for longer than its
// timeout: SIGABRT to its group (a stack dump from most runtimes), SIGKILL
// after fastGrace, and it counts as failed, so it is replaced.
func (m *master) missedHeartbeat(w *worker) {
	reason := fmt.Sprintf("worker %d (pid %d) sent no WATCHDOG=1 for %s: %s (--timeout)", w.slot, w.proc.Pid, w.cfg.Timeout, commandLine(w.cfg))
	m.log.Warn("worker missed its heartbeat; killing it", append(w.fields(), zap.Duration("timeout", w.cfg.Timeout))...)
	m.metrics.heartbeatMisses.Inc()
	w.timedOut = true
	m.stop(w, syscall.SIGABRT, fastGrace)
	m.workerFailed(w.slot, w.gen, reason, m.env.now().Sub(w.proc.Started), w.fields(), msgReplacing)
}

// notReady handles a worker that missed its ready timeout: it is stopped,
// and counts as failed.
func (m *master) notReady(w *worker) {
	reason := m.probeFailure(w)
	if reason == "" {
		reason = fmt.Sprintf("worker %d (pid %d) was not ready within %s: %s (--ready %s %s)",
			w.slot, w.proc.Pid, w.cfg.ReadyTimeout, commandLine(w.cfg), w.cfg.Ready, readyHint(w.cfg.Ready))
	}
	w.timedOut = true
	m.stop(w, w.cfg.StopSig, min(fastGrace, w.cfg.GracefulTimeout))
	m.workerFailed(w.slot, w.gen, reason, m.env.now().Sub(w.proc.Started), w.fields(), msgReplacing)
}

// readyHint says what a readiness mode waited for and what to change.
func readyHint(mode string) string {
	switch mode {
	case ReadyNotify:
		return "waits for READY=1 on $NOTIFY_SOCKET: make the app send it, or use --ready delay"
	case ReadyListen:
		return "waits until the app accepts on an inherited socket (fd 3...): make it serve on the fds in LISTEN_FDS, or use --ready delay"
	case ReadyAuto:
		return "waits for READY=1 on $NOTIFY_SOCKET or the app accepting on an inherited socket (fd 3...): make it serve on LISTEN_FDS, or use --ready delay"
	}
	return "waited in vain: raise --ready-timeout or change --ready"
}
