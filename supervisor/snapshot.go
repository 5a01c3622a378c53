package supervisor

import (
	"sync"
	"time"

	"github.com/supervisor-dev/supervisor/workers"
)

// snapshot is the master's state as the loop last published it: what
// /metrics, /health/ready and /status read without asking the loop.
type snapshot struct {
	status   Status // as `status --json`, but the pool unsorted and without RSS (both done at read time)
	ready    bool   // /health/ready: running, at least `workers` ready
	requests int64  // X_REQUESTS totals, exited workers included
}

// publish stores the state as it is after this turn of the loop and answers
// every liveness check waiting: a turn is proof the loop answers.
func (m *master) publish() {
	st := m.unsortedStatus()
	reqs := m.requestsDone
	for _, w := range st.Pool {
		reqs += w.Requests
	}
	ready := st.Ready + m.remoteReady() // a new master taking over counts the old one's too
	m.metrics.snap.Store(&snapshot{status: st, ready: m.phase == running && ready >= st.Workers, requests: reqs})
	m.metrics.live.answer()
}

// rssEvery bounds how often a scrape or /status samples worker memory.
const rssEvery = time.Second

// rssCache samples the workers' process-group RSS off the loop for scrapes
// and /status: at most once per rssEvery, concurrent readers sharing one
// sample (a burst of scrapes costs one /proc walk).
type rssCache struct {
	mu  sync.Mutex
	at  time.Time
	rss map[int]int64 // by worker pid (process group)
}

// get returns the RSS of each worker in pool, by pid, from a sample at most
// rssEvery old; a worker newer than the sample is missing from it.
func (c *rssCache) get(pool []WorkerInfo) map[int]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rss == nil || time.Since(c.at) >= rssEvery {
		c.rss, c.at = workers.GroupRSS(poolPids(pool)), time.Now()
	}
	return c.rss
}

// bySlot sums the RSS of each slot's workers (more than one during a
// rollout or a recycle): slot is the only per-worker label (no pids).
func (c *rssCache) bySlot(pool []WorkerInfo) map[int]int64 {
	rss := c.get(pool)
	out := map[int]int64{}
	for _, w := range pool {
		if n, ok := rss[w.Pid]; ok {
			out[w.Slot] += n
		}
	}
	return out
}

// withRSS returns st with each worker's RSS from a sample, and its pool
// (a copy) sorted as status sorts it.
func withRSS(st Status, rss map[int]int64) Status {
	st.Pool = append([]WorkerInfo(nil), st.Pool...)
	sortPool(st.Pool)
	for i, w := range st.Pool {
		if n, ok := rss[w.Pid]; ok {
			st.Pool[i].RSS = n
		}
	}
	return st
}

// liveness is /health/live's question to the loop: does it still take
// events? A check wakes the loop (wake, one token at most) and waits for
// the end of its next turn (answer). Concurrent checks share one wait, so a
// burst of probes is one event for the loop, and nothing is left blocked
// when the loop is stuck: the token waits in wake, the checks time out.
type liveness struct {
	wake chan struct{} // buffered 1; the loop receives from it

	mu      sync.Mutex
	waiting chan struct{} // closed by the next answer; nil when no check waits
	stopped bool          // the loop has ended: checks fail at once
}

func newLiveness() *liveness { return &liveness{wake: make(chan struct{}, 1)} }

// check reports whether the loop ends a turn within timeout.
func (l *liveness) check(timeout time.Duration) bool {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return false
	}
	if l.waiting == nil {
		l.waiting = make(chan struct{})
		select {
		case l.wake <- struct{}{}:
		default: // a wake is already pending
		}
	}
	w := l.waiting
	l.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w:
		l.mu.Lock()
		defer l.mu.Unlock()
		return !l.stopped
	case <-t.C:
		return false
	}
}

// answer releases every waiting check: called by the loop after each turn.
func (l *liveness) answer() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waiting != nil {
		close(l.waiting)
		l.waiting = nil
	}
}

// stop fails every check from now on, waiting ones included.
func (l *liveness) stop() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
	l.answer()
}
