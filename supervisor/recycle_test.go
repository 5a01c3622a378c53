package supervisor

import (
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

func init() {
	// silent-after-ready sends READY=1 and then nothing, not even
	// WATCHDOG=1, until SIGTERM.
	testkit.Register("silent-after-ready", readyThenWait)
	// heartbeat sends READY=1, then WATCHDOG=1 every 50 ms.
	testkit.Register("heartbeat", func() int {
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		addr := os.Getenv("NOTIFY_SOCKET")
		_ = workers.Notify(addr, "READY=1")
		t := time.NewTicker(50 * time.Millisecond)
		for {
			select {
			case <-term:
				return 0
			case <-t.C:
				_ = workers.Notify(addr, "WATCHDOG=1")
			}
		}
	})
}

// Over many draws the limits cover the whole range [base, base+jitter] and
// never leave it; no jitter means exactly base; base 0 means off.
func TestDrawLimit(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2)).Int64N
	seen := map[int64]bool{}
	for range 5000 {
		v := drawLimit(200, 50, rnd)
		if v < 200 || v > 250 {
			t.Fatalf("drawLimit(200, 50) = %d, outside [200, 250]", v)
		}
		seen[v] = true
	}
	if len(seen) != 51 {
		t.Errorf("5000 draws hit %d of the 51 values in [200, 250]", len(seen))
	}
	if v := drawLimit(200, 0, rnd); v != 200 {
		t.Errorf("no jitter: %d, want 200", v)
	}
	if v := drawLimit(0, 50, rnd); v != 0 {
		t.Errorf("base 0: %d, want 0 (off)", v)
	}
}

// waitReplaced waits until the worker pid is gone and n ready workers serve.
func (h *harness) waitReplaced(pid, n int) []WorkerInfo {
	h.t.Helper()
	return h.waitPool(n, map[int]bool{pid: true})
}

// A ready worker that stops sending WATCHDOG=1 is killed and replaced within
// the timeout plus a small margin; one that keeps sending it is left alone.
func TestHeartbeat(t *testing.T) {
	t.Run("silent", func(t *testing.T) {
		h := startMaster(t, "silent-after-ready", func(c *Config) { c.Timeout = 300 * time.Millisecond })
		h.waitReady()
		first := h.workers()[0]
		began := time.Now()
		h.waitReplaced(first.Pid, 1)
		if took := time.Since(began); took > 300*time.Millisecond+5*time.Second {
			t.Errorf("replaced %s after ready; the timeout is 300ms", took)
		}
		if h.logs.FilterMessage("worker missed its heartbeat; killing it").Len() == 0 {
			t.Error("no log of the missed heartbeat")
		}
	})
	t.Run("beating", func(t *testing.T) {
		h := startMaster(t, "heartbeat", func(c *Config) { c.Timeout = 300 * time.Millisecond })
		h.waitReady()
		first := h.workers()[0]
		// An assertion of absence: watch for 4 timeouts.
		deadline := time.Now().Add(1200 * time.Millisecond)
		for time.Now().Before(deadline) {
			if ws := h.workers(); len(ws) != 1 || ws[0].Pid != first.Pid {
				t.Fatalf("a worker that beats every 50ms was replaced: %+v", ws)
			}
			time.Sleep(20 * time.Millisecond) // sampling interval
		}
	})
}

// allocatePy is a worker that says READY=1 and, only if marker does not
// exist yet (so only the first worker), creates it and holds 64 MiB. It is
// Python, whose baseline RSS is small (a -race Go helper starts near 200 MiB).
const allocatePy = `
import os, signal, socket, sys, time
addr = os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
block = None
if not os.path.exists(sys.argv[1]):
    open(sys.argv[1], "w").close()
    block = bytearray(64 << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
while True:
    time.sleep(1)
`

// A worker whose process group's RSS passes max_memory is replaced,
// replacement first.
func TestRecycleByMemory(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3")
	}
	marker := filepath.Join(t.TempDir(), "allocated")
	h := startMaster(t, "", func(c *Config) {
		c.Command, c.Ready, c.MaxMemory = []string{"/usr/bin/python3", "-c", allocatePy, marker}, ReadyNotify, "32MiB"
	})
	h.waitReady()
	first := h.workers()[0]
	h.waitReplaced(first.Pid, 1)
	e := h.logs.FilterMessage("recycling worker").All()
	if len(e) != 1 || e[0].ContextMap()["reason"] != recycleMemory || e[0].ContextMap()["pid"] != int64(first.Pid) {
		t.Fatalf("recycling logs %v, want one for max_memory of pid %d", e, first.Pid)
	}
	if rss := e[0].ContextMap()["rss"].(int64); rss < 32<<20 {
		t.Errorf("recycled at rss %d, under the 32MiB limit", rss)
	}
}

// Workers past max_lifetime are replaced, replacement first, and keep
// being replaced as they age.
func TestRecycleByLifetime(t *testing.T) {
	h := startMaster(t, "ready-then-wait", func(c *Config) { c.Workers, c.MaxLifetime = 2, 2*time.Second })
	h.waitReady()
	first := h.workers()
	sample := startSampler(h, 2, 3)
	testkit.WaitFor(t, 30*time.Second, "both first workers replaced", func() bool {
		ready := 0
		for _, w := range h.workers() {
			if w.Pid == first[0].Pid || w.Pid == first[1].Pid {
				return false
			}
			if w.State == "ready" {
				ready++
			}
		}
		return ready == 2
	})
	sample.stop(t)
	for _, e := range h.logs.FilterMessage("recycling worker").All() {
		if e.ContextMap()["reason"] != recycleLifetime {
			t.Errorf("recycled for %v, want %s", e.ContextMap()["reason"], recycleLifetime)
		}
	}
}

// Under continuous requests with max_requests 200 and jitter 50, workers are
// recycled, every request succeeds, and the pool stays within its bounds.
func TestRecycleByRequestsUnderLoad(t *testing.T) {
	h := startMaster(t, "http", func(c *Config) { c.Workers, c.MaxRequests, c.MaxRequestsJitter = 2, 200, 50 })
	h.waitReady()
	load := startLoad(h.sock.Addr, 4)
	sample := startSampler(h, 2, 3)
	testkit.WaitFor(t, 30*time.Second, "4 recycles by requests", func() bool {
		return h.logs.FilterMessage("recycling worker").FilterField(zapString("reason", recycleRequests)).Len() >= 4
	})
	load.stop(t)
	sample.stop(t)
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

func zapString(k, v string) zap.Field { return zap.String(k, v) }
