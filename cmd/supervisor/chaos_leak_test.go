package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/supervisor"
)

// openFDCount is the number of descriptors pid has open.
func openFDCount(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}

// threadCount is pid's number of threads (Threads: in /proc/PID/status).
func threadCount(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Threads:"); ok {
			return strconv.Atoi(strings.TrimSpace(rest))
		}
	}
	return 0, fmt.Errorf("no Threads: in /proc/%d/status", pid)
}

// goroutineCount is the master's go_goroutines, from its --metrics port at
// maddr (the Go collector is registered, supervisor/metrics.go): the
// goroutines of the master's own runtime. The scrape itself always adds
// the same few (its connection and handler), so counts compare.
func goroutineCount(maddr string) (int, error) {
	code, body, err := fetch(client, "http://"+maddr+"/metrics")
	if err != nil || code != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics: %d %v", code, err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, err := strconv.ParseFloat(rest, 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("no go_goroutines in /metrics")
}

// steadyCount is the least of five readings of read, taken 20 ms apart:
// the descriptor and goroutine of a connection the master has just
// answered (a status call, a scrape) may linger a moment after the
// answer, a leaked one stays in every reading.
func steadyCount(t *testing.T, read func() (int, error)) int {
	t.Helper()
	least := -1
	for i := range 5 {
		if i > 0 {
			time.Sleep(20 * time.Millisecond) // the spacing of the readings, not a wait for a condition
		}
		n, err := read()
		if err != nil {
			t.Fatal(err)
		}
		if least < 0 || n < least {
			least = n
		}
	}
	return least
}

// waitCount polls read until ok holds for what it reads and returns that
// reading; past timeout it fails t with the last one.
func waitCount(t *testing.T, what string, timeout time.Duration, read func() (int, error), ok func(int) bool) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n, err := read()
		if err != nil {
			t.Fatal(err)
		}
		if ok(n) {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %d", timeout, what, n)
		}
		time.Sleep(10 * time.Millisecond) // the poll interval of testkit.WaitFor
	}
}

// leakThreadSlack is how many more threads the master may have after the
// reloads than after the warm-up. Each worker's thread (its goroutine is
// locked to it for the worker's life, DESIGN §5) ends with the worker, but
// the Go runtime never ends an idle thread it made for a blocking system
// call: the most system calls that ever blocked at once (forks, the
// reaper, /proc scans, the notify socket) sets the count, and one reload
// among many may overlap them once more than the warm-up did. A thread
// per reload, or per worker, is far more than this.
const leakThreadSlack = 3

// 60 reloads (1,000 in the long form) of 2 workers, each waited for with
// reload --wait over the control socket, leave the master's descriptors
// (/proc/PID/fd) and goroutines (go_goroutines on --metrics) where they
// were after a warm-up of 5 reloads, and its threads (/proc/PID/status)
// within leakThreadSlack of it. Each count is taken once the pool has
// settled, its old workers gone. The descriptors of the steered bind's
// group are counted apart (status says how many): it holds two sockets,
// and a third from a reload that came while the workers the one before
// replaced still drained until a later reload frees it; at most one per
// generation that can live at once (workers + max_surge + 1).
func TestChaosReloadLeaks(t *testing.T) {
	const workers, warmup = 2, 5
	reloads := chaosCount(60, 1000)
	p := startQuick(t, "--bind", "127.0.0.1:0", "--workers", strconv.Itoa(workers), "--max-surge", "1",
		"--metrics", "127.0.0.1:0", "--", self(t), "example-app")
	p.ready()
	maddr := p.metricsAddr()
	pid := p.cmd.Process.Pid
	var slowest time.Duration
	reload := func(i int) {
		t.Helper()
		t0 := time.Now()
		resp, err := supervisor.CallControl(controlPath(p.cmd), supervisor.Request{Command: "reload", Wait: true}, 60*time.Second)
		if err != nil || !resp.OK {
			t.Fatalf("reload %d: %v %+v", i+1, err, resp)
		}
		slowest = max(slowest, time.Since(t0))
	}
	groupSockets := func() int {
		n := 0
		for _, g := range p.controlStatus().Steer {
			n += len(g.Sockets)
		}
		return n
	}
	fds := func() (int, error) {
		n, err := openFDCount(pid)
		return n - groupSockets(), err
	}
	threads := func() (int, error) { return threadCount(pid) }
	goroutines := func() (int, error) { return goroutineCount(maddr) }

	bootFDs, bootThreads, bootGoroutines := steadyCount(t, fds), steadyCount(t, threads), steadyCount(t, goroutines)
	for i := range warmup {
		reload(i)
	}
	settled(t, p, workers, 10*time.Second)
	fdsBefore, threadsBefore, goroutinesBefore := steadyCount(t, fds), steadyCount(t, threads), steadyCount(t, goroutines)

	t0 := time.Now()
	for i := range reloads {
		reload(warmup + i)
	}
	took := time.Since(t0)
	settle := settled(t, p, workers, 10*time.Second)
	fdsAfter := waitCount(t, "the master's descriptors back to their count after the warm-up", 10*time.Second, fds,
		func(n int) bool { return n == fdsBefore })
	goroutinesAfter := waitCount(t, "the master's goroutines back to their count after the warm-up", 10*time.Second, goroutines,
		func(n int) bool { return n <= goroutinesBefore })
	threadsAfter := waitCount(t, fmt.Sprintf("the master's threads within %d of their count after the warm-up", leakThreadSlack), 10*time.Second, threads,
		func(n int) bool { return n <= threadsBefore+leakThreadSlack })

	t.Logf("%d reloads in %s (%s each, slowest %s), settled %s after the last",
		reloads, took.Round(time.Millisecond), (took / time.Duration(reloads)).Round(time.Millisecond),
		slowest.Round(time.Millisecond), settle.Round(time.Millisecond))
	t.Logf("at boot / after %d warm-up reloads / after %d more: descriptors %d / %d / %d (and the steered group's sockets: %d after), threads %d / %d / %d, goroutines %d / %d / %d",
		warmup, reloads, bootFDs, fdsBefore, fdsAfter, groupSockets(), bootThreads, threadsBefore, threadsAfter, bootGoroutines, goroutinesBefore, goroutinesAfter)
	if n := groupSockets(); n < 2 || n > workers+1+1 {
		t.Errorf("the steered group holds %d sockets, want 2 to %d (one per generation that can live at once)", n, workers+1+1)
	}
	if st := p.controlStatus(); st.Generation != 1+warmup+reloads {
		t.Errorf("generation %d after %d reloads, want %d", st.Generation, warmup+reloads, 1+warmup+reloads)
	}
}
