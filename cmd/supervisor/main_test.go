package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/workers"
)

// The test binary doubles as the supervisor binary: as the "supervisor"
// helper it runs main(), so end-to-end tests drive the real command line
// (and the exec shim, and the example app) with real signals, race detector
// included. The workers a master starts inherit the helper's variable, so
// the shim and "self example-app" run main() too.
func init() {
	testkit.Register("supervisor", func() int {
		main()
		return 0
	})
}

// Masters the tests kill with SIGKILL leave their notify directory behind
// (under os.TempDir() when they have no XDG_RUNTIME_DIR, or run workers
// as another user); the next master removes it, or, after the last test,
// this.
func TestMain(m *testing.M) {
	testkit.Main(m, testkit.AfterTests(func() { workers.RemoveStaleNotifyDirs(os.TempDir()) }))
}

// self is this binary copied where any user may run it: workers run
// --user nobody exec it, and so does the shim of a master run as nobody.
func self(t testing.TB) string { return testkit.PublicBinary(t) }

// syncBuffer collects a process's output for polling.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a supervisor master started by a test.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	out    *syncBuffer // stdout and stderr
	done   chan struct{}
	status error
}

// command returns an unstarted command running this binary as supervisor,
// with an XDG_RUNTIME_DIR of its own (removed when the test ends), so that
// masters running at once each get their own control socket (see
// controlPath).
func command(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	runtimeDir, err := os.MkdirTemp("", "supervisor-xdg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runtimeDir) })
	cmd := exec.Command(self(t), args...)
	cmd.Env = append(os.Environ(), testkit.Use("supervisor"), "XDG_RUNTIME_DIR="+runtimeDir)
	return cmd
}

// controlPath is the control socket of a master started by command.
func controlPath(cmd *exec.Cmd) string {
	for _, kv := range cmd.Env {
		if dir, ok := strings.CutPrefix(kv, "XDG_RUNTIME_DIR="); ok {
			return filepath.Join(dir, "supervisor", "control.sock")
		}
	}
	return ""
}

// start starts the master with args and ends it (SIGKILL) when the test ends.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, command(t, args...))
}

func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	// Workers share the master's stdout and stderr: one that outlives the
	// master would hold them, and Wait for ever, without this bound.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.status = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("supervisor output:\n%s", p.out.String())
		}
	})
	return p
}

// waitLog waits until the output has a JSON log line with this msg and
// returns it decoded.
func (p *proc) waitLog(msg string, timeout time.Duration) map[string]any {
	p.t.Helper()
	var found map[string]any
	testkit.WaitFor(p.t, timeout, "log "+strconv.Quote(msg), func() bool {
		found = p.findLog(msg)
		return found != nil
	})
	return found
}

func (p *proc) findLog(msg string) map[string]any {
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == msg {
			return line
		}
	}
	return nil
}

// ready waits for the master to report all workers ready and returns the
// first socket's real address.
func (p *proc) ready() string {
	p.t.Helper()
	p.waitLog("ready", 30*time.Second)
	addr, _ := p.waitLog("listening", time.Second)["address"].(string)
	return addr
}

// wait waits for the master to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("supervisor still running after %s", timeout)
	}
	if p.status == nil {
		return 0
	}
	if ee, ok := p.status.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatalf("wait: %v", p.status)
	return -1
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// reloads sends the master n SIGHUPs, each once the reload before it has
// succeeded (within each): its first n reloads.
func (p *proc) reloads(n int, each time.Duration) {
	p.t.Helper()
	for i := 1; i <= n; i++ {
		p.signal(syscall.SIGHUP)
		p.waitLogCount("reload succeeded", i, each)
	}
}

// children lists the pids whose parent is pid.
func children(pid int) []int {
	var kids []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil {
				kids = append(kids, n)
			}
		}
	}
	return kids
}

// client makes one new connection per request, so every request goes
// through the shared accept queue.
var client = testkit.Client(10 * time.Second) // a new connection per request, each from its own source address

func get(url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("status %s: %s", resp.Status, b)
	}
	return string(b), nil
}

func getFacts(t *testing.T, addr string) contractFacts {
	t.Helper()
	body, err := get("http://" + addr + "/env")
	if err != nil {
		t.Fatal(err)
	}
	var f contractFacts
	if err := json.Unmarshal([]byte(body), &f); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return f
}

// distinctWorkers asks until n different worker pids have answered.
func distinctWorkers(t *testing.T, addr string, n int) map[int]contractFacts {
	t.Helper()
	seen := map[int]contractFacts{}
	for i := 0; i < 500 && len(seen) < n; i++ {
		f := getFacts(t, addr)
		seen[f.Pid] = f
	}
	if len(seen) != n {
		t.Fatalf("%d distinct worker pids answered in 500 requests, want %d", len(seen), n)
	}
	return seen
}

// listenTCP is a plain-TCP listener on 127.0.0.1:0, like the master's own
// sockets (not Go's default MPTCP), closed when the test and its parallel
// subtests end.
func listenTCP(t *testing.T) *net.TCPListener {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}
