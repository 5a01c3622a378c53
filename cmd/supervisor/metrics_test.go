package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// metricsAddr is the address the master serves --metrics on, from its
// "metrics listening" log line (port 0 resolved).
func (p *proc) metricsAddr() string {
	p.t.Helper()
	addr, _ := p.waitLog("metrics listening", 30*time.Second)["address"].(string)
	if addr == "" {
		p.t.Fatal(`"metrics listening" log line without an address`)
	}
	return addr
}

// metricsClient keeps its connection to the metrics port between requests,
// so a poll is one round trip, and gives up on a request after 10 s.
func metricsClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
}

// fetch GETs url with c and returns the status code and the body.
func fetch(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// scrape reads /metrics at addr and parses it as the Prometheus text format.
func scrape(t *testing.T, addr string) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	code, body, err := fetch(client, "http://"+addr+"/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v: %.200s", code, err, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return body, fams
}

// sample is the value of the one metric of fam whose labels include
// labels (name, value pairs); ok is false when there is none.
func sample(fams map[string]*dto.MetricFamily, fam string, labels ...string) (float64, bool) {
	f := fams[fam]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		if !hasLabels(m, labels...) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, labels ...string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// labelValues is every value label takes in fam.
func labelValues(f *dto.MetricFamily, label string) []string {
	var vs []string
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label && !slices.Contains(vs, lp.GetValue()) {
				vs = append(vs, lp.GetValue())
			}
		}
	}
	slices.Sort(vs)
	return vs
}

// labelNames is the set of label names fam's metrics carry (le and
// quantile, a histogram's and a summary's own, left out).
func labelNames(f *dto.MetricFamily) []string {
	var ns []string
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if !slices.Contains(ns, lp.GetName()) {
				ns = append(ns, lp.GetName())
			}
		}
	}
	slices.Sort(ns)
	return ns
}

// designMetrics is the minimum DESIGN §6 names, with the type and the
// labels each must have (the product's pre-declared label values where the
// brief names them), plus a few of the standard process_* and go_* ones.
var designMetrics = []struct {
	name   string
	typ    dto.MetricType
	labels []string            // exactly these label names
	values map[string][]string // label -> at least these values
}{
	{"supervisor_build_info", dto.MetricType_GAUGE, []string{"goversion", "version"}, nil},
	{"supervisor_workers", dto.MetricType_GAUGE, []string{"state"}, map[string][]string{"state": {"ready", "starting", "stopping"}}},
	{"supervisor_workers_desired", dto.MetricType_GAUGE, nil, nil},
	{"supervisor_generation", dto.MetricType_GAUGE, nil, nil},
	{"supervisor_worker_starts_total", dto.MetricType_COUNTER, []string{"reason"},
		map[string][]string{"reason": {"boot", "crash", "recycle", "reload", "replace", "rollback", "scale"}}},
	{"supervisor_worker_exits_total", dto.MetricType_COUNTER, []string{"how"},
		map[string][]string{"how": {"crashed", "killed", "stopped", "timed_out"}}},
	{"supervisor_worker_boot_seconds", dto.MetricType_HISTOGRAM, nil, nil},
	{"supervisor_worker_drain_seconds", dto.MetricType_HISTOGRAM, nil, nil},
	{"supervisor_reloads_total", dto.MetricType_COUNTER, []string{"result"},
		map[string][]string{"result": {"abandoned", "config_failed", "refused", "rolled_back", "succeeded", "superseded"}}},
	{"supervisor_reload_duration_seconds", dto.MetricType_HISTOGRAM, []string{"result"},
		map[string][]string{"result": {"rolled_back", "succeeded"}}},
	{"supervisor_last_reload_success_timestamp_seconds", dto.MetricType_GAUGE, nil, nil},
	{"supervisor_recycles_total", dto.MetricType_COUNTER, []string{"reason"},
		map[string][]string{"reason": {"max_lifetime", "max_memory", "max_requests"}}},
	{"supervisor_heartbeat_timeouts_total", dto.MetricType_COUNTER, nil, nil},
	{"supervisor_worker_requests_total", dto.MetricType_COUNTER, nil, nil},
	{"supervisor_worker_rss_bytes", dto.MetricType_GAUGE, []string{"slot"}, nil},
	{"supervisor_notify_datagrams_dropped_total", dto.MetricType_COUNTER, nil, nil},
	{"supervisor_control_requests_total", dto.MetricType_COUNTER, []string{"command", "result"},
		map[string][]string{"command": {"reload", "scale", "status", "stop"}, "result": {"error", "ok", "rejected"}}},
	{"supervisor_upgrades_total", dto.MetricType_COUNTER, []string{"result"}, nil},
	{"supervisor_steer_weight", dto.MetricType_GAUGE, []string{"bind", "socket"}, map[string][]string{"socket": {"0", "1"}}},
	{"supervisor_steer_generation", dto.MetricType_GAUGE, []string{"bind", "socket"}, map[string][]string{"socket": {"0", "1"}}},
	{"supervisor_steer_pause_seconds", dto.MetricType_HISTOGRAM, nil, nil},
	{"process_resident_memory_bytes", dto.MetricType_GAUGE, nil, nil},
	{"process_cpu_seconds_total", dto.MetricType_COUNTER, nil, nil},
	{"process_open_fds", dto.MetricType_GAUGE, nil, nil},
	{"process_start_time_seconds", dto.MetricType_GAUGE, nil, nil},
	{"go_goroutines", dto.MetricType_GAUGE, nil, nil},
	{"go_memstats_heap_alloc_bytes", dto.MetricType_GAUGE, nil, nil},
}

