package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// The README's Python worker (testdata/protocol/worker.py, Debian's python3)
// reports X_REQUESTS and is recycled by --max-requests like a Go worker,
// replacement first: no request fails.
func TestPythonWorkerIsRecycled(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3")
	}
	worker, err := filepath.Abs("../../testdata/protocol/worker.py")
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--ready", "notify",
		"--max-requests", "50", "--max-requests-jitter", "10", "--", "/usr/bin/python3", worker)
	addr := p.ready()
	first := children(p.cmd.Process.Pid)
	stop := load(t, addr, 4)
	p.waitLogCount("recycling worker", 4, 30*time.Second)
	ok, failed := stop()
	t.Logf("%d requests ok, %d failed, %d recycles", ok, failed, p.countLogs("recycling worker"))
	if failed > 0 || ok == 0 {
		t.Errorf("%d requests failed (%d ok), want none", failed, ok)
	}
	if line := p.findLog("recycling worker"); line["reason"] != "max_requests" {
		t.Errorf("recycled for %v, want max_requests", line["reason"])
	}
	testkit.WaitFor(t, 10*time.Second, "the first workers to be gone", func() bool {
		for _, pid := range children(p.cmd.Process.Pid) {
			for _, f := range first {
				if pid == f {
					return false
				}
			}
		}
		return true
	})
}
