package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// threadNices is the nice value of every thread of pid (field 19 of
// /proc/PID/task/TID/stat).
func threadNices(pid int) []int {
	var out []int
	stats, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 16 {
			if n, err := strconv.Atoi(fields[16]); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// A booting worker runs --boot-nice nicer than the master, every thread of
// it; once ready, every thread is back at the master's nice value (the
// test runs as root, which may raise it back).
func TestBootNiceUntilReady(t *testing.T) {
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "1", "--boot-nice", "10",
		"--", self(t), "example-app", "--boot-delay", "3s")
	var worker int
	testkit.WaitFor(t, 10*time.Second, "a worker running the example app", func() bool {
		for _, kid := range children(p.cmd.Process.Pid) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", kid))
			if strings.Contains(string(b), "example-app") && !strings.Contains(string(b), "__exec-shim") {
				worker = kid
				return len(threadNices(kid)) > 1 // the Go runtime's threads exist
			}
		}
		return false
	})
	booting := threadNices(worker)
	var master []int
	// The forking thread is niced for the fork only: set back as soon as
	// the fork returned.
	testkit.WaitFor(t, 2*time.Second, "every thread of the master at nice 0", func() bool {
		master = threadNices(p.cmd.Process.Pid)
		return !slices.ContainsFunc(master, func(n int) bool { return n != 0 })
	})
	p.ready()
	// Set back at ready, and once more 50 ms later for a thread forked
	// during the first call (supervisor.reniceAgain): a thread left niced
	// for good fails here.
	var ready []int
	testkit.WaitFor(t, 2*time.Second, "every thread of the ready worker at nice 0", func() bool {
		ready = threadNices(worker)
		return !slices.ContainsFunc(ready, func(n int) bool { return n != 0 })
	})
	t.Logf("master threads %v; worker threads while booting %v, once ready %v", master, booting, ready)
	for _, n := range booting {
		if n != 10 {
			t.Errorf("a booting worker's thread at nice %d, want 10: %v", n, booting)
		}
	}
}