// allowedLabels is every label name /metrics may use: bounded sets only.
// "slot" is the only per-worker one; no pid, ever. "bind" is one of the
// config's binds, "socket" an index in a steered bind's group (two, and
// more only while more generations live at once).
var allowedLabels = []string{"bind", "command", "cause", "goversion", "how", "reason", "result", "slot", "socket", "state", "version"}

// /metrics of a master that has rolled out one reload and rolled back
// another parses as the Prometheus text format, has every metric DESIGN §6
// names with its type and labels, counts what happened, carries no pid
// label, and passes `promtool check metrics`. The other endpoints answer
// as documented.
func TestMetricsExposition(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken")
	app := writeScript(t, fmt.Sprintf("if [ -e %s ]; then echo 'app: cannot import settings' >&2; exit 3; fi\nexec %s example-app\n", broken, self(t)))
	began := time.Now()
	p := startQuick(t, "--bind", "127.0.0.1:0", "--workers", "2", "--metrics", "127.0.0.1:0", "--", app)
	p.ready()
	maddr := p.metricsAddr()
	if out, code := p.quickClient("reload", "--wait"); code != 0 {
		t.Fatalf("reload --wait: exit %d: %s", code, out)
	}
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := p.quickClient("reload", "--wait"); code == 0 || !strings.Contains(out, "rolled back") {
		t.Fatalf("broken reload --wait: exit %d: %s; want non-zero and rolled back", code, out)
	}

	// The canary of the broken reload is gone, both slots have an RSS sample.
	var body string
	var fams map[string]*dto.MetricFamily
	testkit.WaitFor(t, 10*time.Second, "2 ready workers, none starting or stopping, an RSS per slot", func() bool {
		body, fams = scrape(t, maddr)
		ready, _ := sample(fams, "supervisor_workers", "state", "ready")
		starting, _ := sample(fams, "supervisor_workers", "state", "starting")
		stopping, _ := sample(fams, "supervisor_workers", "state", "stopping")
		rss := fams["supervisor_worker_rss_bytes"]
		return ready == 2 && starting == 0 && stopping == 0 && rss != nil && slices.Equal(labelValues(rss, "slot"), []string{"0", "1"})
	})
	logSample(t, body)

	for _, want := range designMetrics {
		f := fams[want.name]
		if f == nil {
			t.Errorf("%s: missing", want.name)
			continue
		}
		if f.GetType() != want.typ {
			t.Errorf("%s: type %s, want %s", want.name, f.GetType(), want.typ)
		}
		if got := labelNames(f); !slices.Equal(got, want.labels) {
			t.Errorf("%s: labels %v, want %v", want.name, got, want.labels)
		}
		for label, values := range want.values {
			if got := labelValues(f, label); !isSubset(values, got) {
				t.Errorf("%s{%s}: values %v, want at least %v (every series exists from the start)", want.name, label, got, values)
			}
		}
	}
	for name, f := range fams {
		for _, l := range labelNames(f) {
			if strings.Contains(strings.ToLower(l), "pid") || !slices.Contains(allowedLabels, l) {
				t.Errorf("%s has label %q; allowed: %v (no pid, slot the only per-worker label)", name, l, allowedLabels)
			}
			if l == "slot" && name != "supervisor_worker_rss_bytes" {
				t.Errorf("%s has a slot label; only supervisor_worker_rss_bytes is per worker", name)
			}
		}
		if strings.HasPrefix(name, "supervisor_") && f.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
	}

	// What happened: start, one reload that succeeded, one rolled back.
	for _, c := range []struct {
		fam    string
		labels []string
		want   func(float64) bool
		what   string
	}{
		{"supervisor_build_info", nil, eq(1), "1"},
		{"supervisor_workers_desired", nil, eq(2), "2"},
		{"supervisor_generation", nil, eq(2), "2 (the rolled-back reload changes nothing)"},
		{"supervisor_reloads_total", []string{"result", "succeeded"}, eq(1), "1"},
		{"supervisor_reloads_total", []string{"result", "rolled_back"}, eq(1), "1"},
		{"supervisor_reloads_total", []string{"result", "config_failed"}, eq(0), "0"},
		{"supervisor_reload_duration_seconds", []string{"result", "succeeded"}, eq(1), "1 observation"},
		{"supervisor_reload_duration_seconds", []string{"result", "rolled_back"}, eq(1), "1 observation"},
		{"supervisor_worker_starts_total", []string{"reason", "boot"}, eq(2), "2"},
		{"supervisor_worker_starts_total", []string{"reason", "reload"}, atLeast(3), "at least 3 (2, then the broken canary)"},
		{"supervisor_worker_exits_total", []string{"how", "crashed"}, atLeast(1), "at least 1 (the broken canary)"},
		{"supervisor_worker_exits_total", []string{"how", "stopped"}, atLeast(2), "at least 2 (generation 1)"},
		{"supervisor_worker_boot_seconds", nil, atLeast(4), "at least 4 observations"},
		{"supervisor_worker_drain_seconds", nil, atLeast(2), "at least 2 observations"},
		{"supervisor_control_requests_total", []string{"command", "reload", "result", "ok"}, atLeast(1), "at least 1"},
		{"supervisor_last_reload_success_timestamp_seconds", nil,
			func(v float64) bool { return v >= float64(began.Unix()) && v <= float64(time.Now().Unix()+1) }, "a time during the test"},
		{"supervisor_worker_rss_bytes", []string{"slot", "0"}, atLeast(1 << 20), "at least 1 MiB"},
	} {
		if v, ok := sample(fams, c.fam, c.labels...); !ok || !c.want(v) {
			t.Errorf("%s%v = %v (present %v), want %s", c.fam, c.labels, v, ok, c.what)
		}
	}

	t.Run("promtool", func(t *testing.T) {
		promtool, err := exec.LookPath("promtool")
		if err != nil {
			t.Skip("promtool not installed (apt-get install prometheus)")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("promtool check metrics: %v, output:\n%s", err, out)
		}
	})

	t.Run("endpoints", func(t *testing.T) {
		base := "http://" + maddr
		for _, c := range []struct {
			method, path string
			code         int
			body         string
		}{
			{"GET", "/health/live", 200, "ok"},
			{"GET", "/health/ready", 200, "ready: 2/2 workers ready"},
			{"GET", "/status", 200, `"phase": "running"`},
			{"GET", "/", 404, ""},
			{"GET", "/metricsx", 404, ""},
			{"GET", "/health", 404, ""},
			{"POST", "/metrics", 405, ""},
		} {
			req, _ := http.NewRequest(c.method, base+c.path, nil)
			resp, err := client.Do(req)
			if err != nil {
				t.Errorf("%s %s: %v", c.method, c.path, err)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.code || !strings.Contains(string(b), c.body) {
				t.Errorf("%s %s: %d %q, want %d and %q", c.method, c.path, resp.StatusCode, b, c.code, c.body)
			}
		}
		var st statusJSON
		if _, b, err := fetch(client, base+"/status"); err != nil || json.Unmarshal([]byte(b), &st) != nil {
			t.Fatalf("/status: %v: %s", err, b)
		}
		if ctl := p.controlStatus(); st.Generation != ctl.Generation || st.Workers != ctl.Workers || st.Ready != 2 || len(st.Pool) != 2 {
			t.Errorf("/status %+v, status --json %+v: want the same master, 2 ready", st, ctl)
		}
	})
}

func eq(want float64) func(float64) bool      { return func(v float64) bool { return v == want } }
func atLeast(want float64) func(float64) bool { return func(v float64) bool { return v >= want } }

func isSubset(want, got []string) bool {
	for _, w := range want {
		if !slices.Contains(got, w) {
			return false
		}
	}
	return true
}

// logSample logs the supervisor_* samples of a scrape, buckets left out.
func logSample(t *testing.T, body string) {
	var lines []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "supervisor_") && !strings.Contains(l, "_bucket{") {
			lines = append(lines, l)
		}
	}
	t.Logf("/metrics (supervisor_*, no buckets):\n%s", strings.Join(lines, "\n"))
}

