package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
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
	waitFor(p.t, timeout, "log "+msg, func() bool { return p.countLogs(msg) >= n })
}

// Under continuous requests (a new connection each), 10 HUP reloads: every
// request succeeds and every worker pid changes.
func TestHUPReloadsUnderLoad(t *testing.T) {
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--", self, "example-app")
	addr := p.ready()
	first := children(p.cmd.Process.Pid)
	stop := load(t, addr, 4)
	for i := 1; i <= 10; i++ {
		p.signal(syscall.SIGHUP)
		p.waitLogCount("reload succeeded", i, 30*time.Second)
	}
	ok, failed := stop()
	t.Logf("%d requests ok, %d failed during 10 reloads", ok, failed)
	if failed > 0 || ok == 0 {
		t.Errorf("%d requests failed (%d ok), want none", failed, ok)
	}
	waitFor(t, 10*time.Second, "two workers", func() bool { return len(children(p.cmd.Process.Pid)) == 2 })
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
	write("bind: [\"127.0.0.1:0\"]\nworkers: 2\ncommand: [\"" + self + "\", \"example-app\"]\n")
	p := start(t, "--config", path)
	addr := p.ready()
	if n := len(children(p.cmd.Process.Pid)); n != 2 {
		t.Fatalf("%d workers, want 2", n)
	}
	write("bind: [\"127.0.0.1:0\"]\nworkers: 3\ncommand: [\"" + self + "\", \"example-app\"]\n")
	p.signal(syscall.SIGHUP)
	p.waitLogCount("reload succeeded", 1, 30*time.Second)
	waitFor(t, 10*time.Second, "3 workers", func() bool { return len(children(p.cmd.Process.Pid)) == 3 })
	distinctWorkers(t, addr, 3)
	serving := children(p.cmd.Process.Pid)

	write("bind: [\"127.0.0.1:0\"]\nworkers: 3\nworker: 4\ncommand: [\"" + self + "\", \"example-app\"]\n")
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
