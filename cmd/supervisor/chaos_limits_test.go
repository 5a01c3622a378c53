package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/supervisor"
	"golang.org/x/sys/unix"
)

// The chaos suite, resource exhaustion: a master whose RLIMIT_NOFILE or
// RLIMIT_NPROC is too low for its pool, and a pid file on a full or a
// read-only file system. Each case checks one clear line naming the
// problem, that a failing start backs off (the crash backoff, read from
// the log) rather than spinning, that the master stays up and serves with
// what it has, and that nothing is left behind: descriptors, children,
// zombies, processes after the master is gone, temporary pid files.

// limitsEnv tells the limits-exec helper which limits to set:
// "nproc=N,nofile=N", each as both soft and hard limit.
const limitsEnv = "CHAOS_RLIMITS"

// limits-exec sets the limits in limitsEnv on itself, then execs this
// binary again as the supervisor with the same arguments: a master that
// has its limits from its very first instruction (Go raises a soft
// RLIMIT_NOFILE to the hard one at start, so both are set).
func init() { testkit.Register("limits-exec", limitsExec) }

func limitsExec() int {
	for _, kv := range strings.Split(os.Getenv(limitsEnv), ",") {
		name, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 64)
		res := map[string]int{"nproc": unix.RLIMIT_NPROC, "nofile": unix.RLIMIT_NOFILE}
		r, ok := res[name]
		if err != nil || !ok {
			fmt.Fprintf(os.Stderr, "limits-exec: bad %s entry %q\n", limitsEnv, kv)
			return 2
		}
		if err := unix.Setrlimit(r, &unix.Rlimit{Cur: n, Max: n}); err != nil {
			fmt.Fprintf(os.Stderr, "limits-exec: setrlimit %s %d: %v\n", name, n, err)
			return 2
		}
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "limits-exec:", err)
		return 2
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TESTKIT_HELPER=") && !strings.HasPrefix(kv, limitsEnv+"=") {
			env = append(env, kv)
		}
	}
	err = syscall.Exec(exe, os.Args, append(env, testkit.Use("supervisor")))
	fmt.Fprintln(os.Stderr, "limits-exec: exec:", err)
	return 2
}

// limitedCommand is command (with GORACE's exit sleep off) run through
// limits-exec with limits, and with a mark in its environment that every
// worker inherits (see limMarked).
func limitedCommand(t *testing.T, limits, mark string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := quick(command(t, args...))
	cmd.Env = append(cmd.Env, testkit.Use("limits-exec"), limitsEnv+"="+limits, mark)
	return cmd
}

// limNewMark is a fresh "KEY=VALUE" environment entry to find a master's
// processes by, whoever their parent is by then.
func limNewMark(t *testing.T) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "CHAOS_LIMITS_MARK=" + strings.ReplaceAll(t.Name(), "/", "_") + "-" + hex.EncodeToString(b)
}

// limMarked lists the live processes with mark in their environment.
func limMarked(mark string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && slices.Contains(strings.Split(string(b), "\x00"), mark) && testkit.Alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// limNothingLeft waits until no process with mark is alive.
func limNothingLeft(t *testing.T, mark string) {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, "no process of the master left", func() bool { return len(limMarked(mark)) == 0 })
}

// limZombies lists the children of pid that exited and were not reaped.
func limZombies(pid int) []int {
	var z []int
	for _, c := range children(pid) {
		if isZombie(c) {
			z = append(z, c)
		}
	}
	return z
}

// limCPU is the CPU time pid has used (user and system).
func limCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	p, err := procfs.NewProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(st.CPUTime() * float64(time.Second))
}

// limLog is one JSON log line of the master.
type limLog struct {
	TS     time.Time `json:"ts"`
	Msg    string    `json:"msg"`
	Slot   *int      `json:"slot"`
	After  string    `json:"after"`
	Reason string    `json:"reason"`
	Error  string    `json:"error"`
}

// limLogs is every log line of p with message msg, in order.
func (p *proc) limLogs(msg string) []limLog {
	var out []limLog
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l limLog
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == msg {
			out = append(out, l)
		}
	}
	return out
}

