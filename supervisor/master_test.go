package supervisor

import (
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// The helpers are worker programs: this test binary re-run (through the
// exec shim) with testkit.Use(name) in its environment.
func init() {
	// ready-then-wait sends READY=1 and waits for SIGTERM, never touching
	// its sockets.
	testkit.Register("ready-then-wait", readyThenWait)
	// ready-then-crash sends READY=1 and exits 1 at once.
	testkit.Register("ready-then-crash", func() int {
		_ = workers.Ready()
		return 1
	})
}

func readyThenWait() int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if err := workers.Ready(); err != nil {
		return 1
	}
	<-term
	return 0
}

func TestMain(m *testing.M) { testkit.Main(m, testkit.Arg(workers.ShimArg, workers.RunShim)) }

// harness runs a master in-process on one 127.0.0.1:0 socket.
type harness struct {
	t       *testing.T
	sock    *listener.Socket
	signals chan os.Signal
	control chan Call
	ready   chan struct{}
	done    chan error
	logs    *observer.ObservedLogs

	mu   sync.Mutex
	next Config // what the next reload loads
}

// setConfig changes what the next reload loads.
func (h *harness) setConfig(edit func(*Config)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	edit(&h.next)
}

func (h *harness) load() (*Resolved, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.next.Validate()
}

func startMaster(t *testing.T, helper string, edit func(*Config)) *harness {
	t.Helper()
	cfg := Defaults()
	cfg.Command = []string{os.Args[0]}
	cfg.Bind = []string{"127.0.0.1:0"}
	if helper != "" { // "": the test's edit sets a command that is not this binary
		cfg.Env = []string{testkit.Use(helper)}
	}
	cfg.GracefulTimeout = 5 * time.Second
	if edit != nil {
		edit(&cfg)
	}
	res, err := cfg.Validate()
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, signals: make(chan os.Signal, 1), control: make(chan Call),
		ready: make(chan struct{}), done: make(chan error, 1), next: cfg}
	core, logs := observer.New(zap.DebugLevel)
	h.logs = logs
	log := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core))
	var socks []*listener.Socket
	open := func(addrs []listener.Addr) ([]*listener.Socket, error) {
		ss, err := listener.Open(addrs, nil, listener.Systemd{})
		socks = append(socks, ss...)
		return ss, err
	}
	ss, err := open(res.Addrs) // opened here, before any worker: the baseline for flag checks
	if err != nil {
		t.Fatal(err)
	}
	h.sock = ss[0]
	first := true
	t.Cleanup(func() {
		for _, s := range socks {
			s.Close()
		}
	})
	go func() {
		h.done <- Run(res, Options{
			Log: log, Shim: []string{os.Args[0], workers.ShimArg},
			Open: func(addrs []listener.Addr) ([]*listener.Socket, error) {
				if first { // the master's first bind: hand it the socket opened above
					first = false
					return ss, nil
				}
				return open(addrs)
			},
			Load:    h.load,
			Signals: h.signals, Control: h.control, OnReady: func() error { close(h.ready); return nil },
			Stdout: 1, Stderr: 2,
		})
	}()
	t.Cleanup(func() {
		select {
		case err := <-h.done:
			h.done <- err
			return
		default:
		}
		h.signals <- syscall.SIGINT
		select {
		case <-h.done:
		case <-time.After(15 * time.Second):
			t.Error("master did not stop within 15s of SIGINT")
		}
	})
	return h
}

// call sends a control request and waits for the answer.
func (h *harness) call(req Request) Response {
	h.t.Helper()
	c := Call{Request: req, Reply: make(chan Response, 1)}
	select {
	case h.control <- c:
	case <-time.After(10 * time.Second):
		h.t.Fatalf("master loop did not take %q within 10s", req.Command)
	}
	select {
	case r := <-c.Reply:
		return r
	case <-time.After(60 * time.Second):
		h.t.Fatalf("no answer to %q within 60s", req.Command)
	}
	return Response{}
}

func (h *harness) waitReady() {
	h.t.Helper()
	select {
	case <-h.ready:
	case err := <-h.done:
		h.t.Fatalf("master ended before ready: %v", err)
	case <-time.After(30 * time.Second):
		h.t.Fatal("not ready within 30s")
	}
}

