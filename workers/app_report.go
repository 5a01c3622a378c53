package workers

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// reportInterval is how often Serve may send X_REQUESTS (only when changed).
const reportInterval = 250 * time.Millisecond

// notifier sends the app side's sd_notify messages; a failed send is logged
// to stderr the first time only.
type notifier struct {
	addr   string // NOTIFY_SOCKET; "" sends nothing
	logged sync.Once
}

func (n *notifier) send(state string) {
	if err := Notify(n.addr, state); err != nil {
		n.logged.Do(func() {
			fmt.Fprintf(os.Stderr, "worker: %v (further notify errors are not shown)\n", err)
		})
	}
}

// startReports starts the goroutine that sends WATCHDOG=1 every watchdog
// (0: never) and X_REQUESTS=N from requests every reportInterval when it
// changed. The returned stop ends that goroutine and returns once it has
// ended. Without a notify socket nothing is started.
func (n *notifier) startReports(watchdog time.Duration, requests *atomic.Int64) (stop func()) {
	if n.addr == "" {
		return func() {}
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		reports := time.NewTicker(reportInterval)
		defer reports.Stop()
		var beats <-chan time.Time
		if watchdog > 0 {
			t := time.NewTicker(watchdog)
			defer t.Stop()
			beats = t.C
		}
		var sent int64
		for {
			select {
			case <-quit:
				return
			case <-beats:
				n.send("WATCHDOG=1")
			case <-reports.C:
				if r := requests.Load(); r != sent {
					n.send("X_REQUESTS=" + strconv.FormatInt(r, 10))
					sent = r
				}
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// watchdogInterval is half of WATCHDOG_USEC when the heartbeat is meant for
// process pid (WATCHDOG_PID unset or pid), as sd_watchdog_enabled(3)
// suggests, and at least 1ms; 0 when there is no heartbeat or a value is
// malformed.
func watchdogInterval(getenv func(string) string, pid int) time.Duration {
	usec, err := strconv.ParseInt(getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 || usec > int64(time.Duration(1<<62)/time.Microsecond) {
		return 0
	}
	if p := getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(pid) {
		return 0
	}
	return max(time.Duration(usec)*time.Microsecond/2, time.Millisecond)
}
