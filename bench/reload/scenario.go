package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

const (
	stepTimeout = 2 * time.Minute // master start to ready; each step of a reload; SIGTERM to exit
	python      = "/usr/bin/python3"
)

// scenario is one supervised app and how its reloads should end.
type scenario struct {
	name, title string
	args        []string // master flags and the worker command, from "--"
	keepalive   bool
	appResets   bool   // resets are the app's own shutdown behaviour: reported apart
	note        string // printed with the results
	// breakDeploy, when set, breaks (true) or fixes (false) the command on
	// disk; reloads while broken must roll back.
	breakDeploy func(broken bool) error
	// upgrade: the reload phase is a series of master upgrades (USR2).
	upgrade bool
	// recycle, when set, turns recycling on with a reload (writing the
	// config file the master reads) and measures the recycling phase
	// instead of a series of reloads.
	recycle func() error
	// storm: the reload phase is a HUP every o.stormEvery for o.stormFor,
	// each sent without waiting for the one before, then the pool settling.
	storm bool
	// floor: after the reload phase, a floor phase (measureFloor).
	floor bool
}

// scenariosNamed returns the runs of the scenario called name.
func scenariosNamed(name string, o options, tmp string) []scenario {
	switch name {
	case "plain":
		return []scenario{{name: name, title: "plain: the example app",
			args: []string{"--", o.bin, "example-app"}, keepalive: o.keepalive, floor: true}}
	case "broken":
		script, marker := filepath.Join(tmp, "deploy.sh"), filepath.Join(tmp, "deploy-is-broken")
		return []scenario{{name: name, title: "broken: a deploy whose new workers exit 3 before ready",
			args: []string{"--", script}, keepalive: o.keepalive,
			breakDeploy: func(broken bool) error {
				if broken {
					return os.WriteFile(marker, nil, 0o644)
				}
				if err := os.Remove(marker); err != nil && !os.IsNotExist(err) {
					return err
				}
				// The deploy: a wrapper that execs the example app unless the marker exists.
				return os.WriteFile(script, fmt.Appendf(nil, "#!/bin/sh\nif [ -e %q ]; then\n"+
					"  echo \"broken deploy: $0 exits 3 while %s exists\" >&2\n  exit 3\nfi\nexec %q example-app\n",
					marker, marker, o.bin), 0o755)
			}}}
	case "goplain":
		return []scenario{{name: name, title: "goplain: the example app stopping with plain http.Server.Shutdown",
			args: []string{"--", o.bin, "example-app", "--plain-shutdown"}, keepalive: o.keepalive, appResets: true}}
	case "upgrade":
		return []scenario{{name: name, title: "upgrade: the master replaced by USR2, the example app",
			args: []string{"--", o.bin, "example-app"}, keepalive: o.keepalive, upgrade: true}}
	case "slow":
		return []scenario{{name: name, title: "slow: the example app with --boot-delay 2s",
			args: []string{"--", o.bin, "example-app", "--boot-delay", "2s"}, keepalive: o.keepalive}}
	case "recycle":
		cfg := filepath.Join(tmp, "recycle.yaml")
		if err := os.WriteFile(cfg, []byte("max_requests: 0\n"), 0o644); err != nil {
			return nil
		}
		return []scenario{{name: name, title: fmt.Sprintf("recycle: the example app, max_requests %d, jitter %d, for %s", o.maxRequests, o.maxRequestsJitter, o.recycleFor),
			args: []string{"--config", cfg, "--", o.bin, "example-app"}, keepalive: o.keepalive,
			recycle: func() error {
				return os.WriteFile(cfg, fmt.Appendf(nil, "max_requests: %d\nmax_requests_jitter: %d\n", o.maxRequests, o.maxRequestsJitter), 0o644)
			}}}
	case "storm":
		args := []string{"--chdir", o.uvicornDir, "--", python, "-m", "uvicorn", "--fd", "3", "--no-access-log", "app:app"}
		return []scenario{{name: name, title: fmt.Sprintf("storm: uvicorn, a HUP every %s for %s", o.stormEvery, o.stormFor),
			args: args, appResets: true, storm: true}}
	case "uvicorn":
		args := []string{"--chdir", o.uvicornDir, "--", python, "-m", "uvicorn", "--fd", "3", "--no-access-log", "app:app"}
		return []scenario{
			{name: name, title: "uvicorn, keep-alive", args: args, keepalive: true,
				note: "uvicorn --fd 3 never sets TCP_NODELAY itself; accepted sockets inherit it from the\n" +
					"master's listener, or each keep-alive answer would wait ~40 ms for the client's delayed ACK"},
			{name: name, title: "uvicorn, a new connection per request", args: args, appResets: true},
		}
	}
	return nil
}

