package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// upgraded is a master started by a test that upgrades it: its binary is a
// copy of its own, which a test may replace, and its output goes to a file,
// not a pipe (a new master outlives the process the test started, and Go
// dies of SIGPIPE writing to stderr once the pipe's reader is gone).
type upgraded struct {
	t       *testing.T
	dir     string
	bin     string // the binary the master was started from
	logPath string
	pidFile string
	control string
	cmd     *exec.Cmd
	done    chan struct{}
	mu      sync.Mutex
	masters map[int]bool // every master pid seen, for the cleanup
	maxWant int          // workers+max_surge: samples above it are described in bounds.errs
}

// startUpgradable starts a master from a private copy of the binary, with
// its own pid file and control socket, and waits until it is ready.
func startUpgradable(t *testing.T, env []string, args ...string) *upgraded {
	t.Helper()
	dir := t.TempDir()
	u := &upgraded{t: t, dir: dir, bin: filepath.Join(dir, "supervisor"), logPath: filepath.Join(dir, "log"),
		pidFile: filepath.Join(dir, "pid"), control: filepath.Join(dir, "ctl.sock"), done: make(chan struct{}), masters: map[int]bool{}}
	if err := copyExecutable(self(t), u.bin); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(u.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	u.cmd = exec.Command(u.bin, append([]string{"--pid", u.pidFile, "--control", u.control, "--log-format", "json"}, args...)...)
	// A -race build sleeps 1 s at exit by default (atexit_sleep_ms), in
	// every worker the handover stops, one after another.
	u.cmd.Env = append(append(os.Environ(), testkit.Use("supervisor"), "GORACE=atexit_sleep_ms=0"), env...)
	u.cmd.Stdout, u.cmd.Stderr = logf, logf
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	u.masters[u.cmd.Process.Pid] = true
	go func() { _ = u.cmd.Wait(); close(u.done) }()
	t.Cleanup(u.cleanup)
	u.waitLog("ready", 1, 30*time.Second)
	return u
}

// cleanup ends every master the test started, directly or through an
// upgrade: every process running the test's private copy of the binary
// (a new master whose old one died is re-parented away, and may never have
// been seen), and waits until they are gone.
func (u *upgraded) cleanup() {
	u.mu.Lock()
	pids := make([]int, 0, len(u.masters))
	for pid := range u.masters {
		pids = append(pids, pid)
	}
	u.mu.Unlock()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, _ := os.ReadFile(f)
		if argv0, _, _ := strings.Cut(string(b), "\x00"); argv0 == u.bin {
			if pid, err := strconv.Atoi(strings.Split(f, "/")[2]); err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	<-u.done
	testkit.WaitFor(u.t, 10*time.Second, "every master the test started to be gone", func() bool {
		return !slices.ContainsFunc(pids, testkit.Alive)
	})
	b, _ := os.ReadFile(u.logPath)
	if strings.Contains(string(b), "WARNING: DATA RACE") { // a -race build's masters
		u.t.Error("a master reported a data race")
	}
	if u.t.Failed() {
		u.t.Logf("supervisor output:\n%s", b)
	}
}

func copyExecutable(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

// replaceBinary puts body at the master's binary path the way a deploy
// does: a new file renamed into place.
func (u *upgraded) replaceBinary(body []byte) {
	u.t.Helper()
	tmp := u.bin + ".new"
	if err := os.WriteFile(tmp, body, 0o755); err != nil {
		u.t.Fatal(err)
	}
	if err := os.Rename(tmp, u.bin); err != nil {
		u.t.Fatal(err)
	}
}

// logs are the JSON log lines with this msg, decoded.
func (u *upgraded) logs(msg string) []map[string]any {
	f, err := os.Open(u.logPath)
	if err != nil {
		u.t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == msg {
			out = append(out, line)
		}
	}
	return out
}

func (u *upgraded) waitLog(msg string, n int, timeout time.Duration) map[string]any {
	u.t.Helper()
	var got []map[string]any
	testkit.WaitFor(u.t, timeout, fmt.Sprintf("%d log lines %q", n, msg), func() bool {
		got = u.logs(msg)
		return len(got) >= n
	})
	return got[n-1]
}

// pid is the pid the pid file names, 0 when it names none.
func (u *upgraded) pid() int {
	b, err := os.ReadFile(u.pidFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// status asks whichever master answers the control socket.
func (u *upgraded) status() (*supervisor.Status, error) {
	resp, err := supervisor.CallControl(u.control, supervisor.Request{Command: "status"}, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if resp.Status == nil {
		return nil, fmt.Errorf("status: no status: %s", resp.Error)
	}
	u.mu.Lock()
	u.masters[resp.Status.Pid] = true
	if resp.Status.Peer != nil {
		u.masters[resp.Status.Peer.Pid] = true
	}
	u.mu.Unlock()
	return resp.Status, nil
}

// client runs a client command against the master; output and exit code.
func (u *upgraded) client(args ...string) (string, int) {
	u.t.Helper()
	cmd := exec.Command(self(u.t), append(args, "--control", u.control)...)
	cmd.Env = append(os.Environ(), testkit.Use("supervisor"))
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		u.t.Fatal(err)
	}
	return strings.TrimSpace(string(out)), code
}

// upgrade runs `supervisor upgrade --wait` and records the new master.
func (u *upgraded) upgrade() (string, int) {
	u.t.Helper()
	out, code := u.client("upgrade", "--wait", "--timeout", "60s")
	if pid := u.pid(); pid > 0 {
		u.mu.Lock()
		u.masters[pid] = true
		u.mu.Unlock()
	}
	return out, code
}

// bounds is what a sampler saw across both masters.
type bounds struct {
	samples, unanswered, badPidFile int
	minReady, maxProcs              int
	both                            int // samples that saw two masters
	errs                            []string
}

// sample polls status, /proc and the pid file every 5 ms until stop is
// closed: the ready workers across both masters, their worker processes,
// and whether the pid file names a live master.
func (u *upgraded) sample(stop <-chan struct{}) <-chan bounds {
	out := make(chan bounds, 1)
	go func() {
		b := bounds{minReady: 1 << 30}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				out <- b
				return
			case <-tick.C:
			}
			b.samples++
			if pid := u.pid(); pid == 0 || !testkit.Alive(pid) {
				b.badPidFile++
			}
			st, err := u.status()
			if err != nil {
				b.unanswered++
				if len(b.errs) < 5 {
					b.errs = append(b.errs, err.Error())
				}
				continue
			}
			masters := []int{st.Pid}
			ready := st.Ready
			if st.Peer != nil {
				masters = append(masters, st.Peer.Pid)
				ready += st.Peer.Ready
				b.both++
			}
			// Two listings, each taking a moment: a worker in both was
			// alive all the time between them, with every other one in
			// both, so their intersection never counts more than were
			// alive at once.
			seen, again := map[int]bool{}, map[int]bool{}
			for _, m := range masters {
				u.workerProcs(m, seen)
			}
			for _, m := range masters {
				u.workerProcs(m, again)
			}
			maps.DeleteFunc(seen, func(pid int, _ bool) bool { return !again[pid] })
			procs := len(seen)
			if procs > u.maxWant && len(b.errs) < 5 {
				js, _ := json.Marshal(st)
				b.errs = append(b.errs, fmt.Sprintf("%d procs %v status %s", procs, seen, js))
			}
			b.minReady, b.maxProcs = min(b.minReady, ready), max(b.maxProcs, procs)
		}
	}()
	return out
}

// Under load, 10 upgrades in a row with 2 and with 4 workers: no request
// fails; sampled every 5 ms, never fewer than `workers` ready across both
// masters nor more than workers+max_surge worker processes; status always
// answered; the pid file always names a live master; generations keep
// counting; each new master says whom it upgraded from.
func TestUpgradeUnderLoad(t *testing.T) {
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprintf("workers=%d", n), func(t *testing.T) {
			u := startUpgradable(t, nil, "--bind", "127.0.0.1:0", "--workers", strconv.Itoa(n), "--max-surge", "1",
				"--", self(t), "example-app")
			addr, _ := u.waitLog("listening", 1, time.Second)["address"].(string)
			first := u.pid()
			u.maxWant = n + 1
			stopLoad := load(t, addr, 4)
			stopSampling := make(chan struct{})
			sampled := u.sample(stopSampling)
			var took []time.Duration
			for i := 1; i <= 10; i++ {
				before := u.pid()
				t0 := time.Now()
				out, code := u.upgrade()
				took = append(took, time.Since(t0))
				if code != 0 {
					t.Fatalf("upgrade %d: exit %d: %s", i, code, out)
				}
				if !strings.HasPrefix(out, "upgraded: master pid") {
					t.Errorf("upgrade %d says %q", i, out)
				}
				after := u.pid()
				if after == before || !testkit.Alive(after) {
					t.Fatalf("upgrade %d: pid file %d after, %d before", i, after, before)
				}
				testkit.WaitFor(t, 5*time.Second, "the old master to exit", func() bool { return !testkit.Alive(before) || isZombie(before) })
			}
			close(stopSampling)
			b := <-sampled
			ok, failed := stopLoad()
			t.Logf("10 upgrades of %d workers: %d requests ok, %d failed; client-side durations %v", n, ok, failed, took)
			t.Logf("%d samples (%d saw both masters): min ready %d, max worker processes %d, unanswered %d, bad pid file %d",
				b.samples, b.both, b.minReady, b.maxProcs, b.unanswered, b.badPidFile)
			if failed > 0 || ok == 0 {
				t.Errorf("%d requests failed (%d ok), want none", failed, ok)
			}
			if b.minReady < n || b.maxProcs > n+1 {
				t.Log(strings.Join(b.errs, "\n"))
				t.Errorf("sampled min ready %d (want >= %d), max processes %d (want <= %d)", b.minReady, n, b.maxProcs, n+1)
			}
			if b.unanswered > 0 || b.badPidFile > 0 {
				t.Errorf("%d status calls unanswered (%v), %d samples with a pid file naming no live master", b.unanswered, b.errs, b.badPidFile)
			}
			if b.both == 0 {
				t.Error("no sample caught an upgrade under way")
			}
			if f := getFacts(t, addr); f.Generation != "11" {
				t.Errorf("generation %q after 10 upgrades, want 11", f.Generation)
			}
			if line := u.logs("upgraded from pid " + strconv.Itoa(first)); len(line) != 1 {
				t.Errorf("%d log lines \"upgraded from pid %d\", want 1", len(line), first)
			}
		})
	}
}

// workerProcs adds the worker processes under master to seen: its
// children, and those of a new master among them (a child started from
// the master's binary).
func (u *upgraded) workerProcs(master int, seen map[int]bool) {
	for _, kid := range children(master) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", kid))
		if argv0, _, _ := strings.Cut(string(b), "\x00"); argv0 == u.bin {
			u.workerProcs(kid, seen)
		} else {
			seen[kid] = true
		}
	}
}

