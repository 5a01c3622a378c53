package supervisor

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/workers"
)

func init() {
	// listen-only serves on fd 3 without ever sending READY=1: only
	// listen readiness can see it.
	testkit.Register("listen-only", func() int {
		os.Unsetenv("NOTIFY_SOCKET")
		lns, _, err := listener.Inherited()
		if err != nil {
			return 1
		}
		srv := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 5 * time.Second}
		if err := workers.Serve(srv, lns); err != nil {
			return 1
		}
		return 0
	})
	// http serves "pid generation" on every inherited socket, sends
	// READY=1, and drains on SIGTERM (workers.Serve).
	testkit.Register("http", func() int {
		lns, _, err := listener.Inherited()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		answer := fmt.Sprintf("%d %s", os.Getpid(), os.Getenv("SUPERVISOR_GENERATION"))
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, answer)
		}), ReadHeaderTimeout: 5 * time.Second}
		if err := workers.Serve(srv, lns); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	})
}

var client = testkit.Client(10 * time.Second) // a new connection per request, each from its own source address

// ask sends one request on a new connection and returns "pid generation".
func ask(addr string) (string, error) {
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// loader sends requests from n clients until stopped; it counts failures.
type loader struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	quit       chan struct{}
	wg         sync.WaitGroup
}

func startLoad(addr string, n int) *loader {
	l := &loader{quit: make(chan struct{})}
	for range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; i < 1_000_000; i++ {
				select {
				case <-l.quit:
					return
				default:
				}
				if _, err := ask(addr); err != nil {
					l.failed.Add(1)
					l.firstErr.CompareAndSwap(nil, err.Error())
				} else {
					l.ok.Add(1)
				}
			}
		}()
	}
	return l
}

func (l *loader) stop(t *testing.T) {
	t.Helper()
	close(l.quit)
	l.wg.Wait()
	t.Logf("load: %d requests ok, %d failed", l.ok.Load(), l.failed.Load())
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d requests failed, first: %v", n, l.firstErr.Load())
	}
	if l.ok.Load() == 0 {
		t.Error("no request succeeded")
	}
}

func pidsOf(ws []WorkerInfo) map[int]bool {
	pids := map[int]bool{}
	for _, w := range ws {
		pids[w.Pid] = true
	}
	return pids
}

