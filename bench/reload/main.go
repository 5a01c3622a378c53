// Command reload measures zero-downtime reloads end to end. It runs the real
// supervisor binary on 127.0.0.1 and drives it with vegeta at a fixed rate
// (by default one new connection per request, so every request goes through
// the shared accept queue). Per scenario it measures a steady phase, then a
// reload phase of back-to-back reloads (each over once the workers it
// replaced have exited), and prints requests, failures, p50/p99/max latency,
// each reload's duration and outcome, and p99(reload)/p99(steady).
//
//	go build -o bin/supervisor ./cmd/supervisor
//	go run ./bench/reload -bin bin/supervisor -workers 2 -rate 1000 -reloads 15
//
// Scenarios: plain (the example app; after the reload phase, a floor
// phase: as many rounds, at the same pace, of -workers bare execs of the
// binary at nice -boot-nice, no supervisor involved, and the p99 of the
// requests sent while they ran: the execs' own cost), broken (a deploy
// whose new workers exit 3 before ready: every reload rolls back, then a
// fixed deploy succeeds), slow (--boot-delay 2s), recycle (the example app; one reload
// turns on -max-requests and -max-requests-jitter, and the reload phase is
// then -recycle-for of recycling with no reload, counting the workers
// recycled), uvicorn (unmodified, Debian's python3-uvicorn; with
// keep-alive, then with a new connection per request), upgrade (the example
// app; the reload phase is master upgrades, USR2, each over once the new
// master says it took over, the old one gone; the worker processes across
// both masters are sampled every 5 ms), storm (unmodified uvicorn, a new
// connection per request; the reload phase is a HUP every -storm-every for
// -storm-for, none waiting for a rollout, then the pool settling: answered
// requests per second, workers started, reloads that succeeded), goplain
// (the example app stopping the usual Go way, http.Server.Shutdown, which
// drops a request read after SIGTERM: what steering protects such apps
// from; its failures are the app's own, printed apart).
// Every master runs with --ready auto, the default, and --boot-nice from
// -boot-nice (a comma-separated list runs each scenario once per value,
// e.g. -boot-nice 0,10 to compare booting at the master's priority and
// below it), and --steer from -steer (likewise: -steer auto,off runs
// each scenario steered and with one shared socket per bind). -scenario
// takes all, one name or a comma-separated list of names.
//
// With -plot FILE it also draws each run's requests and reloads over time,
// one panel per run stacked in one image, its format from FILE's extension
// (see plot.go):
//
//	go run ./bench/reload -bin bin/supervisor -workers 2 -rate 1000 -reloads 5 -scenario plain,broken -plot docs/reload.png
//
// It exits non-zero when a request failed, except the resets by uvicorn's
// own SIGTERM handling with a new connection per request (printed apart), when
// a reload ended other than expected, or when a scenario could not run.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// options are the settings every scenario shares.
type options struct {
	bin, uvicornDir   string // absolute
	workers, rate     int    // rate: requests per second
	reloads           int
	steady            time.Duration
	interval          time.Duration // a reload starts at most this often
	recycleFor        time.Duration // length of the recycle scenario's phase
	maxRequests       int           // recycle scenario: max_requests
	maxRequestsJitter int           // recycle scenario: max_requests_jitter
	keepalive         bool          // plain, broken and slow; uvicorn runs both ways
	bootNice          int           // --boot-nice of every master
	steer             string        // --steer of every master
	stormEvery        time.Duration // storm scenario: a HUP this often
	stormFor          time.Duration // storm scenario: for this long
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/supervisor", "the supervisor binary")
	flag.IntVar(&o.workers, "workers", 2, "workers")
	flag.IntVar(&o.rate, "rate", 1000, "requests per second")
	flag.IntVar(&o.reloads, "reloads", 15, "reloads in the reload phase")
	flag.DurationVar(&o.steady, "steady", 5*time.Second, "length of the steady phase")
	flag.DurationVar(&o.recycleFor, "recycle-for", 30*time.Second, "length of the recycle scenario's phase")
	flag.IntVar(&o.maxRequests, "max-requests", 200, "recycle scenario: max_requests")
	flag.IntVar(&o.maxRequestsJitter, "max-requests-jitter", 50, "recycle scenario: max_requests_jitter")
	flag.DurationVar(&o.interval, "interval", time.Second, "start a reload at most this often (0: back to back)")
	flag.DurationVar(&o.stormEvery, "storm-every", 1500*time.Millisecond, "storm scenario: a HUP this often")
	flag.DurationVar(&o.stormFor, "storm-for", 20*time.Second, "storm scenario: for this long")
	which := flag.String("scenario", "all", "all, or a comma-separated list of plain, broken, slow, recycle, uvicorn, upgrade and storm")
	flag.BoolVar(&o.keepalive, "keepalive", false, "reuse connections (plain, broken, slow; uvicorn runs both ways)")
	flag.StringVar(&o.uvicornDir, "uvicorn-dir", "testdata/uvicorn", "the directory of uvicorn's app.py")
	nices := flag.String("boot-nice", "10", "comma-separated --boot-nice values: each scenario runs once per value (0: off)")
	steers := flag.String("steer", "auto", "comma-separated --steer values (auto, off): each scenario runs once per value")
	plotFile := flag.String("plot", "", "draw each run's latencies over time and its reloads into this .png or .svg file")
	flag.Parse()
	all := []string{"plain", "broken", "slow", "recycle", "uvicorn", "upgrade", "storm", "goplain"}
	names := all
	if *which != "all" {
		names = strings.Split(*which, ",")
	}
	unknown := slices.ContainsFunc(names, func(n string) bool { return !slices.Contains(all, n) })
	var bootNices []int
	var err error
	for _, v := range strings.Split(*nices, ",") {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 0 || n > 19 {
			err = fmt.Errorf("-boot-nice %q: want comma-separated numbers from 0 to 19", *nices)
		}
		bootNices = append(bootNices, n)
	}
	steerModes := strings.Split(*steers, ",")
	if slices.ContainsFunc(steerModes, func(s string) bool { return s != "auto" && s != "off" }) {
		err = fmt.Errorf("-steer %q: want auto, off, or both comma-separated", *steers)
	}
	if *plotFile != "" && err == nil {
		_, err = plotFormat(*plotFile)
	}
	if err == nil {
		o.bin, err = filepath.Abs(o.bin)
	}
	if err == nil {
		o.uvicornDir, err = filepath.Abs(o.uvicornDir)
	}
	if _, serr := os.Stat(o.bin); err == nil && serr != nil {
		err = fmt.Errorf("%w (build it: go build -o bin/supervisor ./cmd/supervisor)", serr)
	}
	if err == nil && (unknown || o.workers < 1 || o.rate < 1 || o.reloads < 1 || o.steady <= 0 || o.stormEvery <= 0 || o.stormFor <= 0) {
		err = fmt.Errorf("want -scenario all, or names among plain, broken, slow, recycle, uvicorn, upgrade, storm and goplain, and positive -workers, -rate, -reloads, -steady, -storm-every, -storm-for")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "reload:", err)
		os.Exit(2)
	}
	tmp, err := os.MkdirTemp("", "bench-reload-") // the broken scenario's deploy
	if err != nil {
		fmt.Fprintln(os.Stderr, "reload:", err)
		os.Exit(1)
	}
	defer os.RemoveAll(tmp)

	fmt.Printf("go run ./bench/reload %s\n", strings.Join(os.Args[1:], " "))
	fmt.Printf("%s/%s, %d CPUs, %s; %d workers, --ready auto, %d req/s, %d reloads (at most one per %s), steady phase %s\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), o.workers, o.rate, o.reloads, o.interval, o.steady)
	problems := 0
	var panels []panel
	for _, name := range names {
		for _, nice := range bootNices {
			for _, steer := range steerModes {
				o.bootNice, o.steer = nice, steer
				for _, sc := range scenariosNamed(name, o, tmp) {
					if len(bootNices) > 1 {
						sc.title += fmt.Sprintf(" (boot_nice %d)", nice)
					}
					if len(steerModes) > 1 {
						sc.title += " (steer " + steer + ")"
					}
					res, err := run(sc, o)
					if err != nil {
						fmt.Printf("\n== %s ==\nPROBLEM: %v\n", sc.title, err)
						problems++
						continue
					}
					if *plotFile != "" {
						panels = append(panels, res.panel()) // before print sorts the latencies
					}
					res.print(os.Stdout)
					problems += len(res.problems())
				}
			}
		}
	}
	if *plotFile != "" && len(panels) > 0 {
		if err := writePlot(*plotFile, panels); err != nil {
			fmt.Printf("\nPROBLEM: %v\n", err)
			problems++
		} else {
			fmt.Printf("\nplot: %s (%d panels)\n", *plotFile, len(panels))
		}
	}
	if problems > 0 {
		fmt.Printf("\nFAIL: %d problem(s) above\n", problems)
		os.RemoveAll(tmp)
		os.Exit(1)
	}
	fmt.Println("\nPASS: no request failed because of the supervisor; every reload ended as expected")
}