// vmRSS is a process's resident memory in bytes, from /proc/PID/status.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// startQuick is start with GORACE=atexit_sleep_ms=0 for the master and so
// for its workers: a -race binary otherwise sleeps 1 s as it exits, and a
// rollout waits for each old worker's exit before it starts the next batch
// (stopping workers count toward workers + max_surge).
func startQuick(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, quick(command(t, args...)))
}

// quick sets GORACE=atexit_sleep_ms=0 in cmd's environment (see startQuick).
func quick(cmd *exec.Cmd) *exec.Cmd {
	cmd.Env = append(cmd.Env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}

// quickClient is p.client without the 1 s a -race client sleeps at exit.
func (p *proc) quickClient(args ...string) (string, int) {
	p.t.Helper()
	return runToEnd(p.t, quick(command(p.t, append(args, "--control", controlPath(p.cmd))...)))
}

// controlStatus asks p for its status over the control socket, in
// process: a poll without starting a client.
func (p *proc) controlStatus() *supervisor.Status {
	p.t.Helper()
	resp, err := supervisor.CallControl(controlPath(p.cmd), supervisor.Request{Command: "status"}, 10*time.Second)
	if err != nil || !resp.OK || resp.Status == nil {
		p.t.Fatalf("status: %v %+v", err, resp)
	}
	return resp.Status
}

// TERM with --shutdown-delay 2s: /health/ready says 503 within 50 ms of the
// signal and stays 503, /health/live stays 200, and the app keeps serving
// every request for the whole delay; then the master exits 0.
func TestTermShutdownDelayHealth(t *testing.T) {
	const delay = 2 * time.Second
	p := startQuick(t, "--bind", "127.0.0.1:0", "--workers", "2", "--shutdown-delay", delay.String(),
		"--metrics", "127.0.0.1:0", "--", self(t), "example-app")
	addr := p.ready()
	base := "http://" + p.metricsAddr()
	hc := metricsClient()
	testkit.WaitFor(t, 10*time.Second, "/health/ready 200", func() bool {
		code, _, _ := fetch(hc, base+"/health/ready")
		return code == http.StatusOK
	})

	// One goroutine asks /health/ready in a tight loop, on a kept-alive
	// connection, recording when each answer arrived.
	type answer struct {
		at   time.Time
		code int
		body string
		err  error
	}
	var answers []answer // the poller's until it is done
	quit, polling, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		rc := metricsClient()
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			default:
			}
			code, body, err := fetch(rc, base+"/health/ready")
			answers = append(answers, answer{time.Now(), code, body, err})
			if i == 10 {
				close(polling)
			}
		}
	}()
	testkit.Recv(t, polling, 10*time.Second, "the readiness poller to be under way")
	stopLoad := load(t, addr, 2)

	killAt := time.Now()
	p.signal(syscall.SIGTERM)
	live, notLive := 0, []string{}
	tick := time.NewTicker(50 * time.Millisecond)
	for time.Since(killAt) < delay-300*time.Millisecond {
		if code, body, err := fetch(hc, base+"/health/live"); code == http.StatusOK {
			live++
		} else {
			notLive = append(notLive, fmt.Sprintf("%s after TERM: %d %q %v", time.Since(killAt), code, body, err))
		}
		<-tick.C
	}
	tick.Stop()
	ok, failed := stopLoad()
	served := time.Since(killAt)
	close(quit)
	testkit.Recv(t, done, 15*time.Second, "the readiness poller to end")

	var first *answer
	polls, after := 0, 0
	for i := range answers {
		a := &answers[i]
		if a.at.Before(killAt) {
			continue
		}
		polls++
		switch {
		case a.err != nil:
			t.Errorf("/health/ready %s after TERM: %v", a.at.Sub(killAt), a.err)
		case first == nil && a.code == http.StatusServiceUnavailable:
			first = a
		case first == nil && a.code == http.StatusOK:
		case first == nil:
			t.Errorf("/health/ready %s after TERM: %d %q, want 200 then 503", a.at.Sub(killAt), a.code, a.body)
		case a.code != http.StatusServiceUnavailable:
			t.Errorf("/health/ready %s after TERM: %d %q after a 503, want 503 until the end", a.at.Sub(killAt), a.code, a.body)
		default:
			after++
		}
	}
	if first == nil {
		t.Fatalf("/health/ready never said 503 in %d polls over %s after TERM", polls, served)
	}
	latency := first.at.Sub(killAt)
	t.Logf("/health/ready first 503 %s after kill() (%q); %d polls after TERM, %d more 503s", latency, strings.TrimSpace(first.body), polls, after)
	if latency > 50*time.Millisecond {
		t.Errorf("/health/ready said 503 %s after TERM, want within 50ms", latency)
	}
	t.Logf("/health/live: %d times 200 during the delay; app: %d requests ok, %d failed over the first %s", live, ok, failed, served)
	if len(notLive) > 0 || live == 0 {
		t.Errorf("/health/live not 200 during the shutdown delay (%d ok): %v", live, notLive)
	}
	if failed > 0 || ok == 0 {
		t.Errorf("%d app requests failed (%d ok) during the shutdown delay, want none", failed, ok)
	}
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
	if took := time.Since(killAt); took < delay {
		t.Errorf("master exited %s after TERM, before the %s shutdown delay", took, delay)
	}
}

