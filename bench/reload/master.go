package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// logLine is one JSON log line of the master.
type logLine map[string]any

func (l logLine) msg() string { s, _ := l["msg"].(string); return s }

func (l logLine) gen() int { n, _ := l["generation"].(float64); return int(n) }

// master is a running supervisor master. Its output (its log and the
// workers' own output) goes to a file; a reader goroutine also keeps the
// master's JSON lines for next, and never waits for anyone.
type master struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the first master has exited
	// pid is the master in charge: the first one until an upgrade, then
	// the one that took over. masters holds every one seen.
	pid     int
	masters []int

	mu      sync.Mutex
	lines   []logLine     // guarded by mu
	changed chan struct{} // closed and replaced on each new line and at EOF; guarded by mu
	eof     bool          // guarded by mu
}

// startMaster starts bin with args, its output written to logPath. The
// master gets SIGTERM if this program dies first.
func startMaster(bin string, args []string, logPath string) (*master, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	m := &master{cmd: exec.Command(bin, args...), exited: make(chan struct{}), changed: make(chan struct{})}
	m.cmd.Stdout, m.cmd.Stderr = pw, pw
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	err = m.cmd.Start()
	pw.Close() // the master and its workers hold the write end now
	if err != nil {
		pr.Close()
		logf.Close()
		return nil, err
	}
	m.pid, m.masters = m.cmd.Process.Pid, []int{m.cmd.Process.Pid}
	go func() { _ = m.cmd.Wait(); close(m.exited) }()
	go func() { // ends when the master and every worker have closed the pipe
		defer logf.Close()
		defer pr.Close()
		sc := bufio.NewScanner(io.TeeReader(pr, logf))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var l logLine
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.msg() != "" {
				m.update(func() { m.lines = append(m.lines, l) })
			}
		}
		m.update(func() { m.eof = true })
	}()
	return m, nil
}

func (m *master) update(f func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f()
	close(m.changed)
	m.changed = make(chan struct{})
}

// next waits up to timeout for the first log line at index from or later
// that match accepts (each line is shown to match once, in order), and
// returns its index and the line. It fails if the output ends first.
func (m *master) next(from int, timeout time.Duration, what string, match func(logLine) bool) (int, logLine, error) {
	deadline := time.After(timeout)
	for {
		m.mu.Lock()
		for ; from < len(m.lines); from++ {
			if l := m.lines[from]; match(l) {
				m.mu.Unlock()
				return from, l, nil
			}
		}
		eof, changed := m.eof, m.changed
		m.mu.Unlock()
		if eof {
			return 0, nil, fmt.Errorf("the master's output ended before %s", what)
		}
		select {
		case <-changed:
		case <-deadline:
			return 0, nil, fmt.Errorf("no %s within %s", what, timeout)
		}
	}
}

// count is how many of the master's lines from index from on match.
func (m *master) count(from int, match func(logLine) bool) (n, end int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.lines[min(from, len(m.lines)):] {
		if match(l) {
			n++
		}
	}
	return n, len(m.lines)
}

func msgIs(msg string) func(logLine) bool { return func(l logLine) bool { return l.msg() == msg } }

// ready waits until every worker is ready and returns the listening address.
func (m *master) ready(timeout time.Duration) (string, error) {
	_, _, err := m.next(0, timeout, `"ready"`, msgIs("ready"))
	if err != nil {
		return "", err
	}
	_, l, err := m.next(0, time.Second, `"listening"`, msgIs("listening"))
	addr, _ := l["address"].(string)
	return addr, err
}

// reloadResult is one reload as the master reported it.
type reloadResult struct {
	gen               int
	outcome, expected string        // "succeeded" or "rolled back"
	reason            string        // why it was rolled back
	at                time.Time     // when SIGHUP was sent
	took              time.Duration // SIGHUP to the outcome line
	drained           time.Duration // SIGHUP to the exit of the last worker it stopped
}

// reload sends SIGHUP and waits up to timeout (for each step) for the
// outcome, "reload succeeded" or "reload failed; rolling back" then "rolled
// back"; then for every worker stopped since the SIGHUP to have exited.
func (m *master) reload(timeout time.Duration) (reloadResult, error) {
	m.mu.Lock()
	from := len(m.lines)
	m.mu.Unlock()
	began := time.Now()
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return reloadResult{}, err
	}
	i, l, err := m.next(from, timeout, `"reload"`, msgIs("reload"))
	if err != nil {
		return reloadResult{}, err
	}
	r := reloadResult{gen: l.gen(), outcome: "succeeded", at: began}
	i, l, err = m.next(i+1, timeout, fmt.Sprintf("outcome of the reload to generation %d", r.gen), func(l logLine) bool {
		return (l.msg() == "reload succeeded" || l.msg() == "reload failed; rolling back") && l.gen() == r.gen
	})
	if err == nil && l.msg() != "reload succeeded" {
		r.outcome, r.reason = "rolled back", fmt.Sprint(l["reason"])
		i, _, err = m.next(i+1, timeout, `"rolled back"`, msgIs("rolled back"))
	}
	if err != nil {
		return r, err
	}
	r.took = time.Since(began)
	stopping, seen := map[any]bool{}, from
	_, _, err = m.next(from, timeout, "the exit of the workers the reload stopped", func(l logLine) bool {
		switch {
		case l.msg() == "stopping worker":
			stopping[l["pid"]] = true
		case l["how"] != nil: // "worker stopped", or an exit the master did not ask for
			delete(stopping, l["pid"])
		}
		seen++
		return seen > i && len(stopping) == 0
	})
	r.drained = time.Since(began)
	return r, err
}

