package signals

import (
	"os"
	"os/signal"
	"syscall"
)

// Intent is what the master should do about a signal.
type Intent int

// The intents, one per row of table. The master's handler for each is in
// supervisor/intents.go.
const (
	None       Intent = iota
	Stop              // shutdown_delay, then a graceful stop, exit 0
	FastStop          // stop workers at once, exit
	Reload            // new generation, rolling replacement
	ReopenLogs        // forward SIGUSR1 to every worker
	Upgrade           // replace the master binary (not built yet: logged and ignored)
	ScaleUp           // one more worker
	ScaleDown         // one fewer worker
)

// table is the master's whole signal vocabulary: every signal it handles,
// what it means, and the intent's name. Handled, IntentOf and String derive
// from it, so a new signal is one row here plus its handler in the master.
// An intent with several signals has one row per signal, the same name in
// each.
var table = []struct {
	sig    syscall.Signal
	intent Intent
	name   string
}{
	{syscall.SIGTERM, Stop, "stop"},
	{syscall.SIGINT, FastStop, "fast-stop"},
	{syscall.SIGQUIT, FastStop, "fast-stop"},
	{syscall.SIGHUP, Reload, "reload"},
	{syscall.SIGUSR1, ReopenLogs, "reopen-logs"},
	{syscall.SIGUSR2, Upgrade, "upgrade"},
	{syscall.SIGTTIN, ScaleUp, "scale-up"},
	{syscall.SIGTTOU, ScaleDown, "scale-down"},
}

// String is the intent's name in table: "reload", "fast-stop"; "none" for
// None and "unknown" for a value not in table.
func (i Intent) String() string {
	if i == None {
		return "none"
	}
	for _, row := range table {
		if row.intent == i {
			return row.name
		}
	}
	return "unknown"
}

// Handled is the explicit list of signals the master handles, in table
// order.
var Handled = func() []os.Signal {
	sigs := make([]os.Signal, len(table))
	for i, row := range table {
		sigs[i] = row.sig
	}
	return sigs
}()

// IntentOf maps a signal to its intent; None for a signal not in Handled.
func IntentOf(sig os.Signal) Intent {
	for _, row := range table {
		if row.sig == sig {
			return row.intent
		}
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
