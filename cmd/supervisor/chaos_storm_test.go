package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// chaosSeed is the seed of a chaos test's random choices, logged:
// SUPERVISOR_CHAOS_SEED replays a run, else it comes from the clock.
func chaosSeed(t *testing.T) uint64 {
	t.Helper()
	if s := os.Getenv("SUPERVISOR_CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SUPERVISOR_CHAOS_SEED=%q: want a whole number", s)
		}
		t.Logf("seed %d (from SUPERVISOR_CHAOS_SEED)", n)
		return n
	}
	n := uint64(time.Now().UnixNano())
	t.Logf("seed %d (replay with SUPERVISOR_CHAOS_SEED=%d)", n, n)
	return n
}

// alive says whether the master is still running.
func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
	}
	return testkit.Alive(p.cmd.Process.Pid)
}

// settled waits until p serves with want ready workers and nothing else:
// no rollout under way, one ready worker of the generation in force in
// each slot 0..want-1, no worker starting or stopping, and the master's
// children exactly those workers, none of them a zombie. It returns how
// long that took; past timeout it fails t with what was still off.
func settled(t *testing.T, p *proc, want int, timeout time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	deadline := t0.Add(timeout)
	for {
		why := unsettled(p, want)
		if why == "" {
			return time.Since(t0)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool did not settle to %d ready workers within %s: %s", want, timeout, why)
		}
		time.Sleep(10 * time.Millisecond) // the poll interval of testkit.WaitFor
	}
}

// unsettled says what keeps p's pool from being want ready workers and
// nothing else; "" when nothing does.
func unsettled(p *proc, want int) string {
	if !p.alive() {
		return "the master is gone"
	}
	resp, err := supervisor.CallControl(controlPath(p.cmd), supervisor.Request{Command: "status"}, 10*time.Second)
	if err != nil || !resp.OK || resp.Status == nil {
		return fmt.Sprintf("status: %v %+v", err, resp)
	}
	st := resp.Status
	if st.Phase != "running" || st.Target != st.Generation || st.Workers != want || st.Ready != want || len(st.Pool) != want {
		return fmt.Sprintf("phase %s, generation %d, target %d, %d wanted, %d ready, %d in the pool",
			st.Phase, st.Generation, st.Target, st.Workers, st.Ready, len(st.Pool))
	}
	inPool := map[int]bool{}
	for i, w := range st.Pool { // sorted by slot
		if w.State != "ready" || w.Slot != i || w.Generation != st.Generation {
			return fmt.Sprintf("worker %d: slot %d, generation %d, %s; want slot %d, generation %d, ready", w.Pid, w.Slot, w.Generation, w.State, i, st.Generation)
		}
		inPool[w.Pid] = true
	}
	kids := children(p.cmd.Process.Pid)
	if len(kids) != want {
		return fmt.Sprintf("the master's children are %v, its pool %+v", kids, st.Pool)
	}
	for _, k := range kids {
		if isZombie(k) {
			return fmt.Sprintf("child %d is a zombie", k)
		}
		if !inPool[k] {
			return fmt.Sprintf("child %d is not in the pool %+v", k, st.Pool)
		}
	}
	return ""
}

// workerProcs counts the master's children, listed twice: a pid in both
// listings was alive all the time between them, so the count never
// exceeds what existed at one moment (a worker exiting while another
// starts is not counted twice).
func workerProcs(master int) int {
	first := map[int]bool{}
	for _, c := range children(master) {
		first[c] = true
	}
	n := 0
	for _, c := range children(master) {
		if first[c] {
			n++
		}
	}
	return n
}

// stormIntents names the intent the master logs for each storm signal.
var stormIntents = map[syscall.Signal]string{
	syscall.SIGHUP:  "reload",
	syscall.SIGTTIN: "scale-up",
	syscall.SIGTTOU: "scale-down",
	syscall.SIGUSR1: "reopen-logs",
}

