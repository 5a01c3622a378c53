package supervisor

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The counts nprocHeadroom works from: this process's threads are among
// its uid's, and those among the system's.
func TestNprocCounts(t *testing.T) {
	self := threadsOf("/proc/self/status", os.Getuid())
	if self < 1 {
		t.Fatalf("threads of this process: %d, want at least 1", self)
	}
	if other := threadsOf("/proc/self/status", os.Getuid()+1); other != 0 {
		t.Errorf("threads of this process counted for another uid: %d", other)
	}
	if n := threadsOf("/proc/no-such-pid/status", os.Getuid()); n != 0 {
		t.Errorf("a process gone meanwhile counts %d, want 0", n)
	}
	mine := userThreads(os.Getuid())
	total, ok := systemThreads()
	if !ok || mine < self || total < mine {
		t.Errorf("this process %d, its uid %d, the system %d (%v): want them in that order", self, mine, total, ok)
	}
}

// Root is exempt from RLIMIT_NPROC, and so is a master far below it.
func TestNprocHeadroom(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() != 0 && lim.Cur != unix.RLIM_INFINITY && userThreads(os.Getuid())+nprocReserve > lim.Cur {
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
