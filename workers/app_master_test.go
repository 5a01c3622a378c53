package workers

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/signals"
)

// tinyMaster plays the supervisor for the app-side tests: it owns one
// blocking listening socket on 127.0.0.1, a notify socket in the abstract
// namespace and a reaper, and starts workers on them through the exec shim.
type tinyMaster struct {
	t      *testing.T
	sock   int    // the listening socket the workers inherit as fd 3
	url    string // http://127.0.0.1:PORT
	notify *NotifySocket
	msgs   chan Notification // every datagram received, in order
	reaper *signals.Reaper
}

var notifySeq atomic.Int64

func newTinyMaster(t *testing.T) *tinyMaster {
	t.Helper()
	sock, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(sock) })
	if err := syscall.Bind(sock, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(sock, 128); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(sock)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := ListenNotify(fmt.Sprintf("@workers-app-test-%d-%d", os.Getpid(), notifySeq.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	m := &tinyMaster{
		t: t, sock: sock, notify: ns, reaper: signals.NewReaper(false),
		url:  "http://127.0.0.1:" + strconv.Itoa(sa.(*syscall.SockaddrInet4).Port),
		msgs: make(chan Notification, 1<<14),
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			n, err := ns.Read()
			if err != nil {
				return
			}
			select {
			case m.msgs <- n:
			default:
				t.Errorf("notify inbox full: dropped %+v", n)
			}
		}
	}()
	// Cleanups run last-registered first: every worker's (registered by
	// start) runs before this, so no worker is left when the reaper stops.
	t.Cleanup(func() {
		ns.Close()
		<-read
		m.reaper.Close()
	})
	return m
}

// testWorker is one started worker.
type testWorker struct {
	m      *tinyMaster
	p      *Process
	exited chan Exit
	exit   *Exit // once seen
}

// start starts path with args as a worker on the master's socket, with
// extra environment variables ("K=V"); a cleanup kills it if it is still
// running at the end of the test.
func (m *tinyMaster) start(path string, args []string, extra ...string) *testWorker {
	m.t.Helper()
	w := &testWorker{m: m, exited: make(chan Exit, 1)}
	p, err := Start(Spec{
		Path: path, Args: args, Shim: []string{os.Args[0], ShimArg},
		Env:     Env(os.Environ(), extra, Contract{Names: []string{"web"}, NotifySocket: m.notify.Addr(), Generation: 1}),
		Sockets: []int{m.sock}, Stdout: 2, Stderr: 2, Forker: m.reaper, Exited: w.exited,
	})
	if err != nil {
		m.t.Fatal(err)
	}
	w.p = p
	m.t.Cleanup(func() {
		if w.exit == nil {
			_ = p.Signal(syscall.SIGKILL)
			select {
			case <-w.exited:
			case <-time.After(15 * time.Second):
				m.t.Errorf("worker %d not reaped within 15s of SIGKILL", p.Pid)
			}
		}
	})
	return w
}

// startHelper starts the named helper (testkit.Register) as a worker. Under -race
// it skips the race runtime's 1s sleep at exit.
func (m *tinyMaster) startHelper(name string, extra ...string) *testWorker {
	m.t.Helper()
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	return m.start(os.Args[0], []string{"worker"}, append(extra, testkit.Use(name), "GORACE="+gorace)...)
}

// from says whether n came from w: its own pid, or a process in its group
// (systemd-notify run by the worker).
func (w *testWorker) from(n Notification) bool { return n.PID == w.p.Pid || n.PGID == w.p.Pid }

// await returns the next message from w for which ok is true, discarding
// the ones before it (from w or any other worker); it fails the test after d.
func (w *testWorker) await(d time.Duration, what string, ok func(Message) bool) Message {
	w.m.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case n := <-w.m.msgs:
			if w.from(n) && ok(n.Msg) {
				return n.Msg
			}
		case <-deadline:
			w.m.t.Fatalf("worker %d: no %s within %s", w.p.Pid, what, d)
		}
	}
}

// collect returns every message from w that arrives within d.
func (w *testWorker) collect(d time.Duration) []Message {
	var got []Message
	deadline := time.After(d)
	for {
		select {
		case n := <-w.m.msgs:
			if w.from(n) {
				got = append(got, n.Msg)
			}
		case <-deadline:
			return got
		}
	}
}

// wait returns w's exit; it fails the test after d.
func (w *testWorker) wait(d time.Duration) Exit {
	w.m.t.Helper()
	if w.exit != nil {
		return *w.exit
	}
	select {
	case ex := <-w.exited:
		w.exit = &ex
		return ex
	case <-time.After(d):
		w.m.t.Fatalf("worker %d did not exit within %s", w.p.Pid, d)
	}
	return Exit{}
}

// stop sends SIGTERM and wants a clean exit (status 0) within d.
func (w *testWorker) stop(d time.Duration) {
	w.m.t.Helper()
	if err := w.p.Signal(syscall.SIGTERM); err != nil {
		w.m.t.Fatal(err)
	}
	if ex := w.wait(d); !ex.Status.Exited() || ex.Status.ExitStatus() != 0 {
		w.m.t.Errorf("worker %d %s on SIGTERM, want exit status 0", w.p.Pid, Describe(ex.Status))
	}
}
