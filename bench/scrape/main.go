// Command scrape measures whether scraping the master delays its event
// loop. It runs the real supervisor binary with -workers example-app
// workers and --metrics on 127.0.0.1, then does -rollouts reloads
// (`reload --wait`), alternating without and with a scraper that GETs
// /metrics -rate times a second. Throughout each rollout a probe asks
// /health/live every 10 ms: that request wakes the loop and is answered
// at the end of its next turn, so its round trip is the loop's event
// latency. It prints, per mode, the rollout durations and the probe's
// p50/p99/max, and the with/without ratios (the machine is noisy: compare
// the ratios of one run).
//
//	go build -o bin/supervisor ./cmd/supervisor
//	go run ./bench/scrape -bin bin/supervisor -workers 256 -rollouts 6 -rate 10
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/supervisor-dev/supervisor/supervisor"
)

type sample struct {
	rollout time.Duration
	probes  []time.Duration // /health/live round trips during the rollout
	scrapes int
	failed  int // probes or scrapes that failed
}

func main() {
	bin := flag.String("bin", "bin/supervisor", "the supervisor binary")
	n := flag.Int("workers", 256, "workers")
	rollouts := flag.Int("rollouts", 6, "rollouts, alternating without and with scrapes")
	rate := flag.Int("rate", 10, "scrapes per second in the scraping mode")
	flag.Parse()
	if err := run(*bin, *n, *rollouts, *rate); err != nil {
		fmt.Fprintln(os.Stderr, "scrape:", err)
		os.Exit(1)
	}
}

func run(bin string, n, rollouts, rate int) error {
	dir, err := os.MkdirTemp("", "bench-scrape-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	control := filepath.Join(dir, "control.sock")
	cmd := exec.Command(bin, "--bind", "127.0.0.1:0", "--workers", strconv.Itoa(n), "--metrics", "127.0.0.1:0",
		"--control", control, "--log-format", "json", "--ready-timeout", "120s", "--", bin, "example-app")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	addr, err := metricsAddr(stderr, 2*time.Minute)
	if err != nil {
		return err
	}
	fmt.Printf("go run ./bench/scrape -workers %d -rollouts %d -rate %d\n", n, rollouts, rate)
	fmt.Printf("%s/%s, %d CPUs, %s; %d example-app workers, /health/live probed every 10ms during each rollout\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), n)
	base := "http://" + addr
	by := map[bool][]sample{}
	for i := range rollouts {
		scraping := i%2 == 1
		s, err := rollout(control, base, scraping, rate)
		if err != nil {
			return err
		}
		by[scraping] = append(by[scraping], s)
		fmt.Printf("  rollout %d, scrapes %-3v: %s, %d probes, %d scrapes, %d failed\n", i+1, scraping, s.rollout.Round(time.Millisecond), len(s.probes), s.scrapes, s.failed)
	}
	fmt.Println()
	fmt.Println("mode              rollouts  median rollout  probe p50  probe p99  probe max  failed")
	stats := map[bool][4]time.Duration{}
	for _, scraping := range []bool{false, true} {
		ss := by[scraping]
		var durs, probes []time.Duration
		failed := 0
		for _, s := range ss {
			durs = append(durs, s.rollout)
			probes = append(probes, s.probes...)
			failed += s.failed
		}
		st := [4]time.Duration{quantile(durs, 0.5), quantile(probes, 0.5), quantile(probes, 0.99), quantile(probes, 1)}
		stats[scraping] = st
		mode := "no scrapes"
		if scraping {
			mode = fmt.Sprintf("%d scrapes/s", rate)
		}
		fmt.Printf("%-16s  %8d  %14s  %9s  %9s  %9s  %6d\n", mode, len(ss), st[0].Round(time.Millisecond), ms(st[1]), ms(st[2]), ms(st[3]), failed)
	}
	with, without := stats[true], stats[false]
	fmt.Printf("\nwith/without: rollout %.2f, probe p50 %.2f, p99 %.2f\n",
		ratio(with[0], without[0]), ratio(with[1], without[1]), ratio(with[2], without[2]))
	return nil
}

// rollout does one reload --wait while probing /health/live (and
// scraping /metrics when scraping) and returns what it measured.
func rollout(control, base string, scraping bool, rate int) (sample, error) {
	var s sample
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 5 * time.Second}
	wg.Go(func() { // the probe
		every(10*time.Millisecond, stop, func() {
			began := time.Now()
			ok := get(client, base+"/health/live")
			mu.Lock()
			defer mu.Unlock()
			if ok {
				s.probes = append(s.probes, time.Since(began))
			} else {
				s.failed++
			}
		})
	})
	if scraping {
		wg.Go(func() {
			every(time.Second/time.Duration(rate), stop, func() {
				ok := get(client, base+"/metrics")
				mu.Lock()
				defer mu.Unlock()
				s.scrapes++
				if !ok {
					s.failed++
				}
			})
		})
	}
	began := time.Now()
	resp, err := supervisor.CallControl(control, supervisor.Request{Command: "reload", Wait: true}, 5*time.Minute)
	s.rollout = time.Since(began)
	close(stop)
	wg.Wait()
	if err == nil && !resp.OK {
		err = fmt.Errorf("reload: %s", resp.Error)
	}
	return s, err
}

// every calls f once per period until stop is closed.
func every(period time.Duration, stop <-chan struct{}, f func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			f()
		}
	}
}

func get(c *http.Client, url string) bool {
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// metricsAddr reads the master's log until it is ready and returns the
// address its metrics endpoint listens on.
func metricsAddr(stderr io.Reader, timeout time.Duration) (string, error) {
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		addr := ""
		for sc.Scan() {
			var l struct{ Msg, Address string }
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue
			}
			switch l.Msg {
			case "metrics listening":
				addr = l.Address
			case "ready":
				found <- addr
			}
		}
		close(found)
	}()
	select {
	case a, ok := <-found:
		if !ok || a == "" {
			return "", fmt.Errorf("the master exited, or logged no metrics address, before it was ready")
		}
		return a, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("the master was not ready within %s", timeout)
	}
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(int(q*float64(len(s))), len(s)-1)]
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}
