package workers

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"golang.org/x/sys/unix"
)

func TestParseSyscall(t *testing.T) {
	for _, tc := range []struct {
		in        string
		nr        int
		args      [6]uint64
		in_       bool
		wantError bool
	}{
		{in: "288 0x3 0x0 0x0 0x80000 0x0 0x0 0x7ffd8e0 0x7f1e2a\n", nr: 288, args: [6]uint64{3, 0, 0, 0x80000, 0, 0}, in_: true},
		{in: "232 0x4 0x7fa69b250390 0x2 0xbb8 0x0 0x0 0x7ffcd3381098 0x7fa69c126ef3", nr: 232,
			args: [6]uint64{4, 0x7fa69b250390, 2, 0xbb8, 0, 0}, in_: true},
		{in: "running\n", nr: -1},
		{in: "-1 0x7ffcd3381098 0x7fa69c126ef3\n", nr: -1},
		{in: "-1 0x0 0x0", nr: -1},
		{in: "", wantError: true},
		{in: "288 0x3 0x0", wantError: true},
		{in: "x 0x3 0x0 0x0 0x0 0x0 0x0 0x0 0x0", wantError: true},
		{in: "288 0x3 zz 0x0 0x0 0x0 0x0 0x0 0x0", wantError: true},
	} {
		nr, args, in, err := parseSyscall([]byte(tc.in))
		if tc.wantError {
			if err == nil {
				t.Errorf("parseSyscall(%q) = %d, want an error", tc.in, nr)
			}
			continue
		}
		if err != nil || nr != tc.nr || args != tc.args || in != tc.in_ {
			t.Errorf("parseSyscall(%q) = %d %x %v %v, want %d %x %v", tc.in, nr, args, in, err, tc.nr, tc.args, tc.in_)
		}
	}
}

func TestParseEpollTargets(t *testing.T) {
	asyncio := "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n" +
		"tfd:        3 events:       19 data:     7fa600000003  pos:0 ino:70103 sdev:9\n" +
		"tfd:        5 events:       19 data:                5  pos:0 ino:70104 sdev:9\n"
	for _, tc := range []struct {
		name, in  string
		want      []epollTarget
		wantError bool
	}{
		{name: "asyncio", in: asyncio, want: []epollTarget{{3, 0x19, 0x70103}, {5, 0x19, 0x70104}}},
		{name: "go", in: "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n" +
			"tfd:        7 events: 80002005 data:     7f0c1a2b3c4d  pos:0 ino:3a2f sdev:8",
			want: []epollTarget{{7, 0x80002005, 0x3a2f}}},
		{name: "no ino (old kernel)", in: "tfd:        3 events:       19 data:                3",
			want: []epollTarget{{3, 0x19, 0}}},
		{name: "empty set", in: "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n"},
		{name: "bad ino", in: "tfd: 3 events: 19 data: 3 pos:0 ino:xyz sdev:8", wantError: true},
		{name: "bad events", in: "tfd: 3 events: zz data: 3 pos:0 ino:1 sdev:8", wantError: true},
		{name: "no events", in: "tfd: 3 data: 3 pos:0 ino:1 sdev:8", wantError: true},
		{name: "bad tfd", in: "tfd: x events: 19", wantError: true},
	} {
		got, err := parseEpollTargets([]byte(tc.in))
		if tc.wantError {
			if err == nil {
				t.Errorf("%s: got %+v, want an error", tc.name, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %+v %v, want %+v", tc.name, got, err, tc.want)
		}
	}
}

func TestParseSocketLink(t *testing.T) {
	for in, want := range map[string]uint64{
		"socket:[459011]": 459011, "socket:[0]": 0, "socket:[18446744073709551615]": 1<<64 - 1,
		"socket:[]": 0, "socket:[12": 0, "socket:12]": 0, "anon_inode:[eventpoll]": 0, "pipe:[459966]": 0,
		"/tmp/socket:[1]": 0, "socket:[-1]": 0,
	} {
		got, ok := parseSocketLink([]byte(in))
		if got != want || ok != (want != 0 || in == "socket:[0]") {
			t.Errorf("parseSocketLink(%q) = %d %v, want %d", in, got, ok, want)
		}
	}
}

// listenSocket returns a raw listening TCP socket on 127.0.0.1 and its inode.
func listenSocket(tb testing.TB, flags int) (int, uint64) {
	tb.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|flags, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		tb.Fatal(err)
	}
	ino, err := SocketInode(fd)
	if err != nil {
		tb.Fatal(err)
	}
	return fd, ino
}

func TestSocketInode(t *testing.T) {
	for _, flags := range []int{0, unix.SOCK_NONBLOCK} {
		fd, _ := listenSocket(t, flags)
		before, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := SocketInode(fd)
		if err != nil {
			t.Fatal(err)
		}
		link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		if err != nil {
			t.Fatal(err)
		}
		if want := "socket:[" + strconv.FormatUint(got, 10) + "]"; link != want {
			t.Errorf("SocketInode = %d, but /proc/self/fd/%d -> %q", got, fd, link)
		}
		after, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if after != before {
			t.Errorf("F_GETFL %#x before SocketInode, %#x after", before, after)
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	raw, _ := r.SyscallConn()
	_ = raw.Control(func(fd uintptr) {
		if ino, err := SocketInode(int(fd)); err == nil {
			t.Errorf("SocketInode(pipe) = %d, want an error", ino)
		}
	})
	if _, err := SocketInode(-1); err == nil {
		t.Error("SocketInode(-1): want an error")
	}
}

// heldProc is a process started with a listening socket as its fd 3.
type heldProc struct {
	pid  int
	done chan struct{} // closed once it has exited and been waited for
}

// startHolding starts argv with fd as its fd 3, in its own process group
// when group is set. Cleanup kills it (its group) and waits for it.
func startHolding(tb testing.TB, fd int, group bool, env []string, argv ...string) heldProc {
	tb.Helper()
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "listener") // Fd() in exec is fine here: a test socket
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: group}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := heldProc{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		if group {
			_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		}
		_ = cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			tb.Errorf("pid %d not gone 10s after SIGKILL", p.pid)
		}
	})
	return p
}