// probeLoop asks the master, every 50 ms until stop is called, for its
// status over the control socket (ctl) and for /health/live (at maddr),
// and returns the slowest answer of each and every failure.
func probeLoop(ctl, maddr string) (stop func() (n int, slowStatus, slowLive time.Duration, errs []string)) {
	var (
		n                    int
		slowStatus, slowLive time.Duration
		errs                 []string
	)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		c := metricsClient()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			began := time.Now()
			resp, err := supervisor.CallControl(ctl, supervisor.Request{Command: "status"}, 5*time.Second)
			took := time.Since(began)
			if err != nil || !resp.OK || resp.Status == nil {
				errs = append(errs, fmt.Sprintf("status after %s: %v %+v", took, err, resp))
			}
			slowStatus = max(slowStatus, took)
			began = time.Now()
			code, body, err := fetch(c, "http://"+maddr+"/health/live")
			took = time.Since(began)
			if code != http.StatusOK {
				errs = append(errs, fmt.Sprintf("/health/live after %s: %d %q %v", took, code, body, err))
			}
			slowLive = max(slowLive, took)
			n++
			select {
			case <-quit:
				return
			case <-tick.C:
			}
		}
	}()
	return func() (int, time.Duration, time.Duration, []string) {
		close(quit)
		<-done
		return n, slowStatus, slowLive, errs
	}
}

