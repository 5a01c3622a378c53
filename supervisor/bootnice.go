package supervisor

import (
	"fmt"
	"os"
	"time"

	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Boot at low priority (boot_nice): a new worker starts boot_nice nicer
// than the master, so that booting workers (a canary, a rollout, a stream
// of HUPs restarting one) take CPU only when the serving workers leave
// some; once ready, its whole process group (every thread) is set back to
// the master's nice value. Only the thread that forks the worker is
// reniced, never the master's others. Setting a worker back needs the
// right to raise a priority: root, or an RLIMIT_NICE that reaches the
// master's nice value; without it boot_nice is off, said once at start.

// bootNice is the master's side of boot_nice, fixed at start.
type bootNice struct {
	base int  // the master's nice value: where ready workers go back to
	ok   bool // the master may set a worker back to base
}

// probeBootNice finds the master's nice value and whether workers may be
// set back to it; why says what stops it, when it cannot.
func probeBootNice() (b bootNice, why string) {
	base, err := workers.Nice(0)
	if err != nil {
		return bootNice{}, err.Error()
	}
	b.base = base
	if os.Geteuid() == 0 {
		b.ok = true
		return b, ""
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NICE, &rl); err != nil {
		return b, "getrlimit RLIMIT_NICE: " + err.Error()
	}
	if floor := 20 - int(min(rl.Cur, 40)); floor <= base {
		b.ok = true
		return b, ""
	}
	return b, fmt.Sprintf("this user may not raise a worker back to nice %d (RLIMIT_NICE %d allows %d and up): run as root or raise RLIMIT_NICE", base, rl.Cur, 20-int(min(rl.Cur, 40)))
}

// niceFor is how much nicer a worker of cfg starts.
func (m *master) niceFor(cfg *Resolved) int {
	if !m.nice.ok {
		return 0
	}
	return cfg.BootNice
}

// reniceAgain is how long after setting a ready worker back the master
// does it once more. setpriority(PRIO_PGRP) sets the threads it finds; a
// thread being created at that moment by a still-niced one copied the
// boot priority before it joined the group, and is not found. Once that
// clone has finished (microseconds), a second call sets it too, and any
// thread created after the first call inherits the master's priority.
// TestBootNiceUntilReady caught such a thread left at nice 10.
const reniceAgain = 50 * time.Millisecond

// unnice sets a worker that started niced back to the master's priority,
// and schedules the second call (onTick, worker.reniceAt).
func (m *master) unnice(w *worker) {
	if !w.niced {
		return
	}
	w.niced = false
	m.renice(w)
	w.reniceAt = m.env.now().Add(reniceAgain)
}

// renice sets a worker's whole group to the master's nice value.
func (m *master) renice(w *worker) {
	if err := m.env.renice(w.proc, m.nice.base); err != nil {
		m.log.Warn("boot_nice: worker not set back to the master's priority", append(w.fields(), zap.Error(err))...)
	}
}