// checkBackoff checks that the failed starts of slot in p's log follow the
// crash backoff: each wait twice the one before (up to the cap), and each
// attempt no earlier than the wait announced before it. It returns how
// many there were.
func checkBackoff(t *testing.T, p *proc, slot int) int {
	t.Helper()
	var fails []limLog
	for _, l := range p.limLogs("worker start failed; retrying") {
		if l.Slot != nil && *l.Slot == slot {
			fails = append(fails, l)
		}
	}
	for i := 1; i < len(fails); i++ {
		prev, cur := fails[i-1], fails[i]
		pa, err1 := time.ParseDuration(prev.After)
		ca, err2 := time.ParseDuration(cur.After)
		if err1 != nil || err2 != nil {
			t.Fatalf("slot %d: after %q, %q: want durations", slot, prev.After, cur.After)
		}
		if want := min(max(2*pa, 100*time.Millisecond), 10*time.Second); ca != want {
			t.Errorf("slot %d, failed start %d: waits %s after %s, want %s (the crash backoff)", slot, i+1, ca, pa, want)
		}
		// Log timestamps have millisecond precision.
		if gap := cur.TS.Sub(prev.TS); gap < pa-time.Millisecond {
			t.Errorf("slot %d, failed start %d came %s after the one before, which announced a wait of %s", slot, i+1, gap, pa)
		}
	}
	return len(fails)
}

// limQuietFDs returns pid's descriptors once two readings in a row agree
// (a descriptor the master opens for a moment, such as a control
// connection being closed, is gone).
func limQuietFDs(t *testing.T, pid int) map[int]string {
	t.Helper()
	prev := openFDs(t, pid)
	var cur map[int]string
	testkit.WaitFor(t, 10*time.Second, "the master's descriptors to settle", func() bool {
		cur = openFDs(t, pid)
		same := maps.Equal(prev, cur)
		prev = cur
		return same
	})
	return cur
}

// lowestFree is the lowest descriptor number not in fds.
func lowestFree(fds map[int]string) int {
	n := 0
	for _, used := fds[n]; used; _, used = fds[n] {
		n++
	}
	return n
}

// limExhaustFDs sets pid's soft RLIMIT_NOFILE to its lowest free
// descriptor number, so that it can open no descriptor at all, and returns
// its descriptors, that number and the limits it had. Only the soft limit:
// raising a lowered hard limit again needs CAP_SYS_RESOURCE.
func limExhaustFDs(t *testing.T, pid int) (fds map[int]string, limit int, orig unix.Rlimit) {
	t.Helper()
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &orig); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fds = limQuietFDs(t, pid)
		limit = lowestFree(fds)
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(limit), Max: orig.Max}, nil); err != nil {
			t.Fatal(err)
		}
		// Nothing below the limit came free meanwhile: none can now.
		if lowestFree(openFDs(t, pid)) >= limit {
			return fds, limit, orig
		}
		if time.Now().After(deadline) {
			t.Fatalf("master %d: descriptors below %d keep coming free", pid, limit)
		}
	}
}

// limSettledFDs waits until pid holds the descriptors want (same numbers,
// same files) and returns what it holds; it fails t when it does not
// within 10 s.
func limSettledFDs(t *testing.T, pid int, want map[int]string) map[int]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := openFDs(t, pid)
		if maps.Equal(got, want) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("master %d holds descriptors %v, want those it held before: %v", pid, got, want)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// limStatus asks p for its status within timeout.
func limStatus(p *proc, timeout time.Duration) (*supervisor.Status, error) {
	resp, err := supervisor.CallControl(controlPath(p.cmd), supervisor.Request{Command: "status"}, timeout)
	if err != nil {
		return nil, err
	}
	if !resp.OK || resp.Status == nil {
		return nil, fmt.Errorf("status: %+v", resp)
	}
	return resp.Status, nil
}

// limServes checks that n requests in a row are answered.
func limServes(t *testing.T, addr string, n int) {
	t.Helper()
	for i := range n {
		if _, err := get("http://" + addr + "/"); err != nil {
			t.Fatalf("request %d of %d: %v", i+1, n, err)
		}
	}
}

