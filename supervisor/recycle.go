package supervisor

import (
	"time"

	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// memCheckEvery is how often worker RSS is sampled when max_memory is set.
const memCheckEvery = time.Second

// Recycle reasons, as logged and shown by status.
const (
	recycleRequests = "max_requests"
	recycleLifetime = "max_lifetime"
	recycleMemory   = "max_memory"
)

// drawLimit returns base plus a uniform draw from [0, jitter] (rnd(n) is
// uniform in [0, n)), or 0 when base is 0: the limit is off.
func drawLimit(base, jitter int64, rnd func(int64) int64) int64 {
	if base <= 0 {
		return 0
	}
	if jitter <= 0 {
		return base
	}
	return base + rnd(jitter+1)
}

// setLimits draws a new worker's recycling limits from its config.
func (m *master) setLimits(w *worker) {
	c := w.cfg
	w.maxRequests = drawLimit(int64(c.MaxRequests), int64(c.MaxRequestsJitter), m.env.rand)
	if life := drawLimit(int64(c.MaxLifetime), int64(c.MaxLifetimeJitter), m.env.rand); life > 0 {
		w.retireAt = w.proc.Started.Add(time.Duration(life))
	}
}

// recycle marks a ready worker due for replacement: step starts its
// successor in its slot and stops it once the successor is ready, within
// max_surge like a rollout (invariant 2).
func (m *master) recycle(w *worker, reason string, fields ...zap.Field) {
	if w.recycleReason != "" || w.state != wReady {
		return
	}
	w.recycleReason = reason
	m.metrics.recycles.WithLabelValues(reason).Inc()
	m.log.Info("recycling worker", append(append(w.fields(), zap.String("reason", reason)), fields...)...)
}

// sampleMemory starts one RSS sample of every worker's process group, off
// the loop, when max_memory is set and none is under way.
func (m *master) sampleMemory(now time.Time) {
	if m.sampling || now.Before(m.nextSample) {
		return
	}
	var pids []int
	for pid, w := range m.workers {
		if w.cfg.MaxRSS > 0 {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		m.nextSample = time.Time{}
		return
	}
	m.sampling, m.nextSample = true, now.Add(memCheckEvery)
	go func() { m.rss <- workers.GroupRSS(pids) }() // rss is buffered: never blocks
}

// onRSS applies a memory sample.
func (m *master) onRSS(rss map[int]int64) {
	m.sampling = false
	for pid, n := range rss {
		w := m.workers[pid]
		if w == nil {
			continue
		}
		w.rss = n
		if w.cfg.MaxRSS > 0 && n > w.cfg.MaxRSS {
			m.recycle(w, recycleMemory, zap.Int64("rss", n), zap.Int64("max", w.cfg.MaxRSS))
		}
	}
}
