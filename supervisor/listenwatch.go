package supervisor

import (
	"time"

	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// listenPoll is how often starting workers are checked for listening.
const listenPoll = 50 * time.Millisecond

// listenScan is the outcome of one workers.ListenScan over the starting
// workers in scanned (by pid, as they were when the scan began).
type listenScan struct {
	scanned   map[int]*worker
	listening []int
	errs      map[int]error
}

// watchesListen reports whether a readiness mode looks at /proc.
func watchesListen(mode string) bool { return mode == ReadyListen || mode == ReadyAuto }

// scanListen starts one scan, off the loop, of every starting worker that
// is watched for listen readiness, when none is under way and one is due:
// one /proc listing per tick however many workers start (DESIGN §3).
func (m *master) scanListen(now time.Time) {
	if m.scanning || now.Before(m.nextScan) {
		return
	}
	watch := map[int][]uint64{}
	scanned := map[int]*worker{}
	for pid, w := range m.workers {
		if w.state == wStarting && w.listenInodes != nil {
			watch[pid], scanned[pid] = w.listenInodes, w
		}
	}
	if len(watch) == 0 {
		m.nextScan = time.Time{}
		return
	}
	m.scanning, m.nextScan = true, now.Add(listenPoll)
	go func() { // listenScans is buffered 1: never blocks
		listening, errs := workers.ListenScan(watch)
		m.listenScans <- listenScan{scanned: scanned, listening: listening, errs: errs}
	}()
}

// onListenScan applies a scan: a worker seen listening is ready; one that
// could not be read is no longer watched, and waits for READY=1 or its
// ready timeout. A result counts only for the worker it was taken of (its
// pid may have been reaped, and reused, while the scan ran).
func (m *master) onListenScan(s listenScan) {
	m.scanning = false
	for pid, err := range s.errs {
		if w := m.workers[pid]; w == s.scanned[pid] && w != nil && w.state == wStarting {
			m.log.Warn("cannot watch the worker for listen readiness; waiting for READY=1 or the ready timeout", append(w.fields(), zap.Error(err))...)
			w.listenInodes = nil
		}
	}
	for _, pid := range s.listening {
		if w := m.workers[pid]; w == s.scanned[pid] && w != nil && w.state == wStarting {
			m.log.Debug("worker seen listening", w.fields()...)
			m.markReady(w)
		}
	}
}