// RLIMIT_NOFILE, soft limit lowered on the running master to its lowest
// free descriptor number, so that it can open nothing: a killed worker's
// replacement cannot be forked (open /dev/null: EMFILE) and the control
// socket cannot accept. The master says so once each, backs off, keeps
// serving with the other worker, and once the limit is back it answers
// the client that waited, refills the pool, and holds the descriptors it
// held before. At boot, a limit too low for the master to start ends it
// with one line and nothing left behind.
func TestChaosLimitsOpenFiles(t *testing.T) {
	testkit.MaySkip("limits-exec")
	t.Parallel()
	t.Run("running", func(t *testing.T) {
		mark := limNewMark(t)
		cmd := quick(command(t, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app"))
		cmd.Env = append(cmd.Env, mark)
		p := startCmd(t, cmd)
		addr := p.ready()
		pid := p.cmd.Process.Pid
		before, free, orig := limExhaustFDs(t, pid)
		lifted := false
		lift := func() {
			if !lifted {
				lifted = true
				if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &orig, nil); err != nil {
					t.Error(err)
				}
			}
		}
		defer lift()
		t.Logf("master %d: %d descriptors, the lowest free is %d: soft RLIMIT_NOFILE %d -> %d", pid, len(before), free, orig.Cur, free)

		workers := children(pid)
		if len(workers) != 2 {
			t.Fatalf("children %v, want 2 workers", workers)
		}
		if err := syscall.Kill(workers[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		slot := p.waitLog("worker exited unexpectedly; replacing it", 10*time.Second)["slot"].(float64)
		exhausted := time.Now()
		cpu0 := limCPU(t, pid)
		fail := p.waitLog("worker start failed; retrying", 10*time.Second)
		if r, _ := fail["reason"].(string); !strings.Contains(r, "too many open files") || !strings.Contains(r, fmt.Sprintf("RLIMIT_NOFILE is %d", free)) {
			t.Errorf("failed start reason %q, want it to name EMFILE and the RLIMIT_NOFILE of %d", r, free)
		}
		// A client now waits in the socket's queue: the master cannot accept it.
		waited := time.Now()
		if _, err := limStatus(p, time.Second); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("status while the master has no descriptor left: %v, want no answer within 1s", err)
		}
		p.waitLog("control socket: cannot accept connections; retrying", 5*time.Second)
		limServes(t, addr, 20) // by the worker left
		// Failed starts keep backing off: 4 of them take 100+200+400 ms
		// after the first, 8 (the long form) 12.7 s.
		want := chaosCount(4, 8)
		testkit.WaitFor(t, 30*time.Second, fmt.Sprintf("%d failed starts", want), func() bool {
			return len(p.limLogs("worker start failed; retrying")) >= want
		})
		window := time.Since(exhausted)
		cpu := limCPU(t, pid) - cpu0
		fails := checkBackoff(t, p, int(slot))
		t.Logf("exhausted for %s: %d failed starts, master CPU %s (%.1f%%)", window.Round(time.Millisecond), fails, cpu, 100*cpu.Seconds()/window.Seconds())
		if cpu > window/4 {
			t.Errorf("master used %s of CPU in %s without descriptors: a busy loop", cpu, window)
		}

		lift()
		liftedAt := time.Now()
		testkit.WaitFor(t, 15*time.Second, "status answered again", func() bool {
			_, err := limStatus(p, 5*time.Second)
			return err == nil
		})
		t.Logf("status answered %s after the limit was lifted (%s after the first client began to wait)",
			time.Since(liftedAt).Round(time.Millisecond), time.Since(waited).Round(time.Millisecond))
		// The next attempt comes after the wait the last failure
		// announced, at most the backoff's cap of 10 s.
		testkit.WaitFor(t, 20*time.Second, "2 ready workers again", func() bool {
			st, err := limStatus(p, 5*time.Second)
			return err == nil && st.Ready == 2 && len(st.Pool) == 2
		})
		t.Logf("pool whole %s after the limit was lifted", time.Since(liftedAt).Round(time.Millisecond))
		if n := len(p.limLogs("control socket: cannot accept connections; retrying")); n != 1 {
			t.Errorf("%d lines saying the control socket cannot accept, want 1", n)
		}
		p.waitLog("control socket: accepting connections again", 5*time.Second)
		limServes(t, addr, 20)

		after := limSettledFDs(t, pid, before)
		t.Logf("descriptors: %d before, %d after", len(before), len(after))
		if kids := children(pid); len(kids) != 2 || len(limZombies(pid)) > 0 {
			t.Errorf("children %v (zombies %v), want 2 live workers", kids, limZombies(pid))
		}

		p.signal(syscall.SIGTERM)
		if code := p.wait(30 * time.Second); code != 0 {
			t.Errorf("exit code %d after TERM, want 0", code)
		}
		limNothingLeft(t, mark)
	})
	t.Run("boot", func(t *testing.T) {
		// 10 descriptors: stdio, the runtime's, and a few sockets; the
		// master needs about 17 (control socket, notify socket, listener,
		// their copies for an upgrade, the shim, a fork's pipe).
		mark := limNewMark(t)
		cmd := limitedCommand(t, "nofile=10", mark, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app")
		out, code := runToEnd(t, cmd)
		last := lastLine(out)
		if code != 1 || !strings.HasPrefix(last, "supervisor: ") || !strings.Contains(last, "too many open files") {
			t.Fatalf("exit %d, last line %q; want 1 and 'supervisor: ...too many open files'; output:\n%s", code, last, out)
		}
		if strings.Contains(out, "goroutine ") {
			t.Errorf("a stack trace in the output:\n%s", out)
		}
		limNothingLeft(t, mark)
		t.Logf("RLIMIT_NOFILE 10 at boot: %s", last)
	})
}

// limWorkerPy is a worker of exactly one thread (Python's standard
// library, no threads), so that the processes and threads of its uid can
// be counted: HTTP/1.0 on fd 3, READY=1 once serving. With CHAOS_GATE set
// it waits for that file to exist before it serves (at most 30 s).
const limWorkerPy = `import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
gate = os.environ.get("CHAOS_GATE")
end = time.monotonic() + 30
while gate and not os.path.exists(gate) and time.monotonic() < end:
    time.sleep(0.01)
s = socket.socket(fileno=3)
s.setblocking(True)
addr = os.environ.get("NOTIFY_SOCKET", "")
if addr.startswith("@"):
    addr = "\0" + addr[1:]
if addr:
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.sendto(b"READY=1", addr)
    n.close()
body = b"hello from pid %d\n" % os.getpid()
while True:
    c, _ = s.accept()
    try:
        c.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    c.close()
`

// limPython is the python3 the one-thread worker runs on, readable by any
// user (not one under root's home), or the test is skipped.
func limPython(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "/usr/local/bin/python3"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("needs a system python3 (/usr/bin/python3) for a worker of one thread")
	return ""
}

// limPublicDir is a directory any user may read and enter, removed when
// the test ends.
func limPublicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "chaos-limits-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// limWorker writes limWorkerPy into a public directory and returns the
// command that runs it.
func limWorker(t *testing.T) []string {
	t.Helper()
	py := limPython(t)
	path := filepath.Join(limPublicDir(t), "worker.py")
	if err := os.WriteFile(path, []byte(limWorkerPy), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{py, path}
}

// limFreeUID is a uid no process runs as, for a master whose RLIMIT_NPROC
// no other test's processes count against (nobody's would: other suites
// run workers as nobody at the same time).
func limFreeUID(t *testing.T) int {
	t.Helper()
	used := map[int]bool{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Uid:"); ok {
				for _, f := range strings.Fields(v) {
					n, _ := strconv.Atoi(f)
					used[n] = true
				}
			}
		}
	}
	for uid := 43000 + os.Getpid()%1000; uid < 60000; uid += 7 {
		if !used[uid] {
			return uid
		}
	}
	t.Fatal("no free uid between 43000 and 60000")
	return 0
}

// limTasks counts the processes and threads whose real uid is uid, as
// RLIMIT_NPROC does.
func limTasks(uid int) int {
	n := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		mine, threads := false, 0
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Uid:"); ok {
				f := strings.Fields(v)
				mine = len(f) > 0 && f[0] == strconv.Itoa(uid)
			}
			if v, ok := strings.CutPrefix(l, "Threads:"); ok {
				threads, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if mine {
			n += threads
		}
	}
	return n
}

// asUID makes cmd run as uid (and gid uid), with the control socket's
// runtime directory its own.
func asUID(t *testing.T, cmd *exec.Cmd, uid int) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	if err := os.Chown(filepath.Dir(filepath.Dir(controlPath(cmd))), uid, uid); err != nil {
		t.Fatal(err)
	}
}

