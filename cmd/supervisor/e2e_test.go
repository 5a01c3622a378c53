package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// Requests are answered by N distinct workers, each of which sees the
// worker contract of DESIGN §3 and a plain TCP socket on fd 3.
func TestWorkersSeeTheContract(t *testing.T) {
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "3", "--", self(t), "example-app")
	addr := p.ready()
	seen := distinctWorkers(t, addr, 3)
	slots := map[string]bool{}
	for pid, f := range seen {
		if f.ListenPid != strconv.Itoa(pid) {
			t.Errorf("worker %d: LISTEN_PID=%q, want its own pid", pid, f.ListenPid)
		}
		if f.ListenFds != "1" || f.ListenNames != "127.0.0.1_0" {
			t.Errorf("worker %d: LISTEN_FDS=%q LISTEN_FDNAMES=%q, want 1 and 127.0.0.1_0", pid, f.ListenFds, f.ListenNames)
		}
		if f.FD3Protocol != syscall.IPPROTO_TCP {
			t.Errorf("worker %d: fd 3 SO_PROTOCOL=%d, want %d (plain TCP, not MPTCP)", pid, f.FD3Protocol, syscall.IPPROTO_TCP)
		}
		if f.Generation != "1" || !f.NotifySocket {
			t.Errorf("worker %d: generation %q, NOTIFY_SOCKET set %v", pid, f.Generation, f.NotifySocket)
		}
		slots[f.Slot] = true
	}
	if !slots["0"] || !slots["1"] || !slots["2"] {
		t.Errorf("slots %v, want 0, 1 and 2", slots)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
}

// A worker killed with SIGKILL is replaced; the pool is back to N.
func TestKilledWorkerIsReplaced(t *testing.T) {
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app")
	addr := p.ready()
	before := children(p.cmd.Process.Pid)
	if len(before) != 2 {
		t.Fatalf("master has children %v, want 2 workers", before)
	}
	if err := syscall.Kill(before[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.waitLog("worker exited unexpectedly; replacing it", 10*time.Second)
	var now []int
	testkit.WaitFor(t, 10*time.Second, "2 workers again, one of them new", func() bool {
		now = children(p.cmd.Process.Pid)
		return len(now) == 2 && !slices.Contains(now, before[0]) && slices.Contains(now, before[1])
	})
	// A child is not yet a worker that accepts: wait for the replacement's
	// ready line (two at boot, then its own).
	testkit.WaitFor(t, 10*time.Second, "the replacement ready", func() bool { return p.countLogs("worker ready") == 3 })
	seen := distinctWorkers(t, addr, 2)
	for _, pid := range now {
		if _, ok := seen[pid]; !ok {
			t.Errorf("worker %d never answered; answered: %v", pid, seen)
		}
	}
}

// The master killed with SIGKILL under load leaves no worker alive within
// 1 s: the parent-death signal is bound to a thread that lives as long as
// the child (DESIGN §5), including for workers run as another user.
func TestMasterKilledLeavesNoWorkers(t *testing.T) {
	cases := map[string][]string{"same user": nil}
	if os.Geteuid() == 0 {
		cases["--user nobody"] = []string{"--user", "nobody"}
	}
	for name, extra := range cases {
		t.Run(name, func(t *testing.T) {
			args := append([]string{"--bind", "127.0.0.1:0", "--workers", "4"}, extra...)
			p := start(t, append(args, "--", self(t), "example-app")...)
			addr := p.ready()
			if extra != nil {
				if f := getFacts(t, addr); f.UID != 65534 || f.GID != 65534 {
					t.Fatalf("worker runs as uid %d gid %d, want nobody (65534)", f.UID, f.GID)
				}
			}
			workers := children(p.cmd.Process.Pid)
			if len(workers) != 4 {
				t.Fatalf("workers %v, want 4", workers)
			}
			stop := load(t, addr, 4)
			defer stop()
			p.signal(syscall.SIGKILL)
			p.wait(5 * time.Second)
			killed := time.Now()
			testkit.WaitFor(t, time.Second, "every worker to be gone", func() bool {
				return !slices.ContainsFunc(workers, testkit.Alive)
			})
			t.Logf("all %d workers gone %s after the master", len(workers), time.Since(killed))
		})
	}
}

// load sends requests from n clients until stop is called; it returns how
// many failed.
func load(t *testing.T, addr string, n int) (stop func() (ok, failed int64)) {
	return loadEach(n, func() (string, error) { return get("http://" + addr + "/") }, nil)
}

// loadEach runs n clients, each calling fetch (at most 100,000 times)
// until stop is called, and each answer that is not an error through
// answer (nil: none); stop returns how many answered and how many failed,
// and may be called again.
func loadEach(n int, fetch func() (string, error), answer func(body string)) (stop func() (ok, failed int64)) {
	var okN, failN atomic.Int64
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-quit:
					return
				default:
				}
				body, err := fetch()
				if err != nil {
					failN.Add(1)
					continue
				}
				okN.Add(1)
				if answer != nil {
					answer(body)
				}
			}
		}()
	}
	var once sync.Once
	return func() (int64, int64) {
		once.Do(func() { close(quit); wg.Wait() })
		return okN.Load(), failN.Load()
	}
}

