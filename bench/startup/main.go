// Command startup measures the master itself against the floor of the
// machine it runs on. For each worker count N it measures, in one run:
//
//   - floor: N bare execs of the same binary started at once (`BIN version`,
//     which exits once its runtime and packages have initialised), from the
//     first fork to the last exit: what starting N such processes costs
//     here, with no supervisor; and one bare exec alone, since a master must
//     itself start before its workers can (start/floor+1 divides by both);
//   - start: from the exec of a master of N example-app workers to its
//     `ready` log line (every worker ready);
//   - reload: from SIGHUP to `reload succeeded` (every worker replaced by a
//     ready new one, the old ones stopped), at -max-surge (the default's 25%)
//     and -steer (the default's auto);
//
// each -runs times, interleaved, and prints the medians and the ratios
// start/floor and reload/floor. It also prints the master's RSS once ready
// and once it has trimmed (a second after the pool goes quiet), and its CPU
// over an idle period.
//
// With -memory R it runs a master of 2 workers through R reloads back to
// back (`supervisor reload --wait` each) and prints its RSS, anonymous and
// file-backed, at ready, right after the last reload and once quiet, with
// its fds and threads.
//
//	go build -o bin/supervisor ./cmd/supervisor
//	go run ./bench/startup -bin bin/supervisor -workers 1,32,256
//	go run ./bench/startup -bin bin/supervisor -workers 2 -runs 1 -idle 30s
//	go run ./bench/startup -bin bin/supervisor -memory 1000
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

// trimWait is how long after the pool goes quiet the master has trimmed
// its memory: its trimAfter (1 s) and a margin.
const trimWait = 1500 * time.Millisecond

func main() {
	bin := flag.String("bin", "bin/supervisor", "the supervisor binary")
	counts := flag.String("workers", "1,32,256", "comma-separated worker counts")
	runs := flag.Int("runs", 5, "measurements of each figure (the median is printed)")
	idle := flag.Duration("idle", 0, "idle period for the CPU figure (0: none)")
	memory := flag.Int("memory", 0, "instead: reloads for the memory figure, with 2 workers")
	surge := flag.String("max-surge", "25%", "the masters' --max-surge")
	steer := flag.String("steer", "auto", "the masters' --steer")
	flag.Parse()
	abs, err := filepath.Abs(*bin)
	if err == nil {
		_, err = os.Stat(abs)
	}
	if err != nil || *runs < 1 || *memory < 0 {
		fmt.Fprintf(os.Stderr, "startup: want -bin BINARY (go build -o bin/supervisor ./cmd/supervisor), -runs ≥ 1, -memory ≥ 0: %v\n", err)
		os.Exit(2)
	}
	fmt.Printf("go run ./bench/startup %s\n", strings.Join(os.Args[1:], " "))
	fmt.Printf("%s/%s, %d CPUs, %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	if *memory > 0 {
		if err := measureMemory(abs, *memory); err != nil {
			fmt.Fprintln(os.Stderr, "startup:", err)
			os.Exit(1)
		}
		return
	}
	fmt.Printf("%8s %8s %8s %8s %8s %12s %14s %13s %10s %10s\n", "workers", "exec", "floor", "start", "reload", "start/floor", "start/floor+1", "reload/floor", "rss_ready", "rss_quiet")
	for _, s := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(s)
		if err == nil && n < 1 {
			err = fmt.Errorf("-workers %q: want positive counts", *counts)
		}
		if err == nil {
			err = measure(abs, n, *runs, *idle, "--max-surge", *surge, "--steer", *steer)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "startup:", err)
			os.Exit(1)
		}
	}
}

// measure prints one line of figures for n workers.
// args are the master's flags besides --workers.
func measure(bin string, n, runs int, idle time.Duration, args ...string) error {
	var ones, floors, starts, reloads []time.Duration
	var rssReady, rssQuiet int
	for i := range runs {
		f, err := floor(bin, n)
		if err != nil {
			return err
		}
		floors = append(floors, f)
		if f, err = floor(bin, 1); err != nil {
			return err
		}
		ones = append(ones, f)
		m, err := startMaster(bin, append([]string{"--workers", strconv.Itoa(n)}, args...)...)
		if err != nil {
			return err
		}
		starts = append(starts, m.ready)
		if i == 0 {
			if rssReady, err = rssKiB(m.pid()); err == nil {
				rssQuiet, err = m.quietRSS()
			}
		}
		if err == nil {
			var took time.Duration
			if took, err = m.reload(); err == nil {
				reloads = append(reloads, took)
			}
		}
		if err == nil && i == 0 && idle > 0 {
			err = m.idleCPU(idle)
		}
		if cerr := m.stop(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%d workers: %w", n, err)
		}
	}
	one, fl, st, rl := median(ones), median(floors), median(starts), median(reloads)
	fmt.Printf("%8d %8s %8s %8s %8s %12.2f %14.2f %13.2f %8.1fMiB %8.1fMiB\n", n, ms(one), ms(fl), ms(st), ms(rl),
		st.Seconds()/fl.Seconds(), st.Seconds()/(one+fl).Seconds(), rl.Seconds()/fl.Seconds(), float64(rssReady)/1024, float64(rssQuiet)/1024)
	return nil
}

// floor starts n processes of `bin version` at once and returns the time
// from the first fork to the last exit.
func floor(bin string, n int) (time.Duration, error) {
	cmds := make([]*exec.Cmd, n)
	began := time.Now()
	for i := range cmds {
		cmds[i] = exec.Command(bin, "version")
		if err := cmds[i].Start(); err != nil {
			for _, c := range cmds[:i] {
				_ = c.Wait()
			}
			return 0, fmt.Errorf("floor: %w", err)
		}
	}
	var err error
	for _, c := range cmds {
		if werr := c.Wait(); err == nil && werr != nil {
			err = fmt.Errorf("floor: %s version: %w", bin, werr)
		}
	}
	return time.Since(began), err
}