// RLIMIT_NPROC, which counts every process and thread of the master's
// uid, its own threads included (the kernel does not apply it to root: the
// master runs as a uid of its own). The Go runtime aborts a master that
// cannot create a thread, taking every worker with it, so the master
// forks only while nprocReserve (8) of them are left (supervisor/limits.go).
// At boot, a pool that cannot fit ends the master with one line naming
// the limit. Running, a scale-up that other processes of the uid leave no
// room for backs off, the master and its workers keep serving, and once
// those processes are gone the pool fills; nothing is left at the end.
func TestChaosLimitsProcesses(t *testing.T) {
	testkit.MaySkip("limits-exec")
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the master as a uid of its own (RLIMIT_NPROC does not bind root)")
	}
	worker := limWorker(t)
	t.Parallel()
	uid := limFreeUID(t)
	t.Logf("master runs as uid %d", uid)

	t.Run("boot", func(t *testing.T) {
		// 24 one-thread workers and the master's ~10 threads need more
		// than the uid's 30.
		mark := limNewMark(t)
		cmd := limitedCommand(t, "nproc=30", mark, append([]string{"--bind", "127.0.0.1:0", "--workers", "24", "--"}, worker...)...)
		asUID(t, cmd, uid)
		out, code := runToEnd(t, cmd)
		last := lastLine(out)
		if code != 1 || !strings.HasPrefix(last, "supervisor: ") || !strings.Contains(last, "RLIMIT_NPROC 30") {
			t.Fatalf("exit %d, last line %q; want 1 and 'supervisor: ...RLIMIT_NPROC 30...'; output:\n%s", code, last, out)
		}
		if strings.Contains(out, "goroutine ") || strings.Contains(out, "pthread_create") {
			t.Errorf("the master crashed:\n%s", out)
		}
		limNothingLeft(t, mark)
		t.Logf("24 workers in RLIMIT_NPROC 30 at boot: %s", last)
	})

	t.Run("running", func(t *testing.T) {
		const limit = 40
		mark := limNewMark(t)
		cmd := limitedCommand(t, fmt.Sprintf("nproc=%d", limit), mark, append([]string{"--bind", "127.0.0.1:0", "--workers", "2", "--"}, worker...)...)
		asUID(t, cmd, uid)
		p := startCmd(t, cmd)
		addr := p.ready()
		pid := p.cmd.Process.Pid
		fds := limQuietFDs(t, pid)

		// Other processes of the uid take all but 4 of its limit.
		tasks := limTasks(uid)
		var ballast []*exec.Cmd
		defer func() {
			for _, b := range ballast {
				_ = b.Process.Kill()
				_ = b.Wait()
			}
		}()
		for range limit - 4 - tasks {
			b := exec.Command("/bin/sleep", "120")
			b.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
			if err := b.Start(); err != nil {
				t.Fatal(err)
			}
			ballast = append(ballast, b)
		}
		t.Logf("uid %d: %d processes and threads with the pool of 2, %d more of its own: %d of %d", uid, tasks, len(ballast), limTasks(uid), limit)

		resp, err := supervisor.CallControl(controlPath(p.cmd), supervisor.Request{Command: "scale", Scale: "4"}, 10*time.Second)
		if err != nil || !resp.OK {
			t.Fatalf("scale 4: %+v, %v", resp, err)
		}
		exhausted := time.Now()
		cpu0 := limCPU(t, pid)
		fail := p.waitLog("worker start failed; retrying", 10*time.Second)
		if r, _ := fail["reason"].(string); !strings.Contains(r, fmt.Sprintf("RLIMIT_NPROC %d", limit)) {
			t.Errorf("failed start reason %q, want it to name RLIMIT_NPROC %d", r, limit)
		}
		// 5 failed starts of a slot take 100+200+400 ms after the first
		// two, 8 (the long form) 6.3 s.
		want := chaosCount(5, 8)
		testkit.WaitFor(t, 30*time.Second, fmt.Sprintf("%d failed starts of each new slot", want), func() bool {
			n := map[int]int{}
			for _, l := range p.limLogs("worker start failed; retrying") {
				n[*l.Slot]++
			}
			return n[2] >= want && n[3] >= want
		})
		// The master and its two workers serve all along.
		st, err := limStatus(p, 2*time.Second)
		if err != nil || st.Ready != 2 || st.Workers != 4 {
			t.Fatalf("status while the uid is at its limit: %+v, %v; want 2 ready of 4", st, err)
		}
		limServes(t, addr, 20)
		window := time.Since(exhausted)
		cpu := limCPU(t, pid) - cpu0
		f2, f3 := checkBackoff(t, p, 2), checkBackoff(t, p, 3)
		t.Logf("at the limit for %s: %d+%d failed starts, master CPU %s (%.1f%%)", window.Round(time.Millisecond), f2, f3, cpu, 100*cpu.Seconds()/window.Seconds())
		if cpu > window/4 {
			t.Errorf("master used %s of CPU in %s at the limit: a busy loop", cpu, window)
		}
		if !testkit.Alive(pid) {
			t.Fatal("the master died at the limit")
		}

		// The other processes go: the pool fills.
		for _, b := range ballast {
			_ = b.Process.Kill()
			_ = b.Wait()
		}
		ballast = nil
		freed := time.Now()
		// Within the last announced wait (at most 10 s) and a boot.
		testkit.WaitFor(t, 20*time.Second, "4 ready workers", func() bool {
			st, err := limStatus(p, 5*time.Second)
			return err == nil && st.Ready == 4 && len(st.Pool) == 4
		})
		t.Logf("pool of 4 ready %s after the uid's other processes went", time.Since(freed).Round(time.Millisecond))
		limServes(t, addr, 20)
		limSettledFDs(t, pid, fds)
		if kids := children(pid); len(kids) != 4 || len(limZombies(pid)) > 0 {
			t.Errorf("children %v (zombies %v), want 4 live workers", kids, limZombies(pid))
		}
		p.signal(syscall.SIGTERM)
		if code := p.wait(30 * time.Second); code != 0 {
			t.Errorf("exit code %d after TERM, want 0", code)
		}
		limNothingLeft(t, mark)
		if n := limTasks(uid); n != 0 {
			t.Errorf("uid %d still has %d processes and threads", uid, n)
		}
	})
}