// scrapes counts the answers of a scraper: metrics, a quick 503 (a server
// that caps concurrent scrapes may refuse some of a burst), or a failure.
type scrapes struct {
	mu      sync.Mutex
	ok      int
	refused int
	failed  []string
	slowest time.Duration
}

func (s *scrapes) do(c *http.Client, url string) {
	began := time.Now()
	code, body, err := fetch(c, url)
	took := time.Since(began)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil && code == http.StatusOK && strings.Contains(body, "supervisor_workers{"):
		s.ok++
		s.slowest = max(s.slowest, took)
	case err == nil && code == http.StatusServiceUnavailable:
		s.refused++
	default:
		s.failed = append(s.failed, fmt.Sprintf("%d %v %.100q", code, err, body))
	}
}

func (s *scrapes) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%d ok (slowest %s), %d refused (503), %d failed", s.ok, s.slowest.Round(time.Millisecond), s.refused, len(s.failed))
}

// burstScrapes scrapes url n times at once, each on a connection of its
// own, with gzip as Prometheus asks for it, and returns how long it took.
func burstScrapes(s *scrapes, url string, n int) time.Duration {
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			s.do(client, url)
		}()
	}
	began := time.Now()
	close(gate)
	wg.Wait()
	return time.Since(began)
}

// goResident is the memory the master at maddr's Go runtime holds from
// the OS and has not given back (go_memstats_sys_bytes less
// go_memstats_heap_released_bytes): its part of RSS, without
// ThreadSanitizer's own under -race.
func goResident(t *testing.T, maddr string) int64 {
	t.Helper()
	_, fams := scrape(t, maddr)
	sys, ok1 := sample(fams, "go_memstats_sys_bytes")
	released, ok2 := sample(fams, "go_memstats_heap_released_bytes")
	if !ok1 || !ok2 {
		t.Fatal("no go_memstats_sys_bytes or go_memstats_heap_released_bytes in /metrics")
	}
	return int64(sys - released)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// Abuse of the metrics port during a rollout of 16 workers: a scraper 10
// times a second, a burst of 100 concurrent scrapes once the rollout is
// under way, and a client that connects and sends nothing. The rollout
// takes at most 3 times as long as one without the abuse, status (control
// socket) and /health/live answer within 1 s throughout, every scrape
// succeeds or is refused with a 503, the silent client is hung up
// on, and the master's memory stays bounded: RSS under twice what it was
// plus 8 MiB, and a second burst grows it by at most a quarter plus 8 MiB.
func TestMetricsAbuseDuringRollout(t *testing.T) {
	const workers = 16
	p := startQuick(t, "--bind", "127.0.0.1:0", "--workers", strconv.Itoa(workers), "--metrics", "127.0.0.1:0",
		"--", self(t), "example-app", "--boot-delay", "100ms")
	p.ready()
	maddr := p.metricsAddr()
	ctl := controlPath(p.cmd)
	pid := p.cmd.Process.Pid
	metricsURL := "http://" + maddr + "/metrics"

	// rollout runs reload --wait, calls during once the master has logged
	// the start of the rollout, and returns how long reload --wait took
	// and when it ended.
	reloads := 0
	rollout := func(during func()) (time.Duration, time.Time) {
		t.Helper()
		stopProbes := probeLoop(ctl, maddr)
		cmd := quick(command(t, "reload", "--wait", "--timeout", "60s", "--control", ctl))
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		began := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		type exit struct {
			err error
			at  time.Time
		}
		waited := make(chan exit, 1)
		go func() { err := cmd.Wait(); waited <- exit{err, time.Now()} }()
		reloads++
		p.waitLogCount("reload", reloads, 10*time.Second)
		during()
		ended := testkit.Recv(t, waited, 90*time.Second, "reload --wait")
		took := ended.at.Sub(began)
		n, slowStatus, slowLive, errs := stopProbes()
		if ended.err != nil {
			t.Fatalf("reload --wait: %v: %s", ended.err, out.String())
		}
		t.Logf("reload --wait took %s (%s); %d probes: status slowest %s, /health/live slowest %s, %d failures",
			took.Round(time.Millisecond), strings.TrimSpace(out.String()), n, slowStatus.Round(time.Millisecond), slowLive.Round(time.Millisecond), len(errs))
		if len(errs) > 0 || n == 0 {
			t.Errorf("%d probes of status and /health/live, failures: %v", n, errs)
		}
		if slowStatus > time.Second {
			t.Errorf("status took %s to answer during the rollout, want under 1s", slowStatus)
		}
		testkit.WaitFor(t, 30*time.Second, "16 ready workers, no other process", func() bool {
			st := p.controlStatus()
			return st.Ready == workers && len(st.Pool) == workers
		})
		return took, ended.at
	}

	base, _ := rollout(func() {})
	rssBefore, goBefore := vmRSS(t, pid), goResident(t, maddr)

	// The abuse: a silent client, a scraper 10 times a second (kept-alive
	// connection, as Prometheus), then once the rollout is under way 100
	// scrapes at once.
	silent, err := net.Dial("tcp", maddr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silentAt := time.Now()
	var steady, burst, again scrapes
	quit, scraped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(scraped)
		c := metricsClient()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			steady.do(c, metricsURL)
			select {
			case <-quit:
				return
			case <-tick.C:
			}
		}
	}()
	var burstTook time.Duration
	var burstAt time.Time
	abused, rolledOut := rollout(func() {
		burstAt = time.Now()
		burstTook = burstScrapes(&burst, metricsURL, 100)
	})
	close(quit)
	testkit.Recv(t, scraped, 15*time.Second, "the scraper to end")
	rssAfter, goAfter := vmRSS(t, pid), goResident(t, maddr)
	againTook := burstScrapes(&again, metricsURL, 100)
	rssAgain := vmRSS(t, pid)

	t.Logf("rollout of %d workers: %s without abuse, %s with it (%.2fx)", workers, base.Round(time.Millisecond), abused.Round(time.Millisecond), float64(abused)/float64(base))
	t.Logf("scraper at 10/s: %s; burst of 100 from %s into the rollout: %s in %s; another burst after it: %s in %s",
		&steady, burstAt.Sub(rolledOut.Add(-abused)).Round(time.Millisecond), &burst, burstTook.Round(time.Millisecond), &again, againTook.Round(time.Millisecond))
	t.Logf("master VmRSS: %s before the abuse, %s after, %s after another burst; of which the Go runtime's (sys less released): %s before, %s after",
		mib(rssBefore), mib(rssAfter), mib(rssAgain), mib(goBefore), mib(goAfter))
	if abused > 3*base {
		t.Errorf("the rollout took %s under abuse of the metrics port, more than 3x the %s without", abused, base)
	}
	if !burstAt.Before(rolledOut) {
		t.Errorf("the burst began %s after reload --wait ended: it tested nothing", burstAt.Sub(rolledOut))
	}
	if len(steady.failed) > 0 || len(burst.failed) > 0 || len(again.failed) > 0 || steady.ok == 0 || burst.ok == 0 || again.ok == 0 {
		t.Errorf("failed scrapes: steady %v, burst %v, another burst %v", steady.failed, burst.failed, again.failed)
	}
	if bound := 2*rssBefore + 8<<20; rssAfter > bound {
		t.Errorf("master RSS %s after the abuse, over twice the %s before plus 8 MiB", mib(rssAfter), mib(rssBefore))
	}
	if rssAgain > rssAfter+rssAfter/4+8<<20 {
		t.Errorf("master RSS grew from %s to %s with a second burst: it keeps growing", mib(rssAfter), mib(rssAgain))
	}

	// The silent client still holds its connection, until the server's
	// 5 s header timeout hangs up on it.
	_ = silent.SetReadDeadline(silentAt.Add(15 * time.Second))
	n, err := silent.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("the metrics server still holds a silent connection after 15s")
	} else {
		t.Logf("the metrics server hung up on the silent client after %s (read %d bytes, %v)", time.Since(silentAt).Round(time.Millisecond), n, err)
	}
}

