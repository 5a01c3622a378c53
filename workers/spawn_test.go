package workers

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/signals"
	"golang.org/x/sys/unix"
)

// The helpers are worker programs: this test binary re-run (through the
// exec shim) with testkit.Use(name) in its environment.
func init() {
	// report prints what the worker sees of its contract as JSON on stdout.
	testkit.Register("report", func() int {
		pgid, _ := unix.Getpgid(0)
		proto, _ := unix.GetsockoptInt(3, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		fl, _ := unix.FcntlInt(3, unix.F_GETFL, 0)
		_ = json.NewEncoder(os.Stdout).Encode(map[string]string{
			"pid": strconv.Itoa(os.Getpid()), "pgid": strconv.Itoa(pgid),
			"listen_pid": os.Getenv("LISTEN_PID"), "listen_fds": os.Getenv("LISTEN_FDS"),
			"listen_fdnames": os.Getenv("LISTEN_FDNAMES"), "slot": os.Getenv("SUPERVISOR_WORKER_SLOT"),
			"watchdog_pid": os.Getenv("WATCHDOG_PID"), "argv0": os.Args[0], "fd4": fdTarget(4),
			"fd3_protocol": strconv.Itoa(proto), "fd3_nonblock": strconv.FormatBool(fl&unix.O_NONBLOCK != 0),
		})
		return 0
	})
	// sleep-with-child waits for a signal, with a child in its group.
	testkit.Register("sleep-with-child", func() int {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGUSR1)
		pid, err := syscall.ForkExec("/bin/sleep", []string{"sleep", "60"}, &syscall.ProcAttr{})
		if err != nil {
			return 2
		}
		os.Stdout.WriteString(strconv.Itoa(pid) + "\n")
		<-c
		return 0
	})
	// listen-fd3 is a Go app: net.FileListener on fd 3, then Accept (listenready_test.go).
	testkit.Register("listen-fd3", listenFD3Helper)
	// listening-of prints Listening($LISTENING_PID, [$LISTENING_INO]) as JSON.
	testkit.Register("listening-of", listeningOfHelper)
	// serve is a Go app using Listeners and Serve (app_test.go).
	testkit.Register("serve", serveHelper)
	// plain-shutdown is a Go app that calls srv.Shutdown on SIGTERM (app_test.go).
	testkit.Register("plain-shutdown", plainShutdownHelper)
	// listeners writes what Listeners returned to $OUT (app_test.go).
	testkit.Register("listeners", listenersHelper)
}

// fdTarget is what fd points to ("socket:[123]"), or "closed".
func fdTarget(fd int) string {
	s, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "closed"
	}
	return s
}

// startHelper starts helper name as a worker through the Go shim (this
// test binary as ShimArg) with one listening socket on fd 3, its stdout on
// a pipe.
func startHelper(t *testing.T, r *signals.Reaper, name string, exited chan Exit) (*Process, *os.File) {
	t.Helper()
	return startHelperVia(t, r, name, exited, []string{os.Args[0], ShimArg}, 0)
}

// startHelperVia is startHelper through shim, with the heartbeat watchdog
// (0: none).
func startHelperVia(t *testing.T, r *signals.Reaper, name string, exited chan Exit, shim []string, watchdog time.Duration) (*Process, *os.File) {
	t.Helper()
	ln, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(ln) })
	if err := syscall.Bind(ln, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(ln, 16); err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.Close() })
	var wfd int
	raw, _ := pw.SyscallConn()
	_ = raw.Control(func(fd uintptr) { wfd = int(fd) })
	p, err := Start(Spec{
		Path: os.Args[0], Args: []string{"worker"}, Shim: shim,
		Env: Env(os.Environ(), []string{testkit.Use(name)},
			Contract{Names: []string{"web:1"}, Slot: 3, Generation: 1, Watchdog: watchdog}),
		Sockets: []int{ln}, Stdout: wfd, Stderr: 2, Forker: r, Exited: exited,
	})
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	return p, pr
}

func waitExit(t *testing.T, exited <-chan Exit) Exit {
	t.Helper()
	select {
	case ex := <-exited:
		return ex
	case <-time.After(15 * time.Second):
		t.Fatal("no exit within 15s")
	}
	return Exit{}
}

// A worker gets its sockets from fd 3, LISTEN_PID (and, with a heartbeat,
// WATCHDOG_PID) equal to its own pid (set by the shim), its argv[0], its own
// process group, the socket's flags untouched, and no fd of the embedded
// shim's memfd; through either shim.
func TestStartGivesTheContract(t *testing.T) {
	embedded, err := EmbeddedShim()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		shim     []string
		watchdog time.Duration
	}{
		{"go shim", []string{os.Args[0], ShimArg}, 0},
		{"go shim, watchdog", []string{os.Args[0], ShimArg}, time.Minute},
		{"embedded shim", embedded, 0},
		{"embedded shim, watchdog", embedded, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := signals.NewReaper(false)
			defer r.Close()
			exited := make(chan Exit, 1)
			p, out := startHelperVia(t, r, "report", exited, tc.shim, tc.watchdog)
			b, err := io.ReadAll(out)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]string
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("helper said %q: %v", b, err)
			}
			pid := strconv.Itoa(p.Pid)
			watchdogPid := ""
			if tc.watchdog > 0 {
				watchdogPid = pid
			}
			want := map[string]string{"pid": pid, "pgid": pid, "listen_pid": pid, "listen_fds": "1", "listen_fdnames": "web_1",
				"slot": "3", "fd3_protocol": strconv.Itoa(syscall.IPPROTO_TCP), "fd3_nonblock": "false",
				"watchdog_pid": watchdogPid, "argv0": "worker"}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
			if strings.Contains(got["fd4"], "supervisor-exec-shim") {
				t.Errorf("fd 4 is %s: the worker inherited the shim's memfd", got["fd4"])
			}
			if ex := waitExit(t, exited); ex.Pid != p.Pid || !ex.Status.Exited() || ex.Status.ExitStatus() != 0 {
				t.Errorf("exit %+v (%s), want pid %d exited 0", ex, Describe(ex.Status), p.Pid)
			}
		})
	}
}