func (h *harness) workers() []WorkerInfo {
	h.t.Helper()
	return h.call(Request{Command: "status"}).Status.Pool
}

// waitPool waits until exactly n workers exist, all ready, none in skip.
func (h *harness) waitPool(n int, skip map[int]bool) []WorkerInfo {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ws := h.workers()
		ok := len(ws) == n
		for _, w := range ws {
			ok = ok && w.State == "ready" && !skip[w.Pid]
		}
		if ok {
			return ws
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("pool %+v, want %d ready workers", ws, n)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

func (h *harness) stop() error {
	h.t.Helper()
	h.signals <- syscall.SIGTERM
	select {
	case err := <-h.done:
		h.done <- err // for Cleanup
		return err
	case <-time.After(30 * time.Second):
		h.t.Fatal("master did not stop within 30s of SIGTERM")
	}
	return nil
}

func getfl(t *testing.T, fd int) int {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fl
}

// The socket's file status flags are the same before the first worker and
// after 24 spawns and respawns and 3 reloads: nothing calls Fd() on it, which would make
// it blocking/non-blocking behind an asyncio or libuv worker's back (DESIGN
// §5: a uvicorn worker frozen in accept4).
func TestSocketFlagsUnchangedAcrossSpawns(t *testing.T) {
	h := startMaster(t, "ready-then-wait", func(c *Config) { c.Workers = 4 })
	before := getfl(t, h.sock.RawFD())
	if before&unix.O_NONBLOCK != 0 {
		t.Fatalf("socket flags %#o: O_NONBLOCK set at bind, want blocking", before)
	}
	h.waitReady()
	gone := map[int]bool{}
	for round := range 5 {
		for _, w := range h.waitPool(4, gone) {
			gone[w.Pid] = true
			if err := syscall.Kill(w.Pid, syscall.SIGKILL); err != nil {
				t.Fatalf("round %d: kill %d: %v", round, w.Pid, err)
			}
		}
	}
	h.waitPool(4, gone)
	for i := range 3 {
		if r := h.call(Request{Command: "reload", Wait: true}); !r.OK {
			t.Fatalf("reload %d: %s", i, r.Error)
		}
	}
	if after := getfl(t, h.sock.RawFD()); after != before {
		t.Fatalf("socket flags changed across %d spawns and 3 reloads: %#o before, %#o after", len(gone)+4, before, after)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

// TTIN/TTOU scale the pool; TTOU stops the highest slot gracefully.
func TestScaleBySignal(t *testing.T) {
	h := startMaster(t, "ready-then-wait", func(c *Config) { c.Workers = 2 })
	h.waitReady()
	h.signals <- syscall.SIGTTIN
	ws := h.waitPool(3, nil)
	if ws[2].Slot != 2 {
		t.Fatalf("slots %+v, want 0, 1, 2", ws)
	}
	h.signals <- syscall.SIGTTOU
	h.signals <- syscall.SIGTTOU
	ws = h.waitPool(1, nil)
	if ws[0].Slot != 0 {
		t.Fatalf("after scaling down: %+v, want slot 0", ws)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

// A worker that keeps crashing is replaced at once the first time, then
// with a doubling delay, not in a tight loop.
func TestCrashLoopBacksOff(t *testing.T) {
	h := startMaster(t, "ready-then-crash", func(c *Config) { c.Workers = 1 })
	h.waitReady()
	began := time.Now()
	testkit.WaitFor(t, 10*time.Second, "5 crashes", func() bool { return h.logs.FilterMessage("worker exited unexpectedly; replacing it").Len() >= 5 })
	// Five crashes are followed by waits of 0, 0.1, 0.2, 0.4 s (and 0.8 s
	// before the sixth start).
	if took := time.Since(began); took < 700*time.Millisecond {
		t.Errorf("5 crashes in %s: the restarts did not back off", took)
	}
	var delays []string
	for _, e := range h.logs.FilterMessage("worker exited unexpectedly; replacing it").All()[:5] {
		delays = append(delays, e.ContextMap()["after"].(time.Duration).String())
	}
	if got, want := strings.Join(delays, " "), "0s 100ms 200ms 400ms 800ms"; got != want {
		t.Errorf("restart delays %s, want %s", got, want)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}