// run starts the master for sc, measures a steady phase and a reload
// phase, and stops the master. On error the master's log is kept.
func run(sc scenario, o options) (*result, error) {
	if sc.name == "uvicorn" || sc.name == "storm" {
		if out, err := exec.Command(python, "-c", "import uvicorn").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s cannot import uvicorn (apt-get install python3-uvicorn): %v: %s", python, err, out)
		}
	}
	if sc.breakDeploy != nil {
		if err := sc.breakDeploy(false); err != nil {
			return nil, err
		}
	}
	args := append([]string{"--bind", "127.0.0.1:0", "--workers", strconv.Itoa(o.workers),
		"--log-format", "json", "--ready", "auto", "--boot-nice", strconv.Itoa(o.bootNice), "--steer", o.steer}, sc.args...)
	logPath := filepath.Join(os.TempDir(), fmt.Sprintf("bench-reload-%s-%d.log", sc.name, time.Now().UnixNano()))
	m, err := startMaster(o.bin, args, logPath)
	if err != nil {
		return nil, err
	}
	res := &result{sc: sc, o: o, load: loadAverage()}
	err = res.measure(m)
	if serr := m.stop(stepTimeout); err == nil {
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("%w (master log: %s)", err, logPath)
	}
	os.Remove(logPath)
	return res, nil
}

// measure runs both phases against a started master.
func (res *result) measure(m *master) error {
	addr, err := m.ready(stepTimeout)
	if err != nil {
		return err
	}
	sc, o := res.sc, res.o
	_, steady := attack(addr, o.rate, sc.keepalive, o.steady)
	res.steady = <-steady

	if sc.recycle != nil {
		return res.measureRecycling(m, addr)
	}
	if sc.storm {
		return res.measureStorm(m, addr)
	}
	stop, reload := attack(addr, o.rate, sc.keepalive, time.Duration(3*o.reloads+6)*stepTimeout) // bounded all the same
	defer stop()
	broken, n := sc.breakDeploy != nil, o.reloads
	if broken {
		n++ // and then the fixed deploy
		if err := sc.breakDeploy(true); err != nil {
			return err
		}
	}
	if sc.upgrade {
		quit, sampled := sampleWorkers(m)
		defer func() { close(quit); res.maxWorkers = <-sampled }()
	}
	for i := range n {
		if broken && i == o.reloads {
			broken = false
			if err := sc.breakDeploy(false); err != nil {
				return err
			}
		}
		began := time.Now()
		reload := m.reload
		if sc.upgrade {
			reload = m.upgrade
		}
		r, err := reload(stepTimeout)
		if err != nil {
			return err
		}
		time.Sleep(o.interval - time.Since(began)) // pacing: one reload per interval
		switch r.expected = "succeeded"; {
		case broken:
			r.expected = "rolled back"
		case sc.upgrade:
			r.expected = "upgraded"
		}
		res.reloads = append(res.reloads, r)
	}
	stop()
	res.reload = <-reload
	if sc.floor {
		if err := res.measureFloor(addr); err != nil {
			return err
		}
	}
	gens := map[int]int{}
	m.count(0, func(l logLine) bool {
		if pid, ok := l["pid"].(float64); ok && l.msg() == "worker started" {
			gens[int(pid)] = l.gen()
		}
		return false
	})
	res.rollouts, res.rolloutsOld, res.rolloutsNew = res.reload.during(res.reloads, gens)
	return nil
}

// sampleWorkers counts the worker processes across masters every 5 ms
// until quit is closed, and yields the most it saw.
func sampleWorkers(m *master) (quit chan struct{}, most <-chan int) {
	quit = make(chan struct{})
	out := make(chan int, 1)
	go func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		n := 0
		for {
			select {
			case <-quit:
				out <- n
				return
			case <-tick.C:
				n = max(n, m.workers())
			}
		}
	}()
	return quit, out
}

// measureFloor measures what merely starting the new workers' program
// costs the serving workers: as many times as there were reloads, at the
// same pace, it runs -workers bare execs of `BIN version` at once, at nice
// boot_nice (through nice(1)), no supervisor involved, and keeps the
// requests sent while they ran: what the execs of a rollout cost the
// serving workers by themselves, to hold a rollout's figures against.
func (res *result) measureFloor(addr string) error {
	o := res.o
	stop, done := attack(addr, o.rate, res.sc.keepalive, time.Duration(3*o.reloads+6)*stepTimeout) // bounded all the same
	defer stop()
	var windows []reloadResult
	for range o.reloads {
		began := time.Now()
		cmds := make([]*exec.Cmd, o.workers)
		var err error
		for i := range cmds {
			cmds[i] = exec.Command("nice", "-n", strconv.Itoa(o.bootNice), o.bin, "version")
			if serr := cmds[i].Start(); serr != nil && err == nil {
				err = fmt.Errorf("floor: %w", serr)
			}
		}
		for _, c := range cmds {
			if c.Process != nil {
				if werr := c.Wait(); werr != nil && err == nil {
					err = fmt.Errorf("floor: %s: %w", c, werr)
				}
			}
		}
		if err != nil {
			return err // the floor is only a floor if every exec ran
		}
		windows = append(windows, reloadResult{at: began, drained: time.Since(began)})
		time.Sleep(o.interval - time.Since(began))
	}
	stop()
	all := <-done
	res.floorFailed = all.count(res.counted)
	res.floor, _, _ = all.during(windows, nil)
	return nil
}