// Signal reaches the worker's whole process group.
func TestSignalReachesTheGroup(t *testing.T) {
	r := signals.NewReaper(false)
	defer r.Close()
	exited := make(chan Exit, 1)
	p, out := startHelper(t, r, "sleep-with-child", exited)
	line := make([]byte, 32)
	n, err := out.Read(line)
	if err != nil {
		t.Fatal(err)
	}
	child, _ := strconv.Atoi(strings.TrimSpace(string(line[:n])))
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if ex := waitExit(t, exited); !ex.Status.Signaled() || ex.Status.Signal() != syscall.SIGKILL {
		t.Errorf("worker %s, want killed by SIGKILL", Describe(ex.Status))
	}
	testkit.WaitFor(t, 5*time.Second, fmt.Sprintf("the worker's child %d to be gone with its group", child), func() bool { return !testkit.Alive(child) })
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("signal to a gone group: %v, want nil", err)
	}
}

// The parent-death signal is tied to the thread that forked the worker. Go
// ends a thread when a goroutine locked to it returns; churn through many
// such threads and the workers must survive (golang/go#27505): Start forks
// from a thread that lives while any child it forked does.
func TestWorkersSurviveThreadExits(t *testing.T) {
	r := signals.NewReaper(false)
	defer r.Close()
	exited := make(chan Exit, 8)
	procs := startSleepers(t, r, 8, exited)
	done := make(chan struct{})
	for range 200 {
		go func() {
			runtime.LockOSThread() // returning while locked ends this thread
			done <- struct{}{}
		}()
		<-done
	}
	select {
	case ex := <-exited:
		t.Fatalf("worker %d died when threads exited: %s", ex.Pid, Describe(ex.Status))
	case <-time.After(200 * time.Millisecond):
	}
	killAll(t, procs, exited)
}

// Every worker is forked from one thread, which ends once the last of them
// is reaped: a pool of 32 costs the master one thread, not 32.
func TestForkingThreadIsShared(t *testing.T) {
	r := signals.NewReaper(false)
	defer r.Close()
	before := threadCount(t)
	exited := make(chan Exit, 32)
	procs := startSleepers(t, r, 32, exited)
	if grew := threadCount(t) - before; grew >= 16 {
		t.Errorf("32 workers started: this process has %d threads more, want a few (one forking thread)", grew)
	}
	killAll(t, procs, exited)
	testkit.WaitFor(t, 5*time.Second, "the forking thread to end with its last child", func() bool {
		forker.mu.Lock()
		defer forker.mu.Unlock()
		return forker.jobs == nil && forker.held == 0
	})
}

// startSleepers starts n workers of /bin/sleep 60, their exits on exited.
func startSleepers(t *testing.T, r *signals.Reaper, n int, exited chan Exit) []*Process {
	t.Helper()
	var procs []*Process
	for range n {
		p, err := Start(Spec{Path: "/bin/sleep", Args: []string{"sleep", "60"}, Stdout: 1, Stderr: 2, Forker: r, Exited: exited})
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
	}
	return procs
}

// killAll SIGKILLs procs and waits for their exits.
func killAll(t *testing.T, procs []*Process, exited <-chan Exit) {
	t.Helper()
	for _, p := range procs {
		_ = p.Signal(syscall.SIGKILL)
	}
	for range procs {
		waitExit(t, exited)
	}
}

// threadCount is this process's number of threads (/proc/self/status).
func threadCount(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: line in /proc/self/status")
	return 0
}

func TestEnv(t *testing.T) {
	base := []string{"PATH=/bin", "LISTEN_FDS=9", "LISTEN_PID=1", "LISTEN_FDNAMES=x", "NOTIFY_SOCKET=/run/systemd/notify",
		"WATCHDOG_USEC=1", "WATCHDOG_PID=1", "TABLEFLIP_HAS_PARENT_7DIU3=yes", "FDSTORE=8", "KEEP=1", "OVERRIDE=old"}
	env := Env(base, []string{"OVERRIDE=new", "EXTRA=1"}, Contract{Names: []string{"127.0.0.1:80", "systemd-name"}, NotifySocket: "@n", Slot: 2, Generation: 5})
	want := []string{"PATH=/bin", "KEEP=1", "OVERRIDE=new", "EXTRA=1", "LISTEN_FDS=2", "LISTEN_FDNAMES=127.0.0.1_80:systemd-name",
		"NOTIFY_SOCKET=@n", "SUPERVISOR_WORKER_SLOT=2", "SUPERVISOR_GENERATION=5"}
	if !slices.Equal(env, want) {
		t.Errorf("Env =\n%q\nwant\n%q", env, want)
	}
}

func TestFDName(t *testing.T) {
	for in, want := range map[string]string{
		"web": "web", "127.0.0.1:8080": "127.0.0.1_8080", "[::1]:80": "[__1]_80", "": "unknown",
		"a b\tc": "a_b_c", strings.Repeat("x", 300): strings.Repeat("x", 255),
	} {
		if got := FDName(in); got != want {
			t.Errorf("FDName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDescribe(t *testing.T) {
	if got := Describe(syscall.WaitStatus(3 << 8)); got != "exited with status 3" {
		t.Errorf("got %q", got)
	}
	if got := Describe(syscall.WaitStatus(syscall.SIGKILL)); got != "killed by signal killed" {
		t.Errorf("got %q", got)
	}
}