// TERM while requests are in flight: they complete, the master exits 0,
// and no worker is left.
func TestTermFinishesInFlightRequests(t *testing.T) {
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app")
	addr := p.ready()
	workers := children(p.cmd.Process.Pid)

	const n = 4
	bodies := make(chan string, n)
	var started sync.WaitGroup
	for range n {
		started.Add(1)
		go func() {
			resp, err := client.Get("http://" + addr + "/sleep?d=1s")
			started.Done() // headers arrived: the request is in flight
			if err != nil {
				bodies <- "error: " + err.Error()
				return
			}
			defer resp.Body.Close()
			bodies <- readAll(resp.Body)
		}()
	}
	started.Wait()
	p.signal(syscall.SIGTERM)
	for range n {
		select {
		case b := <-bodies:
			if !strings.HasPrefix(b, "slept 1s") {
				t.Errorf("in-flight request got %q, want a full answer", b)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("in-flight request did not finish")
		}
	}
	if code := p.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if slices.ContainsFunc(workers, testkit.Alive) {
		t.Errorf("workers %v: some still alive after the master exited", workers)
	}
}

func readAll(r interface{ Read([]byte) (int, error) }) string {
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String()
		}
	}
}

// --shutdown-delay keeps serving new connections for that long after TERM.
func TestShutdownDelayKeepsServing(t *testing.T) {
	const delay = 2 * time.Second
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--shutdown-delay", delay.String(), "--", self(t), "example-app")
	addr := p.ready()
	p.signal(syscall.SIGTERM)
	termAt := time.Now()
	p.waitLog("shutdown delay: still serving", 5*time.Second)
	served := 0
	for time.Since(termAt) < delay-500*time.Millisecond {
		if _, err := get("http://" + addr + "/"); err != nil {
			t.Fatalf("%s after TERM, within the shutdown delay: %v", time.Since(termAt), err)
		}
		served++
	}
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if took := time.Since(termAt); took < delay {
		t.Errorf("master exited %s after TERM, before the %s shutdown delay", took, delay)
	}
	t.Logf("%d requests served during the shutdown delay", served)
}

// A worker that ignores SIGTERM is killed after --graceful-timeout.
func TestWorkerIgnoringTermIsKilled(t *testing.T) {
	script := writeScript(t, "trap '' TERM\nsystemd-notify --ready\nwhile :; do sleep 1; done\n")
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "1", "--graceful-timeout", "1s", "--", script)
	p.ready()
	workers := children(p.cmd.Process.Pid)
	p.signal(syscall.SIGTERM)
	termAt := time.Now()
	if code := p.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if took := time.Since(termAt); took < time.Second {
		t.Errorf("master exited %s after TERM, before the 1s graceful timeout", took)
	}
	if p.findLog("worker did not stop within the graceful timeout; killing its group") == nil {
		t.Error("no log line about killing the worker")
	}
	if slices.ContainsFunc(workers, testkit.Alive) {
		t.Errorf("worker %v still alive", workers)
	}
}

func writeScript(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "worker.sh")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// A shell wrapper that calls Debian's systemd-notify --ready and then execs
// the app is ready at once: systemd-notify sends with its parent's pid (the
// wrapper, which becomes the app), and the master attributes it by process.
func TestSystemdNotifyWrapperIsReady(t *testing.T) {
	if _, err := exec.LookPath("systemd-notify"); err != nil {
		t.Skip("systemd-notify not installed")
	}
	wrapper, err := filepath.Abs("../../testdata/notify-wrapper.sh")
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--ready-timeout", "60s", "--", wrapper, self(t), "example-app", "--notify=false")
	began := time.Now()
	addr := p.ready()
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("ready after %s; systemd-notify should make it ready at once", took)
	}
	distinctWorkers(t, addr, 2)
}

// Real peer: Debian's systemd-socket-activate binds the socket and passes it
// with LISTEN_FDS; --bind systemd serves on it.
func TestSystemdSocketActivation(t *testing.T) {
	if _, err := exec.LookPath("systemd-socket-activate"); err != nil {
		t.Skip("systemd-socket-activate not installed")
	}
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	runtimeDir := t.TempDir()
	cmd := exec.Command("systemd-socket-activate", "-l", addr, "-E", testkit.Use("supervisor"), "-E", "PATH="+os.Getenv("PATH"), "-E", "XDG_RUNTIME_DIR="+runtimeDir,
		self(t), "--bind", "systemd", "--workers", "2", "--", self(t), "example-app")
	p := startCmd(t, cmd)
	// systemd-socket-activate starts the master on the first connection;
	// that connection waits in the socket's queue until a worker accepts.
	testkit.WaitFor(t, 10*time.Second, "the socket to be bound", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	distinctWorkers(t, addr, 2)
	f := getFacts(t, addr)
	if f.ListenFds != "1" {
		t.Errorf("LISTEN_FDS=%q, want 1", f.ListenFds)
	}
	if line := p.waitLog("listening", time.Second); line["address"] != addr {
		t.Errorf("listening on %v, want %s", line["address"], addr)
	}
	p.signal(syscall.SIGTERM)
	p.wait(30 * time.Second)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// --pid is written once all workers are ready and removed at exit.
func TestPidFile(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "supervisor.pid")
	p := start(t, "--bind", "127.0.0.1:0", "--pid", pidFile, "--", self(t), "example-app")
	p.ready()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != strconv.Itoa(p.cmd.Process.Pid) {
		t.Errorf("pid file holds %q, want %d", got, p.cmd.Process.Pid)
	}
	p.signal(syscall.SIGTERM)
	p.wait(30 * time.Second)
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file still there after exit: %v", err)
	}
}