// isZombie says whether pid has exited and waits for its parent's wait.
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// upgradeConfig is a config file for upgrade tests: two example-app
// workers on 127.0.0.1:0; each extra "key: value" line replaces the
// default of its key.
func upgradeConfig(t *testing.T, path string, extra ...string) {
	t.Helper()
	lines := []string{`bind: ["127.0.0.1:0"]`, "workers: 2", "max_surge: 1", "ready_timeout: 3s", "metrics: 127.0.0.1:0",
		`command: ["` + self(t) + `", "example-app"]`}
	for _, e := range extra {
		key, _, _ := strings.Cut(e, ":")
		lines = slices.DeleteFunc(lines, func(l string) bool { return strings.HasPrefix(l, key+":") })
		lines = append(lines, e)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// metric is the value of one sample line of the master's /metrics.
func (u *upgraded) metric(line string) string {
	u.t.Helper()
	addr, _ := u.waitLog("metrics listening", 1, time.Second)["address"].(string)
	body, err := get("http://" + addr + "/metrics")
	if err != nil {
		u.t.Fatal(err)
	}
	for l := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), line+" "); ok {
			return v
		}
	}
	return ""
}

// A new master that fails before it takes over is discarded: the old one
// keeps serving every request, keeps the pid file and the control socket,
// says why (upgrade --wait exits 1 with the reason; a log line, a metric),
// and upgrades fine once the cause is gone. While one upgrade is under
// way, another is refused.
func TestUpgradeFailureLeavesTheOldMaster(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(u *upgraded, cfg string) // makes the next upgrade fail
		mend   func(u *upgraded, cfg string)
		reason string
		slow   bool // fails slowly enough to try a second upgrade meanwhile
	}{
		{name: "binary exits 1", reason: "exit status 1",
			break_: func(u *upgraded, _ string) { u.replaceBinary([]byte("#!/bin/sh\nexit 1\n")) },
			mend:   func(u *upgraded, _ string) { u.replaceBinary(mustRead(u.t, self(u.t))) }},
		{name: "binary never ready", reason: "timed out", slow: true,
			break_: func(u *upgraded, _ string) { u.replaceBinary([]byte("#!/bin/sh\nexec sleep 60\n")) },
			mend:   func(u *upgraded, _ string) { u.replaceBinary(mustRead(u.t, self(u.t))) }},
		{name: "config invalid", reason: `unknown key "wrokers"`,
			break_: func(u *upgraded, cfg string) { upgradeConfig(u.t, cfg, "wrokers: 3") },
			mend:   func(u *upgraded, cfg string) { upgradeConfig(u.t, cfg) }},
		{name: "canary exits", reason: "exited with status 3 before it was ready",
			break_: func(u *upgraded, cfg string) { upgradeConfig(u.t, cfg, `command: ["/bin/sh", "-c", "exit 3"]`) },
			mend:   func(u *upgraded, cfg string) { upgradeConfig(u.t, cfg) }},
		{name: "canary not ready in time", reason: "not ready within 1s", slow: true,
			break_: func(u *upgraded, cfg string) {
				upgradeConfig(u.t, cfg, "ready_timeout: 1s", `command: ["`+self(u.t)+`", "example-app", "--boot-delay", "30s"]`)
			},
			mend: func(u *upgraded, cfg string) { upgradeConfig(u.t, cfg) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := filepath.Join(t.TempDir(), "supervisor.yaml")
			upgradeConfig(t, cfg)
			u := startUpgradable(t, nil, "--config", cfg)
			addr, _ := u.waitLog("listening", 1, time.Second)["address"].(string)
			old := u.pid()
			stopLoad := load(t, addr, 2)
			tc.break_(u, cfg)
			waited := make(chan [2]any, 1)
			go func() { out, code := u.upgrade(); waited <- [2]any{out, code} }()
			if tc.slow {
				u.waitLog("upgrade: starting a new master", 1, 10*time.Second)
				if out, code := u.client("upgrade"); code == 0 || !strings.Contains(out, "an upgrade is under way") {
					t.Errorf("a second upgrade during the first: exit %d: %s", code, out)
				}
			}
			r := testkit.Recv(t, waited, 30*time.Second, "upgrade --wait")
			out, code := r[0].(string), r[1].(int)
			ok, failed := stopLoad()
			t.Logf("upgrade --wait: exit %d: %s; %d requests ok, %d failed", code, out, ok, failed)
			if code != 1 || !strings.Contains(out, tc.reason) {
				t.Errorf("upgrade --wait exit %d, %q; want 1 and a reason with %q", code, out, tc.reason)
			}
			if failed > 0 || ok == 0 {
				t.Errorf("%d requests failed (%d ok), want none", failed, ok)
			}
			if pid := u.pid(); pid != old {
				t.Errorf("pid file names %d, want the old master %d", pid, old)
			}
			st, err := u.status()
			if err != nil || st.Pid != old || st.Phase != "running" || st.Ready != 2 || st.Upgrade != "" || !strings.Contains(st.LastUpgrade, tc.reason) {
				t.Errorf("status after the failed upgrade: %v %+v", err, st)
			}
			if n := len(u.logs("upgrade failed; this master carries on")); n != 1 {
				t.Errorf("%d log lines for the failure, want 1", n)
			}
			if v := u.metric(`supervisor_upgrades_total{result="failed"}`); v != "1" {
				t.Errorf("upgrades_total failed = %q, want 1", v)
			}
			tc.mend(u, cfg)
			if out, code := u.upgrade(); code != 0 {
				t.Errorf("upgrade once mended: exit %d: %s", code, out)
			}
			if pid := u.pid(); pid == old {
				t.Error("the pid file still names the old master after a good upgrade")
			}
			getFacts(t, addr)
			// The metrics port was handed over: the new master answers it.
			testkit.WaitFor(t, 10*time.Second, "the new master's upgrades_total succeeded 1 on the same port", func() bool {
				return u.metric(`supervisor_upgrades_total{result="succeeded"}`) == "1"
			})
		})
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