// logLines is p's JSON log lines, in order.
func (p *proc) logLines() []map[string]any {
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] != nil {
			lines = append(lines, line)
		}
	}
	return lines
}

// stormModel is what DESIGN §4 says a master makes of a sequence of
// signals, replayed from its log: the log gives the order of the signals
// and when each rollout ended, the model says what each signal must do
// and what the pool must come to.
//   - HUP starts a rollout of the config (its own worker count, whatever
//     the scale), merging into a forward rollout under way.
//   - TTIN / TTOU set the worker count one up or down, at least 1; they
//     are refused while a rollout (or a rollback) is under way.
//   - USR1 changes nothing in the pool.
type stormModel struct {
	want, stable int  // the target's worker count, the stable generation's
	rollout      bool // a rollout or rollback is under way
	rollback     bool
	handled      []string // the intents of the signals logged, in order
	reloads      int      // rollouts started
	merges       int      // reloads merged into a rollout under way
	succeeded    int      // rollouts that ended in success
	rolledBack   int
	scaled       int // TTIN/TTOU that changed the count
	refused      int // TTIN/TTOU refused during a rollout
	atMin        int // TTOU refused at 1 worker
	wrong        []string
}

func replayStorm(lines []map[string]any, configured int) *stormModel {
	m := &stormModel{want: configured, stable: configured}
	bad := func(i int, format string, args ...any) {
		if len(m.wrong) < 10 {
			m.wrong = append(m.wrong, fmt.Sprintf("log line %d: ", i+1)+fmt.Sprintf(format, args...))
		}
	}
	next := func(i int) map[string]any {
		if i+1 < len(lines) {
			return lines[i+1]
		}
		return map[string]any{}
	}
	num := func(l map[string]any, key string) int { f, _ := l[key].(float64); return int(f) }
	for i, l := range lines {
		switch l["msg"] {
		case "signal":
			intent, _ := l["intent"].(string)
			m.handled = append(m.handled, intent)
			out := next(i)
			switch intent {
			case "reload":
				merging := m.rollout && !m.rollback
				if out["msg"] == "reload merges into the rollout under way" {
					if !merging {
						bad(i, "a HUP merged, but no forward rollout was under way")
					}
					m.merges++
					out = next(i + 1)
				} else if merging {
					bad(i, "a HUP during a rollout did not merge into it")
				}
				if out["msg"] != "reload" || num(out, "workers") != configured {
					bad(i, "a HUP led to %v, want a reload of the config's %d workers", out, configured)
					continue
				}
				m.reloads++
				m.rollout, m.rollback, m.want = true, false, configured
			case "scale-up", "scale-down":
				// The count of the generation in force, one up or down.
				n := m.stable + 1
				if intent == "scale-down" {
					n = m.stable - 1
				}
				msg, _ := out["msg"].(string)
				errText, _ := out["error"].(string)
				switch {
				case m.rollout:
					// Refused; below 1 it may say that first.
					if msg != "scale ignored" || !(strings.Contains(errText, "a reload is under way") ||
						n < 1 && strings.Contains(errText, "want at least 1 worker")) {
						bad(i, "%s during a rollout led to %v, want it refused", intent, out)
					}
					m.refused++
				case n < 1:
					if msg != "scale ignored" || !strings.Contains(errText, "want at least 1 worker") {
						bad(i, "%s at %d workers led to %v, want it refused", intent, m.stable, out)
					}
					m.atMin++
				default:
					if msg != "scaled" || num(out, "workers") != n {
						bad(i, "%s from %d workers led to %v, want scaled to %d", intent, m.stable, out, n)
						continue
					}
					m.scaled++
					m.want, m.stable = n, n
				}
			}
		case "reload succeeded":
			if !m.rollout || m.rollback {
				bad(i, "a reload succeeded with no forward rollout under way")
			}
			m.succeeded++
			m.rollout, m.stable = false, m.want
		case "reload failed; rolling back":
			m.rolledBack++
			m.rollback, m.want = true, m.stable
		case "rolled back":
			m.rollout, m.rollback = false, false
		}
	}
	return m
}