// As PID 1 (a container) the master reaps the orphans it adopts, while still
// getting its own workers' exit statuses from the same reaper.
func TestPID1ReapsOrphans(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a new pid namespace")
	}
	if err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "true").Run(); err != nil {
		t.Skipf("unshare --pid not available: %v", err)
	}
	// Each worker leaves an orphan behind: the subshell exits at once, so
	// its sleep is adopted by PID 1, the master, and exits 0.2 s later.
	script := writeScript(t, fmt.Sprintf("(sleep 0.2 &)\nexec %s example-app\n", self(t)))
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
		self(t), "--bind", "127.0.0.1:0", "--workers", "2", "--", script)
	// A control socket of its own, not the machine's /run/supervisor one
	// (another master there made this test fail).
	cmd.Env = append(os.Environ(), testkit.Use("supervisor"), "XDG_RUNTIME_DIR="+t.TempDir())
	p := startCmd(t, cmd)
	addr := p.ready()
	var master int
	testkit.WaitFor(t, 5*time.Second, "the master under unshare", func() bool {
		kids := children(p.cmd.Process.Pid)
		if len(kids) == 1 {
			master = kids[0]
		}
		return master != 0
	})
	zombies := func() (z []int) {
		for _, pid := range children(master) {
			if !testkit.Alive(pid) {
				z = append(z, pid)
			}
		}
		return z
	}
	// The orphans exist (adopted by the master) until they exit; then none
	// may linger as a zombie.
	testkit.WaitFor(t, 5*time.Second, "the orphans to exit and be reaped", func() bool {
		return len(children(master)) == 2 && len(zombies()) == 0
	})
	// Its own workers' exits still reach the master: kill one, it is replaced.
	if err := syscall.Kill(children(master)[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.waitLog("worker exited unexpectedly; replacing it", 10*time.Second)
	// Two workers were ready at boot; the replacement is the third.
	testkit.WaitFor(t, 10*time.Second, "the replacement ready", func() bool { return p.countLogs("worker ready") == 3 })
	distinctWorkers(t, addr, 2)
}

// A unix socket with ?mode= serves, and its path is removed at exit.
func TestUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	p := start(t, "--bind", "unix:"+path+"?mode=0660", "--workers", "2", "--", self(t), "example-app")
	p.ready()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", st.Mode().Perm())
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
	resp, err := c.Get("http://app/")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(body, "hello from pid") {
		t.Errorf("got %q", body)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket path still there after exit: %v", err)
	}
}

// A notification from any process in the worker's group counts for it: here
// systemd-notify's parent is a child shell, not the worker itself.
func TestNotifyFromTheWorkersGroup(t *testing.T) {
	if _, err := exec.LookPath("systemd-notify"); err != nil {
		t.Skip("systemd-notify not installed")
	}
	script := writeScript(t, fmt.Sprintf("sh -c 'systemd-notify --ready; true'\nexec %s example-app --notify=false\n", self(t)))
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--ready-timeout", "60s", "--", script)
	began := time.Now()
	addr := p.ready()
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("ready after %s; the group's notification should count at once", took)
	}
	distinctWorkers(t, addr, 2)
}

// Under systemd (Type=notify-reload), the master says READY=1 once its
// workers are ready, RELOADING=1 with MONOTONIC_USEC= on HUP, READY=1 when
// the new generation serves, and STOPPING=1 on TERM; its workers never see
// systemd's NOTIFY_SOCKET.
func TestTellsSystemd(t *testing.T) {
	addr := fmt.Sprintf("@supervisor-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	next := func(want string) string {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("waiting for %s from the master: %v", want, err)
			}
			if msg := string(buf[:n]); strings.Contains(msg, want) {
				return msg
			}
		}
	}
	cmd := command(t, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app")
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+addr)
	p := startCmd(t, cmd)
	next("READY=1")
	httpAddr := p.ready()
	if f := getFacts(t, httpAddr); f.NotifyAddr == "" || f.NotifyAddr == addr {
		t.Errorf("worker's NOTIFY_SOCKET is %q, want the master's own, not systemd's %q", f.NotifyAddr, addr)
	}
	p.signal(syscall.SIGHUP)
	msg := next("RELOADING=1")
	if !strings.Contains(msg, "MONOTONIC_USEC=") {
		t.Errorf("reload message %q has no MONOTONIC_USEC", msg)
	}
	next("READY=1")
	p.signal(syscall.SIGTERM)
	next("STOPPING=1")
	p.wait(30 * time.Second)
}
