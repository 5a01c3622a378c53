package signals

import (
	"os"
	"os/signal"
	"syscall"
)

// Intent is what the master should do about a signal.
type Intent int

const (
	None       Intent = iota
	Stop              // SIGTERM: shutdown_delay, graceful stop, exit 0
	FastStop          // SIGINT, SIGQUIT: stop workers at once, exit
	Reload            // SIGHUP: new generation, rolling replacement
	ReopenLogs        // SIGUSR1: reopen logs, forward to workers
	Upgrade           // SIGUSR2: replace the master binary
	ScaleUp           // SIGTTIN: one more worker
	ScaleDown         // SIGTTOU: one fewer worker
)

var names = [...]string{"none", "stop", "fast-stop", "reload", "reopen-logs", "upgrade", "scale-up", "scale-down"}

func (i Intent) String() string {
	if i < 0 || int(i) >= len(names) {
		return "unknown"
	}
	return names[i]
}

// Handled is the explicit list of signals the master handles.
var Handled = []os.Signal{
	syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTTIN, syscall.SIGTTOU,
}

// IntentOf maps a signal to its intent; None for a signal not in Handled.
func IntentOf(sig os.Signal) Intent {
	switch sig {
	case syscall.SIGTERM:
		return Stop
	case syscall.SIGINT, syscall.SIGQUIT:
		return FastStop
	case syscall.SIGHUP:
		return Reload
	case syscall.SIGUSR1:
		return ReopenLogs
	case syscall.SIGUSR2:
		return Upgrade
	case syscall.SIGTTIN:
		return ScaleUp
	case syscall.SIGTTOU:
		return ScaleDown
	}
	return None
}

// Notify starts relaying Handled signals to the returned buffered channel.
// Call it before the first child starts so no signal takes its default
// action. stop undoes it; after stop the channel gets no more values.
func Notify() (c <-chan os.Signal, stop func()) {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, Handled...)
	return ch, func() { signal.Stop(ch) }
}