// runSplit runs cmd to its end (killing it after 30 s) and returns its
// stdout, its stderr and its exit code.
func runSplit(t *testing.T, cmd *exec.Cmd) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut syncBuffer
	code = runWith(t, cmd, &out, &errOut)
	return out.String(), errOut.String(), code
}

// badMetricsCase is a master's command line that must fail before it
// binds or starts anything.
type badMetricsCase struct {
	name string
	args []string // before -- COMMAND
	want []string // in the one line on stderr
}

// checkBadMetrics runs each case's master with a --bind on a free port
// (bind), a worker that would leave a mark, and wants exit status 1, one
// line on stderr, "supervisor: " and every want in it, nothing on stdout,
// no worker started, and the bind's port free again.
func checkBadMetrics(t *testing.T, bind string, cases []badMetricsCase) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mark := filepath.Join(t.TempDir(), "started")
			worker := writeScript(t, "echo $$ >> "+mark+"\nexec sleep 60\n")
			stdout, stderr, code := runSplit(t, command(t, append(tc.args, "--", worker)...))
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			ok := code == 1 && len(lines) == 1 && strings.HasPrefix(lines[0], "supervisor: ")
			for _, w := range tc.want {
				ok = ok && strings.Contains(lines[0], w)
			}
			if !ok {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 1 and one line 'supervisor: ...' with %q", code, stderr, tc.want)
			} else {
				t.Logf("%s", lines[0])
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if b, err := os.ReadFile(mark); err == nil {
				t.Errorf("a worker was started (pid %s)", strings.TrimSpace(string(b)))
			}
			if strings.HasPrefix(bind, "127.0.0.1:") {
				var lc net.ListenConfig
				if ln, err := lc.Listen(context.Background(), "tcp", bind); err != nil {
					t.Errorf("the --bind port is still taken after the master exited: %v", err)
				} else {
					ln.Close()
				}
			}
		})
	}
}

