package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// countLogs counts JSON log lines with this msg.
func (p *proc) countLogs(msg string) int {
	n := 0
	for _, line := range strings.Split(p.out.String(), "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(line), &l) == nil && l["msg"] == msg {
			n++
		}
	}
	return n
}

// waitLogCount waits until msg was logged n times.
func (p *proc) waitLogCount(msg string, n int, timeout time.Duration) {
	p.t.Helper()
	testkit.WaitFor(p.t, timeout, "log "+msg, func() bool { return p.countLogs(msg) >= n })
}

// Under continuous requests (a new connection each), 10 HUP reloads: every
// request succeeds and every worker pid changes.
func TestHUPReloadsUnderLoad(t *testing.T) {
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app")
	addr := p.ready()
	first := children(p.cmd.Process.Pid)
	stop := load(t, addr, 4)
	p.reloads(10, 30*time.Second)
	ok, failed := stop()
	t.Logf("%d requests ok, %d failed during 10 reloads", ok, failed)
	if failed > 0 || ok == 0 {
		t.Errorf("%d requests failed (%d ok), want none", failed, ok)
	}
	testkit.WaitFor(t, 10*time.Second, "two workers", func() bool { return len(children(p.cmd.Process.Pid)) == 2 })
	for _, pid := range children(p.cmd.Process.Pid) {
		if slices.Contains(first, pid) {
			t.Errorf("worker %d from before the reloads still runs", pid)
		}
	}
	if f := getFacts(t, addr); f.Generation != "11" {
		t.Errorf("generation %q after 10 reloads, want 11", f.Generation)
	}
}

// The config file is re-read on HUP: 2 workers edited to 3 ends with 3; an
// invalid edit leaves the 3 serving and says why.
func TestReloadRereadsTheConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "supervisor.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("bind: [\"127.0.0.1:0\"]\nworkers: 2\ncommand: [\"" + self(t) + "\", \"example-app\"]\n")
	p := start(t, "--config", path)
	addr := p.ready()
	if n := len(children(p.cmd.Process.Pid)); n != 2 {
		t.Fatalf("%d workers, want 2", n)
	}
	write("bind: [\"127.0.0.1:0\"]\nworkers: 3\ncommand: [\"" + self(t) + "\", \"example-app\"]\n")
	p.signal(syscall.SIGHUP)
	p.waitLogCount("reload succeeded", 1, 30*time.Second)
	testkit.WaitFor(t, 10*time.Second, "3 workers", func() bool { return len(children(p.cmd.Process.Pid)) == 3 })
	distinctWorkers(t, addr, 3)
	serving := children(p.cmd.Process.Pid)

	write("bind: [\"127.0.0.1:0\"]\nworkers: 3\nworker: 4\ncommand: [\"" + self(t) + "\", \"example-app\"]\n")
	p.signal(syscall.SIGHUP)
	line := p.waitLog("reload failed", 10*time.Second)
	if e, _ := line["error"].(string); !strings.Contains(e, `unknown key "worker"`) || !strings.Contains(e, ":3:") {
		t.Errorf("reload failure says %q, want the unknown key and its line", e)
	}
	if got := children(p.cmd.Process.Pid); !sameSet(got, serving) {
		t.Errorf("workers %v after a failed reload, want the same %v", got, serving)
	}
	distinctWorkers(t, addr, 3)
}

func sameSet(a, b []int) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// client runs a client command against the master p and returns its
// output and exit code.
func (p *proc) client(args ...string) (string, int) {
	p.t.Helper()
	return runToEnd(p.t, command(p.t, append(args, "--control", controlPath(p.cmd))...))
}

