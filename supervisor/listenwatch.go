package supervisor

import (
	"time"

	"github.com/supervisor-dev/supervisor/workers"
)

// listenPoll is how often a starting worker is checked for listening.
const listenPoll = 50 * time.Millisecond

// listenSeen reports a starting worker seen listening (or why it could not
// be looked at).
type listenSeen struct {
	pid int
	err error
}

// watchListen polls workers.Listening for a starting worker until it is
// seen listening (reported on out) or stop is closed. /proc reads stay off
// the master's loop.
func watchListen(pid int, inodes []uint64, stop <-chan struct{}, out chan<- listenSeen) {
	t := time.NewTicker(listenPoll)
	defer t.Stop()
	for {
		ok, err := workers.Listening(pid, inodes)
		if ok || err != nil {
			select {
			case out <- listenSeen{pid: pid, err: err}:
			case <-stop:
			}
			return
		}
		select {
		case <-t.C:
		case <-stop:
			return
		}
	}
}

// watchesListen reports whether a readiness mode looks at /proc.
func watchesListen(mode string) bool { return mode == ReadyListen || mode == ReadyAuto }