// Under continuous requests, reloads replace every worker and no request
// fails; the pool never exceeds workers+max_surge processes nor drops under
// workers ready ones.
func TestReloadUnderLoad(t *testing.T) {
	h := startMaster(t, "http", func(c *Config) { c.Workers = 2 })
	h.waitReady()
	load := startLoad(h.sock.Addr, 4)
	sample := startSampler(h, 2, 3)
	seen := pidsOf(h.waitPool(2, nil))
	for i := range 5 {
		if r := h.call(Request{Command: "reload", Wait: true}); !r.OK {
			t.Fatalf("reload %d: %s", i, r.Error)
		}
		ws := h.waitPool(2, nil)
		for _, w := range ws {
			if seen[w.Pid] {
				t.Fatalf("reload %d: worker %d survived it", i, w.Pid)
			}
			if w.Generation != i+2 {
				t.Fatalf("reload %d: worker %+v, want generation %d", i, w, i+2)
			}
		}
		for pid := range pidsOf(ws) {
			seen[pid] = true
		}
	}
	load.stop(t)
	sample.stop(t)
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

// sampler polls status and checks the pool bounds at every sample.
type sampler struct {
	quit chan struct{}
	done chan string // first violation, or ""
}

func startSampler(h *harness, want, maxProcs int) *sampler {
	s := &sampler{quit: make(chan struct{}), done: make(chan string, 1)}
	go func() {
		samples := 0
		for {
			select {
			case <-s.quit:
				s.done <- fmt.Sprintf("ok after %d samples", samples)
				return
			default:
			}
			c := Call{Request: Request{Command: "status"}, Reply: make(chan Response, 1)}
			select {
			case h.control <- c:
			case <-s.quit:
				s.done <- fmt.Sprintf("ok after %d samples", samples)
				return
			}
			var st *Status
			select {
			case r := <-c.Reply:
				st = r.Status
			case <-time.After(10 * time.Second):
				// Not testkit.Recv: t.Fatal may not be called from this
				// goroutine. The failure goes to stop, as violations do.
				s.done <- fmt.Sprintf("sample %d: no answer to status within 10s", samples+1)
				return
			}
			samples++
			time.Sleep(time.Millisecond) // sampling interval: leave the loop time to work
			if len(st.Pool) > maxProcs || (st.Phase == "running" && st.Ready < want) {
				s.done <- fmt.Sprintf("sample %d: %d processes, %d ready; want at most %d and at least %d ready: %+v", samples, len(st.Pool), st.Ready, maxProcs, want, st.Pool)
				return
			}
		}
	}()
	return s
}

func (s *sampler) stop(t *testing.T) {
	t.Helper()
	close(s.quit)
	// The sampler may be waiting up to 10s for an answer before it sees quit.
	if msg := testkit.Recv(t, s.done, 20*time.Second, "the sampler to stop"); !strings.HasPrefix(msg, "ok") {
		t.Error(msg)
	} else {
		t.Log("pool bounds", msg)
	}
}

// A broken deploy (the new command exits before ready) is rolled back: the
// old workers keep serving every request, reload --wait reports why, and a
// fixed config then rolls out.
func TestBrokenReloadRollsBack(t *testing.T) {
	h := startMaster(t, "http", func(c *Config) { c.Workers = 2 })
	h.waitReady()
	old := pidsOf(h.waitPool(2, nil))
	load := startLoad(h.sock.Addr, 4)
	h.setConfig(func(c *Config) { c.Command = []string{"/bin/sh", "-c", "exit 3"} })
	r := h.call(Request{Command: "reload", Wait: true})
	if r.OK || !strings.Contains(r.Error, "rolled back") || !strings.Contains(r.Error, "exited with status 3 before it was ready") {
		t.Fatalf("reload --wait answered %+v, want a rollback naming the exit", r)
	}
	ws := h.waitPool(2, nil)
	for _, w := range ws {
		if !old[w.Pid] {
			t.Errorf("after the rollback %+v serves; want only the old workers %v", w, old)
		}
	}
	h.setConfig(func(c *Config) { c.Command = []string{os.Args[0]} })
	if r := h.call(Request{Command: "reload", Wait: true}); !r.OK {
		t.Fatalf("fixed reload: %s", r.Error)
	}
	for _, w := range h.waitPool(2, nil) {
		if old[w.Pid] {
			t.Errorf("after the fixed reload old worker %d still serves", w.Pid)
		}
	}
	load.stop(t)
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

// A new generation that never gets ready is rolled back after ready_timeout.
func TestReloadNotReadyRollsBack(t *testing.T) {
	h := startMaster(t, "http", func(c *Config) { c.Workers = 1 })
	h.waitReady()
	old := pidsOf(h.waitPool(1, nil))
	h.setConfig(func(c *Config) { c.Command, c.ReadyTimeout = []string{"/bin/sleep", "60"}, 300*time.Millisecond })
	r := h.call(Request{Command: "reload", Wait: true})
	if r.OK || !strings.Contains(r.Error, "was not ready within 300ms") {
		t.Fatalf("reload answered %+v, want a rollback for readiness", r)
	}
	for _, w := range h.waitPool(1, nil) {
		if !old[w.Pid] {
			t.Errorf("%+v serves after the rollback, want the old worker", w)
		}
	}
}

// A config edited to 3 workers and reloaded ends with 3; an invalid edit
// leaves the pool as it was and reports the error.
func TestReloadChangesWorkersAndRejectsBadConfig(t *testing.T) {
	h := startMaster(t, "http", func(c *Config) { c.Workers = 2 })
	h.waitReady()
	h.setConfig(func(c *Config) { c.Workers = 3 })
	if r := h.call(Request{Command: "reload", Wait: true}); !r.OK {
		t.Fatal(r.Error)
	}
	before := pidsOf(h.waitPool(3, nil))
	h.setConfig(func(c *Config) { c.Workers = 0 })
	r := h.call(Request{Command: "reload", Wait: true})
	if r.OK || !strings.Contains(r.Error, "--workers 0") || !strings.Contains(r.Error, "running config stays in force") {
		t.Fatalf("invalid reload answered %+v", r)
	}
	after := pidsOf(h.waitPool(3, nil))
	for pid := range before {
		if !after[pid] {
			t.Errorf("worker %d was replaced by a reload that failed validation", pid)
		}
	}
}

// A burst of HUPs merges into one rollout toward the newest generation and
// never runs more than workers+max_surge processes.
func TestHUPStormMerges(t *testing.T) {
	h := startMaster(t, "http", func(c *Config) { c.Workers = 2 })
	h.waitReady()
	sample := startSampler(h, 2, 3)
	for range 5 {
		h.signals <- syscall.SIGHUP
	}
	var ws []WorkerInfo
	testkit.WaitFor(t, 30*time.Second, "every worker in generation 6", func() bool {
		ws = h.workers()
		if len(ws) != 2 {
			return false
		}
		for _, w := range ws {
			if w.Generation != 6 || w.State != "ready" {
				return false
			}
		}
		return true
	})
	sample.stop(t)
}

// A reload that adds a bind gives new workers both sockets; one that removes
// it closes the socket once its last worker is gone.
func TestReloadChangesBinds(t *testing.T) {
	h := startMaster(t, "http", func(c *Config) { c.Workers = 1 })
	h.waitReady()
	old := pidsOf(h.waitPool(1, nil))
	h.setConfig(func(c *Config) { c.Bind = []string{"127.0.0.1:0", "127.0.0.1:0"} })
	if r := h.call(Request{Command: "reload", Wait: true}); !r.OK {
		t.Fatal(r.Error)
	}
	// The reload succeeded once the new worker was ready; the old one may
	// still take a connection on the kept bind until it has closed its
	// listener while it drains.
	h.waitPool(1, old)
	line := h.logs.FilterMessage("listening").All()
	second := line[len(line)-1].ContextMap()["address"].(string)
	if got, err := ask(second); err != nil || !strings.HasSuffix(got, " 2") {
		t.Fatalf("added bind %s answered %q, %v; want generation 2", second, got, err)
	}
	if got, err := ask(h.sock.Addr); err != nil || !strings.HasSuffix(got, " 2") {
		t.Fatalf("kept bind answered %q, %v", got, err)
	}
	h.setConfig(func(c *Config) { c.Bind = []string{"127.0.0.1:0"} })
	if r := h.call(Request{Command: "reload", Wait: true}); !r.OK {
		t.Fatal(r.Error)
	}
	testkit.WaitFor(t, 10*time.Second, "the removed bind to refuse connections", func() bool {
		_, err := ask(second)
		return err != nil && strings.Contains(err.Error(), "refused")
	})
	if got, err := ask(h.sock.Addr); err != nil || !strings.HasSuffix(got, " 3") {
		t.Fatalf("kept bind answered %q, %v; want generation 3", got, err)
	}
}

// An app that never sends READY=1 is ready under --ready listen and auto
// once it accepts on its socket, and never under --ready notify.
func TestListenReadiness(t *testing.T) {
	for _, mode := range []string{ReadyListen, ReadyAuto} {
		t.Run(mode, func(t *testing.T) {
			h := startMaster(t, "listen-only", func(c *Config) { c.Workers, c.Ready = 2, mode })
			h.waitReady()
			if n := h.logs.FilterMessage("worker seen listening").Len(); n != 2 {
				t.Errorf("%d workers seen listening, want 2", n)
			}
		})
	}
	t.Run(ReadyNotify, func(t *testing.T) {
		h := startMaster(t, "listen-only", func(c *Config) { c.Workers, c.Ready, c.ReadyTimeout = 1, ReadyNotify, 500*time.Millisecond })
		select {
		case err := <-h.done:
			h.done <- err
			if err == nil || !strings.Contains(err.Error(), "was not ready within 500ms") {
				t.Fatalf("master ended with %v, want a readiness failure", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("master still running 30s after a 500ms ready timeout")
		}
	})
}