// limTmpfs mounts a tmpfs of 16 KiB on a fresh directory, unmounted when
// the test ends; it skips the test when mounting is not possible.
func limTmpfs(t *testing.T) string {
	t.Helper()
	dir := limPublicDir(t)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=16k,mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): the pid file cases need a small file system of their own", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// limFill fills the file system of dir: a file as large as it takes, and
// then not even 5 bytes fit.
func limFill(t *testing.T, dir string) {
	t.Helper()
	err := os.WriteFile(filepath.Join(dir, "fill"), make([]byte, 1<<20), 0o644)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling %s: %v, want ENOSPC", dir, err)
	}
	probe := filepath.Join(dir, "probe")
	err = os.WriteFile(probe, []byte("12345"), 0o644)
	os.Remove(probe)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("%s after filling: a small write got %v, want ENOSPC", dir, err)
	}
}

// limReadOnly remounts the file system of dir read-only.
func limReadOnly(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", dir, err)
	}
}

// limFiles lists the names in dir.
func limFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// A pid file that cannot be written is checked before anything is bound
// or started: the master exits 1 with one line naming the file and the
// cause (as nginx and Gunicorn refuse to start), and leaves no temporary
// file behind. One that fails later, when the master is ready (the disk
// filled meanwhile), is a warning: the master serves on. And a new master
// of an upgrade that cannot write it fails before it takes over, so the
// old master carries on, its pid file untouched.
func TestChaosLimitsPidFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	t.Parallel()
	atStart := func(t *testing.T, spoil func(*testing.T, string), want string) {
		dir := limTmpfs(t)
		spoil(t, dir)
		files := limFiles(t, dir)
		pidFile := filepath.Join(dir, "app.pid")
		mark := limNewMark(t)
		cmd := quick(command(t, "--pid", pidFile, "--bind", "127.0.0.1:0", "--", self(t), "example-app"))
		cmd.Env = append(cmd.Env, mark)
		began := time.Now()
		out, code := runToEnd(t, cmd)
		wantLine := "supervisor: pid file " + pidFile + ": cannot write it (" + want + "): give --pid a path in a writable directory with free space"
		if code != 1 || strings.TrimSpace(out) != wantLine {
			t.Fatalf("exit %d, output:\n%s\nwant exit 1 and the one line %q", code, out, wantLine)
		}
		if now := limFiles(t, dir); !slices.Equal(now, files) {
			t.Errorf("files in %s: %v, want %v (no temporary pid file left)", dir, now, files)
		}
		limNothingLeft(t, mark)
		t.Logf("exit 1 after %s: %s", time.Since(began).Round(time.Millisecond), wantLine)
	}
	t.Run("full at start", func(t *testing.T) { atStart(t, limFill, "no space left on device") })
	t.Run("read-only at start", func(t *testing.T) { atStart(t, limReadOnly, "read-only file system") })

	t.Run("full once ready", func(t *testing.T) {
		worker := limWorker(t)
		dir := limTmpfs(t)
		pidFile := filepath.Join(dir, "app.pid")
		gate := filepath.Join(limPublicDir(t), "gate")
		mark := limNewMark(t)
		cmd := quick(command(t, append([]string{"--pid", pidFile, "--bind", "127.0.0.1:0", "--workers", "2", "--ready", "notify", "--"}, worker...)...))
		cmd.Env = append(cmd.Env, mark, "CHAOS_GATE="+gate)
		p := startCmd(t, cmd)
		// Both workers started: the pid file was checked. They wait for
		// the gate to say READY=1; the disk fills first.
		testkit.WaitFor(t, 10*time.Second, "2 workers started", func() bool { return len(p.limLogs("worker started")) == 2 })
		limFill(t, dir)
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		addr := p.ready()
		warn := p.waitLog("after ready", 5*time.Second)
		if e, _ := warn["error"].(string); e != "pid file "+pidFile+" not written: no space left on device" {
			t.Errorf("warning %q, want the pid file and ENOSPC named", e)
		}
		if files := limFiles(t, dir); !slices.Equal(files, []string{"fill"}) {
			t.Errorf("files in %s: %v, want only the filler (no pid file, no temporary)", dir, files)
		}
		if st, err := limStatus(p, 5*time.Second); err != nil || st.Ready != 2 {
			t.Errorf("status: %+v, %v; want 2 ready", st, err)
		}
		limServes(t, addr, 10)
		p.signal(syscall.SIGTERM)
		if code := p.wait(30 * time.Second); code != 0 {
			t.Errorf("exit code %d after TERM, want 0", code)
		}
		limNothingLeft(t, mark)
	})

	t.Run("full before an upgrade", func(t *testing.T) {
		dir := limTmpfs(t)
		pidFile := filepath.Join(dir, "app.pid")
		u := startUpgradable(t, nil, "--pid", pidFile, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app")
		u.pidFile = pidFile
		old := u.cmd.Process.Pid
		if u.pid() != old {
			t.Fatalf("pid file names %d, want the master %d", u.pid(), old)
		}
		limFill(t, dir)
		out, code := u.upgrade()
		want := "pid file " + pidFile + ": cannot write it (no space left on device)"
		if code != 1 || !strings.Contains(out, want) {
			t.Fatalf("upgrade --wait: exit %d, %q; want 1 and a reason with %q", code, out, want)
		}
		st, err := u.status()
		if err != nil || st.Pid != old || st.Ready != 2 || st.Phase != "running" {
			t.Fatalf("status after the refused upgrade: %+v, %v; want master %d running with 2 ready", st, err, old)
		}
		if u.pid() != old {
			t.Errorf("pid file names %d, want the old master %d still", u.pid(), old)
		}
		if files := limFiles(t, dir); !slices.Equal(files, []string{"app.pid", "fill"}) {
			t.Errorf("files in %s: %v, want the pid file and the filler only", dir, files)
		}
		if n := len(u.logs("upgrade failed; this master carries on")); n != 1 {
			t.Errorf("%d 'upgrade failed' lines, want 1", n)
		}
		t.Logf("upgrade --wait: %s", out)
	})
}