// waitListening polls Listening until it is true, the process exits, or 15s
// pass.
func waitListening(t *testing.T, p heldProc, inodes []uint64) listenEvidence {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		ev, err := seeListener(p.pid, inodes)
		if err != nil {
			t.Fatalf("Listening(%d): %v", p.pid, err)
		}
		if ev.How != "" {
			if ok, err := Listening(p.pid, inodes); !ok || err != nil {
				t.Errorf("Listening(%d) = %v, %v after seeListener said %+v", p.pid, ok, err, ev)
			}
			return ev
		}
		select {
		case <-p.done:
			t.Fatalf("pid %d exited before it was seen listening", p.pid)
		case <-deadline:
			t.Fatalf("pid %d not seen listening within 15s", p.pid)
		case <-time.After(20 * time.Millisecond): // poll interval
		}
	}
}

// Syscalls that say a test process reached the wait it will stay in.
var sleepSyscalls = map[string]map[string]int{
	"amd64": {"nanosleep": 35, "clock_nanosleep": 230, "select": 23, "pselect6": 270, "poll": 7, "ppoll": 271,
		"epoll_wait": 232, "epoll_pwait": 281, "epoll_pwait2": 441, "wait4": 61},
	"arm64": {"nanosleep": 101, "clock_nanosleep": 115, "pselect6": 72, "ppoll": 73, "epoll_pwait": 22,
		"epoll_pwait2": 441, "wait4": 260},
}[runtime.GOARCH]

// waitBlockedIn waits until pid's main thread is blocked in one of the named
// syscalls, so that an assertion of absence looks at the final state.
func waitBlockedIn(t *testing.T, p heldProc, names ...string) {
	t.Helper()
	if sleepSyscalls == nil {
		t.Skipf("no syscall numbers for %s", runtime.GOARCH)
	}
	deadline := time.After(15 * time.Second)
	for {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/syscall")
		nr, _, in, _ := parseSyscall(b)
		for _, n := range names {
			if in && sleepSyscalls[n] == nr {
				return
			}
		}
		select {
		case <-p.done:
			t.Fatalf("pid %d exited", p.pid)
		case <-deadline:
			t.Fatalf("pid %d not blocked in %v within 15s; last %q", p.pid, names, b)
		case <-time.After(20 * time.Millisecond): // poll interval
		}
	}
}

// python3 returns the real interpreter (not a pyenv shim), or skips.
var python3 = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("python3", "-c", "import sys; print(sys.executable)").Output()
	return strings.TrimSpace(string(out)), err
})

func needPython(t testing.TB) string {
	t.Helper()
	p, err := python3()
	if err != nil || p == "" {
		t.Skipf("python3: %v", err)
	}
	return p
}

const (
	pyAccept  = "import socket; s = socket.socket(fileno=3); s.accept()"
	pyAsyncio = `import asyncio, socket
async def main():
    srv = await asyncio.start_server(lambda r, w: None, sock=socket.socket(fileno=3))
    await srv.serve_forever()
asyncio.run(main())`
)