// upgrade sends USR2 to the master in charge and waits up to timeout (for
// each step) for the new master to take over ("upgraded from pid N", once
// the old master and its workers are gone), or for the old master to say
// the upgrade failed.
func (m *master) upgrade(timeout time.Duration) (reloadResult, error) {
	m.mu.Lock()
	from := len(m.lines)
	m.mu.Unlock()
	began := time.Now()
	m.mu.Lock()
	old := m.pid
	m.mu.Unlock()
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		return reloadResult{}, err
	}
	r := reloadResult{outcome: "upgraded", at: began}
	_, l, err := m.next(from, timeout, "the upgrade's commit or failure", func(l logLine) bool {
		return l.msg() == "upgrade committed: the new master takes over; handing over workers" || l.msg() == "upgrade failed; this master carries on"
	})
	if err != nil {
		return r, err
	}
	if l.msg() != "upgrade committed: the new master takes over; handing over workers" {
		r.outcome, r.reason = "failed", fmt.Sprint(l["reason"])
		r.took = time.Since(began)
		r.drained = r.took
		return r, nil
	}
	pid, _ := l["new_pid"].(float64)
	if pid <= 0 {
		return r, fmt.Errorf("the old master names no new master: %v", l)
	}
	m.mu.Lock()
	m.pid = int(pid)
	m.masters = append(m.masters, m.pid)
	m.mu.Unlock()
	_, l, err = m.next(from, timeout, fmt.Sprintf("the new master %d taking over from %d", m.pid, old),
		msgIs("upgraded from pid "+strconv.Itoa(old)))
	r.gen = l.gen()
	r.took = time.Since(began)
	r.drained = r.took // the old master's workers are gone before that line
	return r, err
}

// workers counts the worker processes of every master alive, sampled
// twice: a process in both listings lived through the time between them
// together with all the others in both, so the count never exceeds the
// processes alive at one time.
func (m *master) workers() int {
	m.mu.Lock()
	masters := slices.Clone(m.masters)
	m.mu.Unlock()
	var walk func(pid int, seen map[int]bool)
	walk = func(pid int, seen map[int]bool) {
		for _, kid := range children(pid) {
			switch {
			case slices.Contains(masters, kid):
			case isMaster(kid): // a new master not yet named in the log
				walk(kid, seen)
			default:
				seen[kid] = true
			}
		}
	}
	list := func() map[int]bool {
		seen := map[int]bool{}
		for _, pid := range masters {
			walk(pid, seen)
		}
		return seen
	}
	a, b := list(), list()
	n := 0
	for pid := range a {
		if b[pid] {
			n++
		}
	}
	return n
}

// isMaster says whether pid runs the supervisor with flags (a master),
// rather than as "supervisor example-app" (a worker).
func isMaster(pid int) bool {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(string(b), "\x00")
	return len(args) > 1 && strings.HasPrefix(args[1], "-")
}

// children lists the pids whose parent is pid.
func children(pid int) []int {
	var kids []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil {
				kids = append(kids, n)
			}
		}
	}
	return kids
}

// stop sends SIGTERM to the master in charge and waits up to timeout for
// it to exit (0, when it is the first master; an upgraded one is not this
// program's child: its end is the end of its output); past that it kills
// it.
func (m *master) stop(timeout time.Duration) error {
	m.mu.Lock()
	pid := m.pid
	m.mu.Unlock()
	if pid != m.cmd.Process.Pid {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		_, _, err := m.next(0, timeout, "the end of the upgraded master's output", func(logLine) bool { return false })
		if !strings.Contains(fmt.Sprint(err), "ended") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			return fmt.Errorf("upgraded master %d still running %s after SIGTERM; killed", pid, timeout)
		}
		return nil
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
		if !m.cmd.ProcessState.Success() {
			return fmt.Errorf("master %s after SIGTERM", m.cmd.ProcessState)
		}
		return nil
	case <-time.After(timeout):
		_ = m.cmd.Process.Kill()
		<-m.exited
		return fmt.Errorf("master still running %s after SIGTERM; killed", timeout)
	}
}
