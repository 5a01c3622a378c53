package main

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"golang.org/x/sys/unix"
)

// A worker gets 0, 1, 2 and its sockets, nothing else of what the master
// inherited: here a pipe as fd 3, /dev/null as fd 10 and another pipe as
// fd 251, as a shell or a CI runner may leave them.
func TestWorkerGetsOnlyItsSockets(t *testing.T) {
	t.Run("bind", func(t *testing.T) {
		t.Parallel()
		// The master's own metrics socket is not the workers' either.
		pid := startWithStrays(t, nil, "--bind", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
		fds := openFDs(t, pid)
		if got := slices.Sorted(maps.Keys(fds)); !slices.Equal(got, []int{0, 1, 2, 3}) || !strings.HasPrefix(fds[3], "socket:[") {
			t.Errorf("worker's fds %v, want 0, 1, 2 and its socket as 3", fds)
		}
	})
	t.Run("fd://5", func(t *testing.T) {
		t.Parallel()
		f, err := listenTCP(t).File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		sock := fmt.Sprintf("socket:[%d]", st.Sys().(*syscall.Stat_t).Ino)
		pid := startWithStrays(t, map[int]*os.File{5: f}, "--bind", "fd://5")
		fds := openFDs(t, pid)
		if got := slices.Sorted(maps.Keys(fds)); !slices.Equal(got, []int{0, 1, 2, 3}) || fds[3] != sock {
			t.Errorf("worker's fds %v, want 0, 1, 2 and the adopted %s as 3", fds, sock)
		}
	})
}

// startWithStrays starts a master with flags and one /bin/sleep worker, the
// stray descriptors and more (fd -> file) open, and returns the worker's
// pid once it runs /bin/sleep. The master is stopped when the test ends.
func startWithStrays(t *testing.T, more map[int]*os.File, flags ...string) int {
	t.Helper()
	r1, w1, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []*os.File{r1, w1, r2, w2, devnull} {
		t.Cleanup(func() { f.Close() })
	}
	extra := make([]*os.File, 251-2) // entry i is fd 3+i; nil: closed
	extra[3-3], extra[10-3], extra[251-3] = w1, devnull, r2
	for fd, f := range more {
		extra[fd-3] = f
	}
	cmd := command(t, append(flags, "--ready", "delay", "--ready-delay", "100ms", "--", "/bin/sleep", "60")...)
	cmd.ExtraFiles = extra
	p := startCmd(t, cmd)
	t.Cleanup(func() {
		p.signal(syscall.SIGTERM)
		p.wait(30 * time.Second)
	})
	p.ready()
	pid := 0
	testkit.WaitFor(t, 10*time.Second, "the worker to exec /bin/sleep", func() bool {
		for _, kid := range children(p.cmd.Process.Pid) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", kid))
			if argv0, _, _ := strings.Cut(string(b), "\x00"); argv0 == "/bin/sleep" {
				pid = kid
				return true
			}
		}
		return false
	})
	return pid
}

// openFDs returns the open descriptors of pid and what each names.
func openFDs(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fds := map[int]string{}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			t.Fatalf("%s/%s: not a descriptor", dir, e.Name())
		}
		fds[fd], _ = os.Readlink(dir + "/" + e.Name())
	}
	return fds
}

// Both ways mark an inheritable descriptor close-on-exec and leave 0-2 as
// they are. (Serial: the pipe is inheritable until marked.)
func TestCloseOnExecInherited(t *testing.T) {
	for _, tc := range []struct {
		name string
		mark func() error
	}{{"close_range", closeOnExecInherited}, {"/proc/self/fd", closeOnExecFromProc}} {
		var stdio [3]int
		for fd := range stdio {
			stdio[fd], _ = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		}
		var p [2]int
		if err := unix.Pipe2(p[:], 0); err != nil {
			t.Fatal(err)
		}
		err := tc.mark()
		for _, fd := range p {
			flags, ferr := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			if err != nil || ferr != nil || flags&unix.FD_CLOEXEC == 0 {
				t.Errorf("%s: fd %d flags %#x (%v), error %v; want FD_CLOEXEC and no error", tc.name, fd, flags, ferr, err)
			}
			unix.Close(fd)
		}
		for fd, want := range stdio {
			if got, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); got != want {
				t.Errorf("%s: fd %d flags %#x, want them unchanged (%#x)", tc.name, fd, got, want)
			}
		}
	}
}