// Each way of waiting for connections is seen, by the evidence it leaves.
func TestListeningSeesWaiters(t *testing.T) {
	testkit.MaySkip("listen-fd3") // the Go case below; the test skips without python3
	py := needPython(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		argv []string
		env  []string
		how  []string
	}{
		{"blocking accept", []string{py, "-c", pyAccept}, nil, []string{"accept", "accept4"}},
		{"select", []string{py, "-c", "import select, socket; s = socket.socket(fileno=3); select.select([s], [], [])"},
			nil, []string{"select", "pselect6"}},
		{"poll", []string{py, "-c", "import os, select, socket; s = socket.socket(fileno=3); r, w = os.pipe(); p = select.poll(); " +
			"p.register(r, select.POLLIN); p.register(s, select.POLLIN); p.poll()"}, nil, []string{"poll", "ppoll"}},
		{"asyncio", []string{py, "-c", pyAsyncio}, nil, []string{"epoll"}},
		{"node", []string{"node", "-e", `require("net").createServer(() => {}).listen({fd: 3})`}, nil, []string{"epoll"}},
		{"go net.FileListener", []string{exe}, []string{testkit.Use("listen-fd3")}, []string{"epoll"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath(tc.argv[0]); err != nil {
				t.Skip(err)
			}
			fd, ino := listenSocket(t, 0)
			before, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			p := startHolding(t, fd, true, tc.env, tc.argv...)
			ev := waitListening(t, p, []uint64{12345, ino})
			if ev.Pid != p.pid || !slices.Contains(tc.how, ev.How) {
				t.Errorf("seen %+v, want pid %d by one of %v", ev, p.pid, tc.how)
			}
			if tc.name == "blocking accept" { // Listening itself leaves the socket alone
				if after, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); after != before {
					t.Errorf("F_GETFL %#x before, %#x after", before, after)
				}
			}
		})
	}
}

// A process that holds the socket but waits for something else is not
// listening, however it waits.
func TestListeningNotForOtherWaits(t *testing.T) {
	py := needPython(t)
	for _, tc := range []struct {
		name  string
		argv  []string
		waits []string
	}{
		{"sleep", []string{"sleep", "60"}, []string{"nanosleep", "clock_nanosleep"}},
		{"select on a pipe", []string{py, "-c", "import os, select, socket; s = socket.socket(fileno=3); " +
			"r, w = os.pipe(); select.select([r], [], [])"}, []string{"select", "pselect6"}},
		{"poll for output", []string{py, "-c", "import os, select, socket; s = socket.socket(fileno=3); " +
			"r, w = os.pipe(); p = select.poll(); p.register(r, select.POLLIN); p.register(s, select.POLLOUT); p.poll()"},
			[]string{"poll", "ppoll"}},
		{"epoll for output", []string{py, "-c", "import selectors, socket; s = socket.socket(fileno=3); " +
			"sel = selectors.EpollSelector(); sel.register(s, selectors.EVENT_WRITE); sel.select()"},
			[]string{"epoll_wait", "epoll_pwait", "epoll_pwait2"}},
		{"asyncio without it", []string{py, "-c", "import asyncio, socket; s = socket.socket(fileno=3); " +
			"asyncio.run(asyncio.sleep(60))"}, []string{"epoll_wait", "epoll_pwait", "epoll_pwait2"}},
		{"shell waiting for a child", []string{"sh", "-c", "sleep 60; true"}, []string{"wait4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd, ino := listenSocket(t, 0)
			p := startHolding(t, fd, true, nil, tc.argv...)
			waitBlockedIn(t, p, tc.waits...)
			// An assertion of absence: watch a bounded window (~300 ms) once
			// the process sits in its final wait.
			for range 6 {
				ev, err := seeListener(p.pid, []uint64{ino})
				if err != nil || ev.How != "" {
					t.Fatalf("seeListener = %+v, %v; want nothing", ev, err)
				}
				select {
				case <-p.done:
					t.Fatal("exited")
				case <-time.After(50 * time.Millisecond): // observation window step
				}
			}
		})
	}
}

// The app under a shell wrapper is a child in the wrapper's process group.
func TestListeningThroughWrapper(t *testing.T) {
	py := needPython(t)
	fd, ino := listenSocket(t, 0)
	p := startHolding(t, fd, true, nil, "sh", "-c", py+` -c "`+pyAccept+`"; true`)
	ev := waitListening(t, p, []uint64{ino})
	if ev.Pid == p.pid || !slices.Contains([]string{"accept", "accept4"}, ev.How) {
		t.Errorf("seen %+v, want a child of the wrapper %d in accept", ev, p.pid)
	}
	if pg, _ := unix.Getpgid(ev.Pid); pg != p.pid {
		t.Errorf("the listener %d is in group %d, want %d", ev.Pid, pg, p.pid)
	}
}

