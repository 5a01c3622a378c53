package main

import (
	"cmp"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// phase is what the requests of one phase came to.
type phase struct {
	latencies []time.Duration
	sent      []time.Time    // when each request was sent, in latencies' order until quantile sorts
	failed    []bool         // whether each request failed, in the same order
	pids      []int          // the worker that answered each ("hello from pid N"; 0: unknown), in the same order
	errs      map[string]int // failures by error, client ports elided
	order     []string       // errs' keys, first seen first
}

var clientPort = regexp.MustCompile(`:\d+->`)

func (p *phase) add(r *vegeta.Result) {
	p.latencies = append(p.latencies, r.Latency)
	p.sent = append(p.sent, r.Timestamp)
	p.failed = append(p.failed, r.Error != "")
	pid := 0
	if r.Error == "" {
		fmt.Sscanf(string(r.Body), "hello from pid %d", &pid)
	}
	p.pids = append(p.pids, pid)
	if e := clientPort.ReplaceAllString(r.Error, ":*->"); e != "" {
		if p.errs[e]++; p.errs[e] == 1 {
			p.order = append(p.order, e)
		}
	}
}

// during returns the requests of p sent while a reload was under way (from
// SIGHUP until the workers it stopped had exited), and of those the ones
// answered by a worker that served before the reload (its generation, in
// gens by pid, older than the reload's) and by one the reload started.
// Call it before quantile.
func (p *phase) during(reloads []reloadResult, gens map[int]int) (in, old, fresh *phase) {
	in, old, fresh = &phase{errs: map[string]int{}}, &phase{errs: map[string]int{}}, &phase{errs: map[string]int{}}
	for i, at := range p.sent {
		for _, r := range reloads {
			if !at.Before(r.at) && at.Before(r.at.Add(r.drained)) {
				in.latencies = append(in.latencies, p.latencies[i])
				if g, ok := gens[p.pids[i]]; ok && g < r.gen {
					old.latencies = append(old.latencies, p.latencies[i])
				} else if ok && g == r.gen {
					fresh.latencies = append(fresh.latencies, p.latencies[i])
				}
				break
			}
		}
	}
	return in, old, fresh
}

// perSecond counts the requests sent in each whole second from from to to
// that did not fail.
func (p *phase) perSecond(from, to time.Time) []int {
	n := int(to.Sub(from) / time.Second)
	out := make([]int, max(n, 0))
	for i, at := range p.sent {
		if k := int(at.Sub(from) / time.Second); !p.failed[i] && !at.Before(from) && k < n {
			out[k]++
		}
	}
	return out
}

// count is the number of failures whose error which selects.
func (p *phase) count(which func(string) bool) int {
	n := 0
	for e, c := range p.errs {
		if which(e) {
			n += c
		}
	}
	return n
}

// quantile is the exact q-quantile of the latencies (nearest rank).
func (p *phase) quantile(q float64) time.Duration {
	if len(p.latencies) == 0 {
		return 0
	}
	slices.Sort(p.latencies)
	return p.latencies[max(0, min(int(q*float64(len(p.latencies))+0.5)-1, len(p.latencies)-1))]
}

// isReset: the server reset the connection or closed it unanswered.
func isReset(e string) bool {
	return strings.HasSuffix(e, "connection reset by peer") || strings.HasSuffix(e, ": EOF") ||
		strings.HasSuffix(e, "server closed idle connection")
}

// result is one scenario's run.
type result struct {
	sc             scenario
	o              options
	load           string // the load average when it began
	steady, reload *phase
	rollouts       *phase // the requests of reload sent during a rollout
	// Of those, the ones the workers that served before it answered, and
	// the ones its new workers answered (the example app names its pid).
	rolloutsOld, rolloutsNew *phase
	// floor: the requests sent while bare execs of the app's binary ran at
	// boot_nice, no supervisor involved (measureFloor).
	floor       *phase
	floorFailed int // failed requests of the whole floor phase
	recycles    int // recycle scenario: workers recycled in the reload phase
	maxWorkers  int // upgrade scenario: most worker processes across masters, sampled every 5 ms
	// The storm scenario: HUPs sent, workers started and reloads that
	// succeeded in the phase, the time from the last HUP to the pool
	// serving its generation, and answered requests per second of the storm.
	hups, starts, succeeded int
	settled                 time.Duration
	throughput              []int
	reloads                 []reloadResult
}

// counted reports whether a failure counts against the supervisor: all do
// but resets, where the app resets connections on its own.
func (res *result) counted(e string) bool { return !(res.sc.appResets && isReset(e)) }

// problems lists what makes this run a failure.
func (res *result) problems() []string {
	var out []string
	for name, p := range map[string]*phase{"steady": res.steady, "reload": res.reload} {
		if n := p.count(res.counted); n > 0 {
			out = append(out, fmt.Sprintf("%d failed requests in the %s phase", n, name))
		}
	}
	if res.floorFailed > 0 {
		out = append(out, fmt.Sprintf("%d failed requests in the floor phase", res.floorFailed))
	}
	if res.sc.recycle != nil && res.recycles == 0 {
		out = append(out, "no worker was recycled")
	}
	for i, r := range res.reloads {
		if r.outcome != r.expected {
			out = append(out, fmt.Sprintf("reload %d (generation %d) %s, want %s %s", i+1, r.gen, r.outcome, r.expected, r.reason))
		}
	}
	slices.Sort(out)
	return out
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

// print writes the run as plain text, fit for the README.
func (res *result) print(w io.Writer) {
	sc, conn := res.sc, "a new connection per request"
	if sc.keepalive {
		conn = "keep-alive"
	}
	fmt.Fprintf(w, "\n== %s (%s; load average %s) ==\n", sc.title, conn, res.load)
	fmt.Fprintf(w, "%-7s %9s %7s %9s %9s %9s\n", "phase", "requests", "failed", "p50", "p99", "max")
	phases := []*phase{res.steady, res.reload}
	for i, p := range phases {
		fmt.Fprintf(w, "%-7s %9d %7d %9s %9s %9s\n", []string{"steady", "reload"}[i], len(p.latencies),
			p.count(res.counted), ms(p.quantile(0.50)), ms(p.quantile(0.99)), ms(p.quantile(1)))
	}
	if r := res.rollouts; r != nil && len(r.latencies) > 0 {
		fmt.Fprintf(w, "%-7s %9d %7s %9s %9s %9s   (the reload phase's requests sent while a rollout was under way)\n", "rollout", len(r.latencies),
			"-", ms(r.quantile(0.50)), ms(r.quantile(0.99)), ms(r.quantile(1)))
		for _, x := range []struct {
			name, what string
			p          *phase
		}{{" by old", "answered by workers that served before the reload", res.rolloutsOld}, {" by new", "answered by workers the reload started", res.rolloutsNew}} {
			if x.p != nil && len(x.p.latencies) > 0 {
				fmt.Fprintf(w, "%-7s %9d %7s %9s %9s %9s   (%s)\n", x.name, len(x.p.latencies),
					"-", ms(x.p.quantile(0.50)), ms(x.p.quantile(0.99)), ms(x.p.quantile(1)), x.what)
			}
		}
	}
	if f := res.floor; f != nil && len(f.latencies) > 0 {
		fmt.Fprintf(w, "%-7s %9d %7s %9s %9s %9s   (requests sent while %d bare execs of the binary ran at nice %d, no supervisor involved)\n", "floor", len(f.latencies),
			"-", ms(f.quantile(0.50)), ms(f.quantile(0.99)), ms(f.quantile(1)), res.o.workers, res.o.bootNice)
	}
	printErrors(w, "failed", phases, res.counted)
	if sc.appResets {
		n := res.reload.count(isReset)
		fmt.Fprintf(w, "NOT COUNTED ABOVE, the app's own shutdown behaviour: connections the app accepted (or read) just\n"+
			"before its SIGTERM, reset or closed unanswered: steady %d, reload %d (%.2f%% of the reload phase)\n",
			res.steady.count(isReset), n, 100*float64(n)/float64(max(1, len(res.reload.latencies))))
		printErrors(w, "app reset", phases, isReset)
	}
	if sc.upgrade {
		fmt.Fprintf(w, "the \"reload\" phase is upgrades: worker processes across both masters, sampled every 5 ms: at most %d\n", res.maxWorkers)
	}
	if sc.storm {
		tp := slices.Clone(res.throughput)
		slices.Sort(tp)
		if len(tp) > 0 {
			fmt.Fprintf(w, "answered per second of the storm (%d req/s sent): min %d, median %d, max %d\n", res.o.rate, tp[0], tp[len(tp)/2], tp[len(tp)-1])
		}
		fmt.Fprintf(w, "the \"reload\" phase is the storm: %d HUPs, %d workers started, %d reloads succeeded; last HUP to its generation serving: %s\n",
			res.hups, res.starts, res.succeeded, res.settled.Round(time.Millisecond))
	} else if sc.recycle != nil {
		fmt.Fprintf(w, "the \"reload\" phase is the recycling phase: %d workers recycled in it, replacement first\n", res.recycles)
	} else {
		res.printReloads(w)
	}
	if s := res.steady.quantile(0.99); s > 0 {
		fmt.Fprintf(w, "p99 reload/steady: %.2f", float64(res.reload.quantile(0.99))/float64(s))
		if r := res.rollouts; r != nil && len(r.latencies) > 0 {
			fmt.Fprintf(w, "; p99 rollout/steady: %.2f", float64(r.quantile(0.99))/float64(s))
			if o := res.rolloutsOld; o != nil && len(o.latencies) > 0 {
				fmt.Fprintf(w, " (by old workers: %.2f)", float64(o.quantile(0.99))/float64(s))
			}
			if f := res.floor; f != nil && len(f.latencies) > 0 {
				fmt.Fprintf(w, "; p99 floor/steady: %.2f", float64(f.quantile(0.99))/float64(s))
			}
		}
		fmt.Fprintln(w)
	}
	if sc.note != "" {
		fmt.Fprintf(w, "note: %s\n", sc.note)
	}
	for _, p := range res.problems() {
		fmt.Fprintf(w, "PROBLEM: %s\n", p)
	}
}

// printErrors lists, per phase, the first three distinct errors that which
// selects.
func printErrors(w io.Writer, label string, phases []*phase, which func(string) bool) {
	for i, p := range phases {
		shown := 0
		for _, e := range p.order {
			if shown < 3 && which(e) {
				fmt.Fprintf(w, "  %s, %s phase: %d× %s\n", label, []string{"steady", "reload"}[i], p.errs[e], e)
				shown++
			}
		}
	}
}

// printReloads writes the reloads by outcome, then each one's durations.
func (res *result) printReloads(w io.Writer) {
	var outcomes, each []string
	var reason string // the first rollback's
	took, drained := map[string][]time.Duration{}, map[string][]time.Duration{}
	for _, r := range res.reloads {
		if took[r.outcome] == nil {
			outcomes = append(outcomes, r.outcome)
		}
		took[r.outcome] = append(took[r.outcome], r.took.Round(time.Millisecond))
		drained[r.outcome] = append(drained[r.outcome], r.drained.Round(time.Millisecond))
		each = append(each, fmt.Sprintf("%s/%s", r.took.Round(time.Millisecond), r.drained.Round(time.Millisecond)))
		if r.outcome != "succeeded" && r.outcome != "upgraded" {
			each[len(each)-1] += " (" + r.outcome + ")"
			reason = cmp.Or(reason, r.reason)
		}
	}
	spread := func(d []time.Duration) string {
		slices.Sort(d)
		return fmt.Sprintf("min %s, median %s, max %s", d[0], d[len(d)/2], d[len(d)-1])
	}
	for _, o := range outcomes {
		if res.sc.upgrade {
			fmt.Fprintf(w, "upgrades %s: %d; USR2 to the new master in charge, the old one gone: %s\n", o, len(took[o]), spread(took[o]))
			continue
		}
		fmt.Fprintf(w, "reloads %s: %d; SIGHUP to outcome: %s; to replaced workers gone: %s\n",
			o, len(took[o]), spread(took[o]), spread(drained[o]))
	}
	if reason != "" {
		fmt.Fprintf(w, "first rollback's reason: %s\n", reason)
	}
	if res.sc.upgrade {
		fmt.Fprint(w, "each upgrade, USR2 to the old master gone:")
		for i := range each {
			each[i], _, _ = strings.Cut(each[i], "/")
		}
	} else {
		fmt.Fprint(w, "each reload, SIGHUP to outcome/to replaced workers gone:")
	}
	for i, e := range each {
		if i%6 == 0 {
			fmt.Fprint(w, "\n ")
		}
		fmt.Fprint(w, " ", e)
	}
	fmt.Fprintln(w)
}
