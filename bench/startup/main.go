// Command startup measures the master itself: the time from exec to N ready
// workers of the example app, the master's RSS once ready, and its CPU time
// over an idle period.
//
//	go build -o bin/supervisor ./cmd/supervisor
//	go run ./bench/startup -bin bin/supervisor -workers 2,32 -idle 30s
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

func main() {
	bin := flag.String("bin", "bin/supervisor", "the supervisor binary")
	counts := flag.String("workers", "2,32", "comma-separated worker counts")
	idle := flag.Duration("idle", 30*time.Second, "idle period for the CPU figure")
	flag.Parse()
	for _, s := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(s)
		if err == nil {
			err = measure(*bin, n, *idle)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "startup:", err)
			os.Exit(1)
		}
	}
}

func measure(bin string, n int, idle time.Duration) error {
	cmd := exec.Command(bin, "--bind", "127.0.0.1:0", "--workers", strconv.Itoa(n), "--log-format", "json", "--", bin, "example-app")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	ready := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), `"msg":"ready"`) {
				ready <- time.Since(began)
			}
		}
	}()
	var took time.Duration
	select {
	case took = <-ready:
	case <-time.After(60 * time.Second):
		return fmt.Errorf("%d workers: not ready within 60s", n)
	}
	pid := cmd.Process.Pid
	rss, err := rssKiB(pid)
	if err != nil {
		return err
	}
	cpu0, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	time.Sleep(idle) // the idle period being measured
	cpu1, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	const hz = 100 // USER_HZ on Linux
	cpu := time.Duration(cpu1-cpu0) * time.Second / hz
	fmt.Printf("workers=%d start_to_ready=%s master_rss=%.1fMiB idle_cpu=%s over %s (%.3f%%)\n",
		n, took.Round(time.Millisecond), float64(rss)/1024, cpu, idle, 100*cpu.Seconds()/idle.Seconds())
	return nil
}

// rssKiB is the process's resident memory (VmRSS) in KiB.
func rssKiB(pid int) (int, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, err
	}
	return int(st.VmRSS / 1024), nil
}

// cpuTicks is the process's user+system time in clock ticks.
func cpuTicks(pid int) (int, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return int(st.UTime + st.STime), nil
}