// master is a running supervisor of example-app workers, its log lines
// read as they come.
type master struct {
	cmd     *exec.Cmd
	control string
	lines   chan string // the master's log, one JSON line each
	ready   time.Duration
}

// startMaster runs bin with args and waits for its ready line.
func startMaster(bin string, args ...string) (*master, error) {
	dir, err := os.MkdirTemp("", "bench-startup-")
	if err != nil {
		return nil, err
	}
	m := &master{control: filepath.Join(dir, "control.sock"), lines: make(chan string, 1024)}
	m.cmd = exec.Command(bin, append([]string{"--bind", "127.0.0.1:0", "--log-format", "json", "--control", m.control}, append(args, "--", bin, "example-app")...)...)
	stderr, err := m.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	began := time.Now()
	if err := m.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer os.RemoveAll(dir)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			m.lines <- sc.Text()
		}
		close(m.lines)
		_, _ = io.Copy(io.Discard, stderr)
	}()
	if err := m.await(`"msg":"ready"`, time.Minute); err != nil {
		_ = m.stop()
		return nil, err
	}
	m.ready = time.Since(began)
	return m, nil
}

func (m *master) pid() int { return m.cmd.Process.Pid }

// await reads log lines until one contains want.
func (m *master) await(want string, within time.Duration) error {
	deadline := time.After(within)
	for {
		select {
		case line, ok := <-m.lines:
			if !ok {
				return fmt.Errorf("the master exited before logging %s", want)
			}
			if strings.Contains(line, `"level":"error"`) {
				fmt.Fprintln(os.Stderr, "master:", line)
			}
			if strings.Contains(line, want) {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no %s within %s", want, within)
		}
	}
}

// reload sends SIGHUP and returns the time to `reload succeeded`.
func (m *master) reload() (time.Duration, error) {
	began := time.Now()
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return 0, err
	}
	if err := m.await(`"msg":"reload succeeded"`, time.Minute); err != nil {
		return 0, err
	}
	return time.Since(began), nil
}

// quietRSS waits out the trim and returns the RSS then.
func (m *master) quietRSS() (int, error) {
	time.Sleep(trimWait) // the master's own quiet period, not a condition to poll
	return rssKiB(m.pid())
}

// idleCPU prints the CPU the master used over an idle period.
func (m *master) idleCPU(idle time.Duration) error {
	cpu0, err := cpuTicks(m.pid())
	if err != nil {
		return err
	}
	time.Sleep(idle) // the idle period being measured
	cpu1, err := cpuTicks(m.pid())
	if err != nil {
		return err
	}
	const hz = 100 // USER_HZ on Linux
	cpu := time.Duration(cpu1-cpu0) * time.Second / hz
	fmt.Printf("idle: the master used %s of CPU over %s (%.3f%%)\n", cpu, idle, 100*cpu.Seconds()/idle.Seconds())
	return nil
}

// stop ends the master and waits for it.
func (m *master) stop() error {
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	for range m.lines {
	}
	err := m.cmd.Wait()
	if err != nil {
		return fmt.Errorf("master: %w", err)
	}
	return nil
}

// measureMemory prints the master's memory across reloads back to back.
func measureMemory(bin string, reloads int) error {
	m, err := startMaster(bin, "--workers", "2")
	if err != nil {
		return err
	}
	defer m.stop()
	go func() { // nobody awaits lines during the reloads
		for range m.lines {
		}
	}()
	show := func(when string) error {
		mem, err := memoryOf(m.pid())
		if err == nil {
			fmt.Printf("%-28s %s\n", when, mem)
		}
		return err
	}
	if err := show("ready:"); err != nil {
		return err
	}
	time.Sleep(trimWait) // the master's own quiet period
	if err := show("quiet:"); err != nil {
		return err
	}
	began := time.Now()
	for i := range reloads {
		out, err := exec.Command(bin, "reload", "--wait", "--control", m.control).CombinedOutput()
		if err != nil {
			return fmt.Errorf("reload %d: %v: %s", i+1, err, out)
		}
	}
	took := time.Since(began)
	if err := show(fmt.Sprintf("after %d reloads:", reloads)); err != nil {
		return err
	}
	time.Sleep(trimWait)
	if err := show("quiet:"); err != nil {
		return err
	}
	fmt.Printf("%d reloads in %s (%s each)\n", reloads, took.Round(time.Millisecond), (took / time.Duration(reloads)).Round(100*time.Microsecond))
	return nil
}

// memoryOf describes a process's memory: RSS, its anonymous and
// file-backed parts, and its fds and threads.
func memoryOf(pid int) (string, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return "", err
	}
	r, err := p.ProcSMapsRollup()
	if err != nil {
		return "", err
	}
	st, err := p.Stat()
	if err != nil {
		return "", err
	}
	fds, err := p.FileDescriptorsLen()
	if err != nil {
		return "", err
	}
	mib := func(b uint64) float64 { return float64(b) / (1 << 20) }
	return fmt.Sprintf("rss %5.1f MiB (anon %4.1f, file %4.1f)  fds %d  threads %d",
		mib(r.Rss), mib(r.Anonymous), mib(r.Rss-r.Anonymous), fds, st.NumThreads), nil
}

// median of a non-empty list.
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond)) }

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
