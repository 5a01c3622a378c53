package workers

import (
	"strconv"
	"strings"
	"time"
)

// inheritedOnly are variables a supervisor's own parent (systemd, a previous
// master) set for the supervisor. A worker that inherited NOTIFY_SOCKET could
// tell systemd the service is ready or stopping, so they are never passed on;
// nor is FDSTORE, the size of the service's fd store, which is the master's.
var inheritedOnly = []string{
	"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
	"WATCHDOG_USEC", "WATCHDOG_PID", "TABLEFLIP_HAS_PARENT_7DIU3", "FDSTORE",
}

// Contract holds the per-worker values of DESIGN §3.
type Contract struct {
	Names        []string // one per socket, in fd order
	NotifySocket string   // the master's notify socket address
	Slot         int
	Generation   int
	Watchdog     time.Duration // the heartbeat; 0: none (no WATCHDOG_USEC)
}

// Env builds a worker's environment: base without the inheritedOnly
// variables, then extra ("K=V", overriding base), then the contract
// variables. LISTEN_PID (and WATCHDOG_PID) are left to the exec shim,
// which alone knows the pid.
func Env(base, extra []string, c Contract) []string {
	env := make([]string, 0, len(base)+len(extra)+5)
	keep := func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		for _, drop := range inheritedOnly {
			if k == drop {
				return false
			}
		}
		for _, e := range extra {
			if ek, _, _ := strings.Cut(e, "="); ek == k {
				return false
			}
		}
		return true
	}
	for _, kv := range base {
		if keep(kv) {
			env = append(env, kv)
		}
	}
	env = append(env, extra...)
	names := make([]string, len(c.Names))
	for i, n := range c.Names {
		names[i] = FDName(n)
	}
	env = append(env,
		"LISTEN_FDS="+strconv.Itoa(len(c.Names)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		"NOTIFY_SOCKET="+c.NotifySocket,
		"SUPERVISOR_WORKER_SLOT="+strconv.Itoa(c.Slot),
		"SUPERVISOR_GENERATION="+strconv.Itoa(c.Generation),
	)
	if c.Watchdog > 0 {
		env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(c.Watchdog.Microseconds(), 10))
	}
	return env
}

// FDName makes name a valid systemd fd name: printable ASCII without ':'
// (the list separator), at most 255 bytes. A bind address such as
// "127.0.0.1:8080" becomes "127.0.0.1_8080".
func FDName(name string) string {
	b := []byte(name)
	for i, c := range b {
		if c == ':' || c < 0x21 || c > 0x7e {
			b[i] = '_'
		}
	}
	if len(b) > 255 {
		b = b[:255]
	}
	if len(b) == 0 {
		return "unknown"
	}
	return string(b)
}