// Bad --metrics values, each refused with one line on stderr and exit
// status 1, before anything is bound or started.
func TestMetricsBadInput(t *testing.T) {
	busy := listenTCP(t).Addr().String()
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	bind := "127.0.0.1:" + strconv.Itoa(freePort(t))
	config := filepath.Join(dir, "supervisor.yaml")
	if err := os.WriteFile(config, []byte("metrics: \"nonsense:port\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after the parallel subtests
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("%s exists after the masters exited: %v", sock, err)
		}
	})
	b := []string{"--bind", bind}
	with := func(extra ...string) []string { return append(slices.Clone(b), extra...) }
	checkBadMetrics(t, bind, []badMetricsCase{
		{"port in use", with("--metrics", busy), []string{"--metrics " + busy, "address already in use"}},
		{"port not a number", with("--metrics", "nonsense:port"), []string{`bad --metrics "nonsense:port"`, `port "port" is not a number`, "want HOST:PORT or unix:/path"}},
		{"no port", with("--metrics", "localhost"), []string{`bad --metrics "localhost"`, "want HOST:PORT or unix:/path"}},
		{"port out of range", with("--metrics", "127.0.0.1:99999"), []string{`bad --metrics "127.0.0.1:99999"`, "out of range"}},
		{"fd", with("--metrics", "fd://3"), []string{`bad --metrics "fd://3"`, "the master binds this socket itself"}},
		{"systemd", with("--metrics", "systemd"), []string{`bad --metrics "systemd"`, "the master binds this socket itself"}},
		{"empty unix path", with("--metrics", "unix:"), []string{`bad --metrics "unix:"`, "missing socket path"}},
		{"unix path in no directory", with("--metrics", "unix:"+filepath.Join(dir, "none", "m.sock")), []string{"--metrics unix:", "no directory " + filepath.Join(dir, "none") + ": create it first"}},
		{"same as --bind", with("--metrics", bind), []string{"--metrics " + bind, "the same port as --bind " + bind}},
		{"same unix path as --bind", []string{"--bind", "unix:" + sock, "--metrics", "unix:" + sock}, []string{"--metrics unix:" + sock, "the same socket as --bind unix:" + sock}},
		{"in the config file", with("--config", config), []string{`"nonsense:port"`, "want HOST:PORT or unix:/path"}},
	})
}

// --metrics on the port of a --bind that covers it, spelt differently (a
// wildcard host and a specific one), is the same mistake as the same
// address: refused up front with one line naming both flags (not, after
// binding the metrics socket, "address already in use: stop the other
// process", the other process being the master itself).
func TestMetricsOverlappingBindIsBadInput(t *testing.T) {
	for _, c := range []struct{ name, bind, metrics string }{
		{"--bind :PORT", ":", "127.0.0.1:"},
		{"--bind 0.0.0.0:PORT", "0.0.0.0:", "127.0.0.1:"},
		{"--metrics :PORT", "127.0.0.1:", ":"},
	} {
		port := strconv.Itoa(freePort(t)) // one each: a regression would bind it
		bind, metrics := c.bind+port, c.metrics+port
		checkBadMetrics(t, "127.0.0.1:"+port, []badMetricsCase{
			{c.name, []string{"--bind", bind, "--metrics", metrics}, []string{"--metrics " + metrics, "--bind " + bind}},
		})
	}
}