// A broken deploy under continuous requests: every request succeeds, the
// old workers keep serving, `reload --wait` exits non-zero naming the
// reason; fixing the deploy and reloading again succeeds.
func TestBrokenDeployIsRolledBack(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken")
	// The deploy: a wrapper that is the app, unless the new code is bad.
	app := writeScript(t, fmt.Sprintf("if [ -e %s ]; then echo 'app: cannot import settings' >&2; exit 3; fi\nexec %s example-app\n", broken, self(t)))
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--", app)
	addr := p.ready()
	old := children(p.cmd.Process.Pid)
	stop := load(t, addr, 4)
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := p.client("reload", "--wait")
	if code == 0 || !strings.Contains(out, "rolled back") || !strings.Contains(out, "exited with status 3 before it was ready") {
		t.Fatalf("reload --wait: exit %d, output %q; want non-zero and the reason", code, out)
	}
	testkit.WaitFor(t, 10*time.Second, "the old workers alone", func() bool { return sameSet(children(p.cmd.Process.Pid), old) })
	st := p.statusJSON()
	if st.Generation != 1 || !strings.Contains(st.LastReload, "rolled back") {
		t.Errorf("status after the rollback: generation %d, last reload %q", st.Generation, st.LastReload)
	}
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	if out, code := p.client("reload", "--wait"); code != 0 {
		t.Fatalf("fixed reload: exit %d: %s", code, out)
	}
	ok, failed := stop()
	t.Logf("%d requests ok, %d failed", ok, failed)
	if failed > 0 || ok == 0 {
		t.Errorf("%d requests failed (%d ok), want none", failed, ok)
	}
	// The old workers were asked to stop when the reload succeeded; they
	// drain and exit.
	testkit.WaitFor(t, 10*time.Second, "the old workers to be gone", func() bool {
		return !slices.ContainsFunc(children(p.cmd.Process.Pid), func(pid int) bool { return slices.Contains(old, pid) })
	})
}

// statusJSON is what `supervisor status --json` prints.
type statusJSON struct {
	Generation int    `json:"generation"`
	Target     int    `json:"target"`
	Phase      string `json:"phase"`
	Workers    int    `json:"workers"`
	Ready      int    `json:"ready"`
	LastReload string `json:"last_reload"`
	Pool       []struct {
		Pid   int    `json:"pid"`
		State string `json:"state"`
	} `json:"pool"`
}

func (p *proc) statusJSON() statusJSON {
	p.t.Helper()
	out, code := p.client("status", "--json")
	var st statusJSON
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		p.t.Fatalf("status --json: exit %d: %s", code, out)
	}
	return st
}

// During rollouts, sampled through `status --json`: never more than
// workers+max_surge processes, never fewer than workers ready.
func TestRolloutBoundsSampledByStatus(t *testing.T) {
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "4", "--max-surge", "2", "--", self(t), "example-app", "--boot-delay", "200ms")
	p.ready()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.reloads(3, 30*time.Second)
	}()
	samples, busy := 0, 0
	for {
		select {
		case <-done:
			t.Logf("%d status samples, %d during a rollout", samples, busy)
			if busy == 0 {
				t.Error("no sample caught a rollout under way")
			}
			return
		default:
		}
		st := p.statusJSON()
		samples++
		if st.Target != st.Generation {
			busy++
		}
		if len(st.Pool) > 4+2 || st.Ready < 4 {
			t.Fatalf("sample %d: %d processes, %d ready; want at most 6 and at least 4: %+v", samples, len(st.Pool), st.Ready, st)
		}
	}
}

// `supervisor scale` changes the pool through the control socket.
func TestScaleCommand(t *testing.T) {
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app")
	p.ready()
	if out, code := p.client("scale", "+1"); code != 0 {
		t.Fatalf("scale +1: exit %d: %s", code, out)
	}
	testkit.WaitFor(t, 10*time.Second, "3 ready workers", func() bool { st := p.statusJSON(); return st.Ready == 3 && len(st.Pool) == 3 })
	if out, code := p.client("scale", "1"); code != 0 {
		t.Fatalf("scale 1: exit %d: %s", code, out)
	}
	testkit.WaitFor(t, 10*time.Second, "1 worker", func() bool { return len(children(p.cmd.Process.Pid)) == 1 })
	if out, code := p.client("stop"); code != 0 {
		t.Fatalf("stop: exit %d: %s", code, out)
	}
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after stop", code)
	}
}