// Exited processes, reaped or not, are not listening and not an error.
func TestListeningGone(t *testing.T) {
	_, ino := listenSocket(t, 0)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if ok, err := Listening(cmd.Process.Pid, []uint64{ino}); ok || err != nil {
		t.Errorf("Listening(reaped) = %v, %v; want false, nil", ok, err)
	}

	zombie := exec.Command("true")
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	defer zombie.Wait()
	// Nothing waits for it before the deferred Wait: not alive is a zombie.
	testkit.WaitFor(t, 10*time.Second, "a zombie", func() bool { return !testkit.Alive(zombie.Process.Pid) })
	if ok, err := Listening(zombie.Process.Pid, []uint64{ino}); ok || err != nil {
		t.Errorf("Listening(zombie) = %v, %v; want false, nil", ok, err)
	}

	if _, err := Listening(0, []uint64{ino}); err == nil {
		t.Error("Listening(0): want an error")
	}
	if ok, err := Listening(os.Getpid(), nil); ok || err != nil {
		t.Errorf("Listening(self, no inodes) = %v, %v; want false, nil", ok, err)
	}
}

// listenFD3Helper is a Go app: net.FileListener on fd 3, then Accept.
func listenFD3Helper() int {
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return 2
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 3
		}
		c.Close()
	}
}

// listeningOfHelper prints Listening($LISTENING_PID, [$LISTENING_INO]) as JSON.
func listeningOfHelper() int {
	pid, _ := strconv.Atoi(os.Getenv("LISTENING_PID"))
	ino, _ := strconv.ParseUint(os.Getenv("LISTENING_INO"), 10, 64)
	ok, err := Listening(pid, []uint64{ino})
	res := map[string]any{"ok": ok, "perm": errors.Is(err, fs.ErrPermission)}
	if err != nil {
		res["err"] = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// Without the right to read another user's /proc files, Listening says so.
func TestListeningPermission(t *testing.T) {
	testkit.MaySkip("listening-of")
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a helper as nobody")
	}
	fd, ino := listenSocket(t, 0)
	p := startHolding(t, fd, true, nil, "sleep", "60")

	// The test binary lives in a 0700 directory: run a copy nobody can run.
	bin := testkit.PublicBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := testkit.Command(t, ctx, "listening-of", "LISTENING_PID="+strconv.Itoa(p.pid),
		"LISTENING_INO="+strconv.FormatUint(ino, 10))
	cmd.Path, cmd.Args, cmd.Dir = bin, []string{bin}, filepath.Dir(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper as nobody: %v", err)
	}
	var got struct {
		OK   bool
		Perm bool
		Err  string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("helper said %q: %v", out, err)
	}
	if got.OK || !got.Perm || !strings.Contains(got.Err, "root") {
		t.Errorf("Listening as nobody = %+v; want false and a permission error that says what is needed", got)
	}
	t.Logf("as nobody: %s", got.Err)
}

// BenchmarkListening measures one call for a group of 1 and of 5 processes,
// not listening (every member read in full) and listening.
func BenchmarkListening(b *testing.B) {
	py := needPython(b)
	for _, bc := range []struct {
		name    string
		argv    []string
		members int
	}{
		{"1/not-listening", []string{"sleep", "60"}, 1},
		{"1/accept", []string{py, "-c", pyAccept}, 1},
		{"1/asyncio", []string{py, "-c", pyAsyncio}, 1},
		{"5/not-listening", []string{"sh", "-c", "sleep 60 & sleep 60 & sleep 60 & sleep 60; true"}, 5},
		{"5/accept-in-last", []string{"sh", "-c", "sleep 60 & sleep 60 & sleep 60 & " + py + ` -c "` + pyAccept + `"; true`}, 5},
	} {
		b.Run(bc.name, func(b *testing.B) {
			fd, ino := listenSocket(b, 0)
			p := startHolding(b, fd, true, nil, bc.argv...)
			want := !strings.HasSuffix(bc.name, "not-listening")
			deadline := time.Now().Add(15 * time.Second)
			for {
				m, _ := groupOf(p.pid)
				ok, _ := Listening(p.pid, []uint64{ino})
				if len(m) == bc.members && ok == want {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("group %v, listening %v; want %d members, listening %v", m, ok, bc.members, want)
				}
				time.Sleep(20 * time.Millisecond) // poll interval
			}
			b.ResetTimer()
			for b.Loop() {
				if ok, err := Listening(p.pid, []uint64{ino}); ok != want || err != nil {
					b.Fatalf("Listening = %v, %v", ok, err)
				}
			}
		})
	}
	b.Run("proc-scan-only", func(b *testing.B) {
		for b.Loop() {
			if _, err := groupOf(os.Getpid()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
