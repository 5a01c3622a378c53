package supervisor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/supervisor-dev/supervisor/workers"
	"golang.org/x/sys/unix"
)

// Resource limits met when forking a worker (DESIGN §4, "Limits").
//
// RLIMIT_NPROC counts every process and thread of the master's real uid,
// the master's own threads included, and the Go runtime cannot survive a
// thread it fails to create: it aborts the whole master ("runtime/cgo:
// pthread_create failed"), and every worker dies with it. Forking workers
// until fork(2) says EAGAIN would leave the master one thread away from
// that, so the master stops short of the limit: it does not fork while
// fewer than nprocReserve of its uid's processes and threads are left.

// nprocReserve is how many processes and threads under RLIMIT_NPROC the
// master leaves free for itself: each worker holds one locked thread of
// the master (workers.Start), and the runtime may need a few more at any
// time (a blocking syscall, GOMAXPROCS workers).
const nprocReserve = 8

// spawnWithinLimits is the real env's spawn: workers.Start, unless the
// master's uid is too close to its RLIMIT_NPROC.
func spawnWithinLimits(spec workers.Spec) (*workers.Process, error) {
	if err := nprocHeadroom(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Path, err)
	}
	return workers.Start(spec)
}

// nprocHeadroom fails when the master's real uid has fewer than
// nprocReserve processes and threads left under its RLIMIT_NPROC. The
// kernel does not apply the limit to root or to a process with
// CAP_SYS_RESOURCE or CAP_SYS_ADMIN, nor does this. The count is of what
// /proc shows (the master's pid namespace); the system's thread total in
// /proc/loadavg bounds it from above, so /proc is walked only when the
// limit is close to that total.
func nprocHeadroom() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &lim); err != nil || lim.Cur == unix.RLIM_INFINITY {
		return nil
	}
	uid := os.Getuid()
	if uid == 0 || hasCapability(unix.CAP_SYS_RESOURCE) || hasCapability(unix.CAP_SYS_ADMIN) {
		return nil
	}
	if total, ok := systemThreads("/proc"); ok && total+nprocReserve <= lim.Cur {
		return nil
	}
	n := userThreads("/proc", uid)
	if n+nprocReserve <= lim.Cur {
		return nil
	}
	return fmt.Errorf("not forked: uid %d has %d processes and threads of its RLIMIT_NPROC %d, and the master keeps %d free for its own threads: raise the limit (LimitNPROC=, ulimit -u) or run the workers as another --user",
		uid, n, lim.Cur, nprocReserve)
}

// hasCapability reports whether the calling thread has capability c in its
// effective set.
func hasCapability(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}

// systemThreads is the number of threads on the system: the field after
// the slash in proc's loadavg ("0.00 0.01 0.05 1/523 4242"). proc is
// "/proc" but in tests.
func systemThreads(proc string) (uint64, bool) {
	b, err := os.ReadFile(proc + "/loadavg")
	if err != nil {
		return 0, false
	}
	f := bytes.Fields(b)
	if len(f) < 4 {
		return 0, false
	}
	_, total, ok := bytes.Cut(f[3], []byte("/"))
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(string(total), 10, 64)
	return n, err == nil
}

// userThreads counts the threads of every process under proc (which is
// "/proc" but in tests) whose real uid is uid, as RLIMIT_NPROC does.
func userThreads(proc string, uid int) uint64 {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return 0
	}
	var n uint64
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		n += threadsOf(proc+"/"+e.Name()+"/status", uid)
	}
	return n
}

// threadsOf reads a /proc/PID/status file: its Threads count when its real
// uid is uid, else 0.
func threadsOf(path string, uid int) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0 // gone meanwhile
	}
	mine, threads := false, uint64(0)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		if v, ok := bytes.CutPrefix(line, []byte("Uid:")); ok {
			f := bytes.Fields(v)
			mine = len(f) > 0 && string(f[0]) == strconv.Itoa(uid)
		}
		if v, ok := bytes.CutPrefix(line, []byte("Threads:")); ok {
			threads, _ = strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		}
	}
	if !mine {
		return 0
	}
	return threads
}

// limitHint names the resource limit behind a failed fork, for the log
// line and the error: EMFILE is the master's RLIMIT_NOFILE, EAGAIN from
// fork the uid's RLIMIT_NPROC or the cgroup's pids.max.
func limitHint(err error) string {
	var lim unix.Rlimit
	switch {
	case errors.Is(err, syscall.EMFILE):
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
			return fmt.Sprintf(" (the master's RLIMIT_NOFILE is %d: raise LimitNOFILE=, ulimit -n)", lim.Cur)
		}
	case errors.Is(err, syscall.EAGAIN):
		if unix.Getrlimit(unix.RLIMIT_NPROC, &lim) == nil && lim.Cur != unix.RLIM_INFINITY {
			return fmt.Sprintf(" (uid %d reached its RLIMIT_NPROC %d, or the cgroup its pids.max: raise LimitNPROC= or TasksMax=)", os.Getuid(), lim.Cur)
		}
		return " (the cgroup's pids.max reached? raise TasksMax=)"
	}
	return ""
}
