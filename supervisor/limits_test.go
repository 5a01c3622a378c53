package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The counts nprocHeadroom works from, read from a fixed tree: the live
// /proc changes between two readings while other tests run, so only the
// parsing is checked there.
func TestNprocCounts(t *testing.T) {
	proc := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(proc, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	status := func(uid, threads int) string {
		return fmt.Sprintf("Name:\tapp\nUid:\t%d\t%d\t%d\t%d\nThreads:\t%d\n", uid, uid, uid, uid, threads)
	}
	write("loadavg", "0.00 0.01 0.05 2/40 4242\n")
	write("1/status", status(1000, 3))
	write("2/status", status(0, 5))
	write("17/status", status(1000, 1))
	write("18/status", "Uid:\t1001\t1000\t1000\t1000\nThreads:\t7\n")  // effective uid 1000: the real uid counts
	write("sys/status", status(1000, 9))                               // not a pid
	if err := os.Mkdir(filepath.Join(proc, "19"), 0o755); err != nil { // gone meanwhile
		t.Fatal(err)
	}
	if n := userThreads(proc, 1000); n != 4 {
		t.Errorf("threads of uid 1000: %d, want 4", n)
	}
	if n := userThreads(proc, 0); n != 5 {
		t.Errorf("threads of uid 0: %d, want 5", n)
	}
	if n, ok := systemThreads(proc); !ok || n != 40 {
		t.Errorf("system threads: %d (%v), want 40", n, ok)
	}
	write("loadavg", "0.00 0.01\n")
	if n, ok := systemThreads(proc); ok {
		t.Errorf("a short loadavg gave %d threads, want not ok", n)
	}

	if self := threadsOf("/proc/self/status", os.Getuid()); self < 1 {
		t.Errorf("threads of this process: %d, want at least 1", self)
	}
	if other := threadsOf("/proc/self/status", os.Getuid()+1); other != 0 {
		t.Errorf("threads of this process counted for another uid: %d", other)
	}
	if n, ok := systemThreads("/proc"); !ok || n < 1 {
		t.Errorf("system threads: %d (%v), want at least 1", n, ok)
	}
}

// Root is exempt from RLIMIT_NPROC, and so is a master far below it.
func TestNprocHeadroom(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() != 0 && lim.Cur != unix.RLIM_INFINITY && userThreads("/proc", os.Getuid())+nprocReserve > lim.Cur {
		t.Skip("this uid is close to its RLIMIT_NPROC already")
	}
	if err := nprocHeadroom(); err != nil {
		t.Fatal(err)
	}
}

// A failed fork's error names the limit behind it.
func TestLimitHint(t *testing.T) {
	wrap := func(e syscall.Errno) error { return fmt.Errorf("start /bin/app: %w", e) }
	if h := limitHint(wrap(syscall.EMFILE)); !strings.Contains(h, "RLIMIT_NOFILE") {
		t.Errorf("EMFILE: hint %q, want RLIMIT_NOFILE named", h)
	}
	if h := limitHint(wrap(syscall.EAGAIN)); !strings.Contains(h, "RLIMIT_NPROC") && !strings.Contains(h, "pids.max") {
		t.Errorf("EAGAIN: hint %q, want RLIMIT_NPROC or pids.max named", h)
	}
	if h := limitHint(errors.New("exec: no such file")); h != "" {
		t.Errorf("another error: hint %q, want none", h)
	}
}