// measureRecycling turns recycling on with one reload, then attacks for
// o.recycleFor and counts the recycles the master logged meanwhile.
func (res *result) measureRecycling(m *master, addr string) error {
	if err := res.sc.recycle(); err != nil {
		return err
	}
	r, err := m.reload(stepTimeout)
	if err != nil {
		return err
	}
	r.expected = "succeeded"
	res.reloads = append(res.reloads, r)
	_, from := m.count(0, func(logLine) bool { return false })
	_, phase := attack(addr, res.o.rate, res.sc.keepalive, res.o.recycleFor)
	res.reload = <-phase
	res.recycles, _ = m.count(from, msgIs("recycling worker"))
	return nil
}

// measureStorm attacks while sending a HUP every o.stormEvery for
// o.stormFor, never waiting for a rollout, then waits for the generation of
// the last HUP to serve. Each HUP during a rollout retargets it, so the
// canary boots wasted are the starts beyond the final generation's.
func (res *result) measureStorm(m *master, addr string) error {
	o := res.o
	_, from := m.count(0, func(logLine) bool { return false })
	stop, phase := attack(addr, o.rate, res.sc.keepalive, o.stormFor+2*stepTimeout) // bounded all the same
	defer stop()
	began := time.Now()
	tick := time.NewTicker(o.stormEvery)
	for time.Since(began) < o.stormFor {
		if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			tick.Stop()
			return err
		}
		res.hups++
		<-tick.C
	}
	tick.Stop()
	stormed := time.Now()
	// The loop waited a whole interval after the last HUP, so its reload
	// is logged: the newest generation is the one that must serve.
	last := 0
	m.count(from, func(l logLine) bool {
		if l.msg() == "reload" {
			last = max(last, l.gen())
		}
		return false
	})
	if last == 0 {
		return fmt.Errorf("storm: no reload logged for %d HUPs", res.hups)
	}
	if _, _, err := m.next(from, stepTimeout, fmt.Sprintf("reload succeeded for generation %d", last), func(l logLine) bool {
		return l.msg() == "reload succeeded" && l.gen() == last
	}); err != nil {
		return err
	}
	res.settled = time.Since(stormed)
	stop()
	res.reload = <-phase
	res.starts, _ = m.count(from, msgIs("worker started"))
	res.succeeded, _ = m.count(from, msgIs("reload succeeded"))
	res.throughput = res.reload.perSecond(began, stormed)
	return nil
}

// attack sends GET http://addr/ at rate per second for d, or until stop
// (requests in flight complete; stop may be called again). done yields the
// results once the attack is over.
func attack(addr string, rate int, keepalive bool, d time.Duration) (stop func(), done <-chan *phase) {
	// Each connection gets a source address of its own (testkit.DialLoopback):
	// from 127.0.0.1 alone, a new connection per request at 1000 req/s runs
	// out of ephemeral ports after about 15 s, and the search for a free one
	// then takes the CPU the workers need.
	atk := vegeta.NewAttacker(vegeta.Client(&http.Client{Transport: &http.Transport{
		DialContext:         testkit.DialLoopback,
		DisableKeepAlives:   !keepalive,
		MaxIdleConnsPerHost: vegeta.DefaultConnections,
	}}), vegeta.Timeout(10*time.Second), vegeta.MaxBody(4096))
	target := vegeta.NewStaticTargeter(vegeta.Target{Method: "GET", URL: "http://" + addr + "/"})
	results := atk.Attack(target, vegeta.Rate{Freq: rate, Per: time.Second}, d, "")
	c := make(chan *phase, 1)
	go func() {
		p := &phase{errs: map[string]int{}}
		for r := range results {
			p.add(r)
		}
		c <- p
	}()
	return func() { atk.Stop() }, c
}

// loadAverage is the host's 1-minute load average, as /proc/loadavg says.
func loadAverage() string {
	b, _ := os.ReadFile("/proc/loadavg")
	var s string
	fmt.Sscan(string(b), &s)
	return s
}