// A storm of signals under load: every 100 ms (once the master has taken
// the one before) one of HUP, TTIN, TTOU and USR1, chosen at random (seeded, the seed logged), for 3.5 s (20 s in
// the long form), to a master of 2 workers while 4 clients make a new
// connection per request. Sampled every 25 ms: the master lives and
// answers status; it never starts a process beyond workers + max_surge
// of the count wanted at that moment (after a scale down the processes
// already running may exceed the new bound until they drain; they must
// not grow); the ready count never falls below the count wanted unless it
// already was (invariant 2). Replayed from the log, each signal had its
// effect (a HUP merges into a rollout under way, a scale is refused during
// one and never goes below 1). No request fails, no worker dies on its
// own and no reload rolls back (USR1 must not kill a starting worker),
// the master gets every signal in the order sent, and the pool settles to
// the count the signals made, every worker ready, no zombie. (A seed replays the signals, not
// the timing: what each signal meets differs from run to run.)
func TestChaosSignalStorm(t *testing.T) {
	const workers, clients, surge = 2, 4, "25%"
	seed := chaosSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	p := startQuick(t, "--bind", "127.0.0.1:0", "--workers", strconv.Itoa(workers), "--max-surge", surge, "--", self(t), "example-app")
	addr := p.ready()
	pid := p.cmd.Process.Pid
	bound := func(w int) int {
		s, err := supervisor.ResolveSurge(surge, w)
		if err != nil {
			t.Fatal(err)
		}
		return w + s
	}

	load := startChaosLoad(addr, clients)
	defer load.stop()
	storm := []syscall.Signal{syscall.SIGHUP, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR1}
	sent := map[syscall.Signal]int{}
	var seq []string // the intents sent, in order
	span := chaosSpan(3500*time.Millisecond, 20*time.Second)
	sampling := time.NewTicker(25 * time.Millisecond)
	defer sampling.Stop()
	signalling := time.NewTicker(100 * time.Millisecond)
	defer signalling.Stop()

	// One goroutine signals and samples. A signal goes only once the
	// master has logged the one before it, as seen at the last sample:
	// the kernel keeps one pending signal of each number, so two of a kind
	// a stalled master had not taken yet would be one (seen here under
	// load), and the signals the master gets would no longer be those
	// sent. So between two status snapshots the wanted count changes at
	// most once, and a bound is the higher of the counts wanted at a
	// snapshot and at the one before.
	const signalLine = `"msg":"signal"`
	caughtUp, sentSince, held := false, false, 0
	var last *supervisor.Status
	lastProcs, samples, busy, maxPool, maxProcs, maxWant, over := 0, 0, 0, 0, 0, 0, 0
	check := func(st *supervisor.Status) {
		t.Helper()
		if last != nil {
			if n, ceiling := len(st.Pool), max(bound(st.Workers), bound(last.Workers), len(last.Pool)); n > ceiling {
				t.Fatalf("sample %d: %d workers in the pool, over %d wanted + surge (before: %d wanted, %d in the pool): %+v",
					samples, n, st.Workers, last.Workers, len(last.Pool), st)
			}
			if floor := min(last.Ready, st.Workers); st.Ready < floor {
				t.Fatalf("sample %d: %d ready, under %d (before: %d ready, now %d wanted): %+v", samples, st.Ready, floor, last.Ready, st.Workers, st)
			}
		}
		if len(st.Pool) > bound(st.Workers) {
			over++
		}
		if st.Target != st.Generation {
			busy++
		}
		maxPool, maxWant = max(maxPool, len(st.Pool)), max(maxWant, st.Workers)
		last = st
	}
	began := time.Now()
	for time.Since(began) < span {
		select {
		case <-signalling.C:
			if !caughtUp || sentSince {
				held++
				continue
			}
			sig := storm[rng.IntN(len(storm))]
			if err := syscall.Kill(pid, sig); err != nil {
				t.Fatalf("signal %v to the master: %v", sig, err)
			}
			sent[sig]++
			seq = append(seq, stormIntents[sig])
			sentSince = true
			continue
		case <-sampling.C:
		}
		samples++
		caughtUp, sentSince = strings.Count(p.out.String(), signalLine) == len(seq), false
		prevW := -1
		if last != nil {
			prevW = last.Workers
		}
		before := p.controlStatus()
		check(before)
		procs := workerProcs(pid)
		after := p.controlStatus()
		check(after)
		if !p.alive() {
			t.Fatalf("sample %d: the master died", samples)
		}
		if ceiling := max(bound(prevW), bound(before.Workers), bound(after.Workers), lastProcs); procs > ceiling {
			t.Fatalf("sample %d: the master has %d child processes, over %d wanted + surge (%d wanted before, %d after; %d children before)",
				samples, procs, before.Workers, prevW, after.Workers, lastProcs)
		}
		lastProcs, maxProcs = procs, max(maxProcs, procs)
	}
	stormTook := time.Since(began)

	// The master got every signal, in order; then the pool comes to the
	// count the model says.
	testkit.WaitFor(t, 10*time.Second, "the master to log the last signal", func() bool {
		return strings.Count(p.out.String(), signalLine) == len(seq)
	})
	if got := replayStorm(p.logLines(), workers).handled; !slices.Equal(got, seq) {
		t.Fatalf("the master logged the signals\n%v\nwant those sent\n%v", got, seq)
	}
	m := replayStorm(p.logLines(), workers)
	settle := settled(t, p, m.want, 30*time.Second)
	load.stop()
	m = replayStorm(p.logLines(), workers) // now with the end of the last rollout
	for _, w := range m.wrong {
		t.Error(w)
	}
	if m.rollout {
		t.Error("the pool settled, but the log shows no end of the last rollout")
	}

	t.Logf("%d signals in %s (HUP %d, TTIN %d, TTOU %d, USR1 %d; %d ticks held back for the one before), %d rollouts (%d merged into one under way, %d succeeded, %d rolled back), "+
		"%d scales done, %d refused during a rollout, %d refused at 1 worker",
		len(seq), stormTook.Round(time.Millisecond), sent[syscall.SIGHUP], sent[syscall.SIGTTIN], sent[syscall.SIGTTOU], sent[syscall.SIGUSR1], held,
		m.reloads, m.merges, m.succeeded, m.rolledBack, m.scaled, m.refused, m.atMin)
	t.Logf("%d samples (%d of their %d status snapshots during a rollout): most wanted %d, most in the pool %d, most child processes %d; %d snapshots above the bound of the moment (after a scale down)",
		samples, busy, 2*samples, maxWant, maxPool, maxProcs, over)
	t.Logf("settled to %d ready workers %s after the storm; load, %d clients: %s", m.want, settle.Round(time.Millisecond), clients, load)

	if len(seq) == 0 || samples == 0 {
		t.Fatalf("%d signals sent, %d samples taken", len(seq), samples)
	}
	if load.ok.Load() == 0 {
		t.Error("no request succeeded")
	}
	if n := load.dial.Load() + load.timeout.Load() + load.reset.Load() + load.bad.Load(); n > 0 {
		t.Errorf("%d requests failed, want none: %s", n, load)
	}
	if n := p.countLogs("worker exited unexpectedly; replacing it") + p.countLogs("worker of an old generation exited; the rollout replaces it"); n > 0 {
		t.Errorf("%d workers exited on their own during the storm, want none", n)
	}
	if m.rolledBack > 0 {
		t.Errorf("%d reloads rolled back, want none (no worker fails here): %v", m.rolledBack, p.findLog("reload failed; rolling back"))
	}
	if st := p.controlStatus(); m.rolledBack == 0 && st.Generation != 1+m.reloads {
		t.Errorf("generation %d after %d rollouts, want %d", st.Generation, m.reloads, 1+m.reloads)
	}
	distinctWorkers(t, addr, m.want)
}
