package main

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// Unmodified third-party apps as workers (DESIGN §3): they take fd 3 as
// systemd hands it over and say nothing about readiness, so --ready auto
// must see them accept. Under keep-alive load from 4 clients, 5 reloads each
// succeed, every request succeeds, and every worker pid changes.

// TestUvicornReloadsUnderKeepAlive runs Debian's python3-uvicorn on fd 3.
func TestUvicornReloadsUnderKeepAlive(t *testing.T) {
	const python = "/usr/bin/python3" // Debian's, with python3-uvicorn; a python3 earlier on PATH may lack it
	if out, err := exec.Command(python, "-c", "import uvicorn").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import uvicorn (apt-get install python3-uvicorn): %v: %s", python, err, out)
	}
	dir, err := filepath.Abs("../../testdata/uvicorn")
	if err != nil {
		t.Fatal(err)
	}
	testPeerReloads(t, "--chdir", dir, "--", python, "-m", "uvicorn", "--fd", "3", "app:app")
}

// TestNodeReloadsUnderKeepAlive runs a Node http server that listens on
// {fd: 3}.
func TestNodeReloadsUnderKeepAlive(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed (apt-get install nodejs)")
	}
	script, err := filepath.Abs("../../testdata/node/server.js")
	if err != nil {
		t.Fatal(err)
	}
	testPeerReloads(t, "--", node, script)
}

// TestGunicornReloadsUnderKeepAlive runs Debian's gunicorn, a pre-fork
// server with its own arbiter and 2 sync workers, as each worker. It takes
// fd 3 by socket activation (LISTEN_FDS, LISTEN_PID) and says READY=1 on
// NOTIFY_SOCKET itself.
func TestGunicornReloadsUnderKeepAlive(t *testing.T) {
	const gunicorn = "/usr/bin/gunicorn"
	if _, err := exec.LookPath(gunicorn); err != nil {
		t.Skip("gunicorn is not installed (apt-get install gunicorn)")
	}
	dir, err := filepath.Abs("../../testdata/gunicorn")
	if err != nil {
		t.Fatal(err)
	}
	testPeerReloads(t, "--chdir", dir, "--", gunicorn, "--workers", "2", "app:app")
}

// testPeerReloads runs the master with 2 workers of the command in args
// (after any more flags) and checks reloads under keep-alive load.
func testPeerReloads(t *testing.T, args ...string) {
	const reloads, clients = 5, 4
	p := start(t, append([]string{"--bind", "127.0.0.1:0", "--workers", "2", "--ready", "auto"}, args...)...)
	addr := p.ready()
	master := p.cmd.Process.Pid
	before := children(master)
	if len(before) != 2 {
		t.Fatalf("master has children %v, want 2 workers", before)
	}

	l := keepAliveLoad(addr, clients)
	defer l.stop()
	served := l.ok.Load()
	for i := 1; i <= reloads; i++ {
		p.signal(syscall.SIGHUP)
		testkit.WaitFor(t, 20*time.Second, fmt.Sprintf("reload %d to succeed", i), func() bool {
			if p.countLogs("reload failed; rolling back") > 0 {
				t.Fatalf("reload %d rolled back", i)
			}
			return p.countLogs("reload succeeded") >= i
		})
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("requests served after reload %d", i), func() bool {
			return l.ok.Load() > served
		})
		served = l.ok.Load()
	}
	l.stop()
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed during %d reloads; first errors:\n%s", n, n+l.ok.Load(), reloads, l.firstErrors())
	}
	t.Logf("%d requests from %d keep-alive clients during %d reloads, %d failed", l.ok.Load()+l.failed.Load(), clients, reloads, l.failed.Load())

	var now []int
	testkit.WaitFor(t, 20*time.Second, "2 workers, none of them from before the reloads", func() bool {
		now = children(master)
		return len(now) == 2 && !slices.ContainsFunc(now, func(pid int) bool { return slices.Contains(before, pid) })
	})
	for range 20 {
		body, err := get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(now, func(pid int) bool { return strings.Contains(body, fmt.Sprintf("pid %d\n", pid)) }) {
			t.Fatalf("answer %q is not from a current worker %v (before the reloads: %v)", body, now, before)
		}
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
}

// peerLoad is requests from keep-alive clients, each to the end of its
// bounded run or until stop.
type peerLoad struct {
	ok, failed atomic.Int64
	tr         *http.Transport
	quit       chan struct{}
	wg         sync.WaitGroup
	once       sync.Once
	mu         sync.Mutex
	errs       []string // the first few errors; guarded by mu
}

// keepAliveLoad starts n clients that reuse their connections, each for at
// most 60 s or 100000 requests.
func keepAliveLoad(addr string, n int) *peerLoad {
	tr := &http.Transport{MaxIdleConnsPerHost: n}
	l := &peerLoad{quit: make(chan struct{}), tr: tr}
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	deadline := time.Now().Add(60 * time.Second)
	for range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
				select {
				case <-l.quit:
					return
				default:
				}
				if err := l.one(c, "http://"+addr+"/"); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err.Error())
					}
					l.mu.Unlock()
				} else {
					l.ok.Add(1)
				}
			}
		}()
	}
	return l
}

// one is a request whose answer must be a worker's hello.
func (l *peerLoad) one(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(b), "hello from pid ") {
		return fmt.Errorf("%s: %q", resp.Status, b)
	}
	return nil
}

// stop ends the load and waits for the clients; it may be called again.
func (l *peerLoad) stop() {
	l.once.Do(func() {
		close(l.quit)
		l.wg.Wait()
		l.tr.CloseIdleConnections()
	})
}

func (l *peerLoad) firstErrors() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.errs, "\n")
}
