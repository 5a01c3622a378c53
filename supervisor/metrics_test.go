package supervisor

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/supervisor-dev/supervisor/signals"
	"github.com/supervisor-dev/supervisor/workers"
)

// counts reads one label of a counter vector into a map of its non-zero
// values.
func counts(t *testing.T, m *Metrics, name string) map[string]float64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			var labels []string
			for _, l := range s.GetLabel() {
				labels = append(labels, l.GetValue())
			}
			v := s.GetCounter().GetValue()
			if s.GetHistogram() != nil {
				v = float64(s.GetHistogram().GetSampleCount())
			}
			if v != 0 {
				out[strings.Join(labels, ",")] = v
			}
		}
		return out
	}
	t.Fatalf("no metric %s", name)
	return nil
}

func wantCounts(t *testing.T, m *Metrics, name string, want map[string]float64) {
	t.Helper()
	if got := counts(t, m, name); !maps.Equal(got, want) {
		t.Errorf("%s: got %v, want %v", name, got, want)
	}
}

// Each event the loop handles is counted under the label an operator
// would alert on: a crash as a crash, a rollback as a rollback, a reload
// while draining as refused, a recycle by its limit.
func TestSimMetricsCountWhatHappened(t *testing.T) {
	s := boot(t, 2, func(c *Config) {
		c.MaxRequests = 100
		c.Timeout = time.Second
		c.ShutdownDelay = time.Second
	})
	met := s.m.metrics
	wantCounts(t, met, "supervisor_worker_starts_total", map[string]float64{"boot": 2})
	wantCounts(t, met, "supervisor_worker_boot_seconds", map[string]float64{"": 2})

	// A crash, replaced.
	s.exit(s.pids(wReady, 1)[0], syscall.WaitStatus(1<<8))
	s.readyAll()
	wantCounts(t, met, "supervisor_worker_exits_total", map[string]float64{"crashed": 1})
	wantCounts(t, met, "supervisor_worker_starts_total", map[string]float64{"boot": 2, "crash": 1})

	// A good reload: two new workers, two old ones asked to stop.
	s.call(Request{Command: "reload"})
	s.drive(func() {})
	wantCounts(t, met, "supervisor_reloads_total", map[string]float64{"succeeded": 1})
	wantCounts(t, met, "supervisor_reload_duration_seconds", map[string]float64{"succeeded": 1})
	wantCounts(t, met, "supervisor_worker_exits_total", map[string]float64{"crashed": 1, "stopped": 2})
	wantCounts(t, met, "supervisor_worker_drain_seconds", map[string]float64{"": 2})

	// A reload whose canary exits: rolled back.
	s.intent(signals.Reload)
	s.exit(s.pids(wStarting, 3)[0], syscall.WaitStatus(3<<8))
	wantCounts(t, met, "supervisor_reloads_total", map[string]float64{"succeeded": 1, "rolled_back": 1})
	wantCounts(t, met, "supervisor_reload_duration_seconds", map[string]float64{"succeeded": 1, "rolled_back": 1})
	wantCounts(t, met, "supervisor_worker_starts_total", map[string]float64{"boot": 2, "crash": 1, "reload": 3})

	// A worker past max_requests is recycled, replacement first.
	s.notify(s.pids(wReady, 2)[0], workers.Message{HasRequests: true, Requests: 150})
	s.drive(func() {})
	wantCounts(t, met, "supervisor_recycles_total", map[string]float64{"max_requests": 1})
	if got := counts(t, met, "supervisor_worker_starts_total")["recycle"]; got != 1 {
		t.Errorf("recycle starts: %v, want 1", got)
	}

	// A heartbeat missed: counted, and the exit is a timeout, not a crash.
	s.tick(1500 * time.Millisecond)
	wantCounts(t, met, "supervisor_heartbeat_timeouts_total", map[string]float64{"": 2})
	for _, pid := range s.pids(wStopping, 0) {
		s.exit(pid, syscall.WaitStatus(syscall.SIGABRT))
	}
	if got := counts(t, met, "supervisor_worker_exits_total")["timed_out"]; got != 2 {
		t.Errorf("timed_out exits: %v, want 2", got)
	}
	s.readyAll()

	// Scale up, then TERM: the reload during shutdown_delay is refused.
	s.call(Request{Command: "scale", Scale: "+1"})
	s.readyAll()
	if got := counts(t, met, "supervisor_worker_starts_total")["scale"]; got != 1 {
		t.Errorf("scale starts: %v, want 1", got)
	}
	s.intent(signals.Stop)
	s.intent(signals.Reload)
	if got := counts(t, met, "supervisor_reloads_total")["refused"]; got != 1 {
		t.Errorf("refused reloads: %v, want 1", got)
	}
	if got := testutil.ToFloat64(met.lastReloadOK); got != unixSeconds(s.m.env.now())-1.5 {
		t.Errorf("last_reload_success_timestamp_seconds %v, want the time of the good reload", got)
	}
}

// A reload that merges into the rollout under way supersedes it; a stop
// during a rollout abandons it; a bad config is config_failed.
func TestSimMetricsReloadOutcomes(t *testing.T) {
	s := boot(t, 2, nil)
	s.intent(signals.Reload)
	s.intent(signals.Reload)
	s.load = func() (*Resolved, error) { return nil, fmt.Errorf("config.yaml:3:1: unknown key") }
	s.intent(signals.Reload)
	s.intent(signals.FastStop)
	wantCounts(t, s.m.metrics, "supervisor_reloads_total", map[string]float64{"superseded": 1, "config_failed": 1, "abandoned": 1})
}

// The gauges come from the snapshot the loop published after its last
// turn: no scrape reads the loop's state directly.
func TestSimSnapshotGauges(t *testing.T) {
	s := boot(t, 3, nil)
	s.intent(signals.Reload)
	s.notify(s.pids(wReady, 1)[0], workers.Message{HasRequests: true, Requests: 7})
	snap := s.m.metrics.snap.Load()
	if snap == nil || !snap.ready || snap.status.Target != 2 || snap.requests != 7 {
		t.Fatalf("snapshot after a HUP: %+v", snap)
	}
	body := scrape(t, s.m.metrics)
	for _, want := range []string{
		`supervisor_workers{state="ready"} 3`,
		`supervisor_workers{state="starting"} 1`,
		`supervisor_workers{state="stopping"} 0`,
		"supervisor_workers_desired 3",
		"supervisor_generation 1",
		"supervisor_worker_requests_total 7",
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// An exited worker's requests stay counted.
	s.exit(s.pids(wReady, 1)[0], syscall.WaitStatus(1<<8))
	if got := s.m.metrics.snap.Load().requests; got != 7 {
		t.Errorf("requests after the worker exited: %d, want 7", got)
	}
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

// The exposition parses; counters end in _total; no series has a pid
// label, and slot is the only label of a per-worker series.
func TestExpositionFollowsConventions(t *testing.T) {
	s := boot(t, 2, nil)
	body := scrape(t, s.m.metrics)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v", err)
	}
	for _, name := range []string{"supervisor_build_info", "supervisor_workers", "supervisor_workers_desired",
		"supervisor_generation", "supervisor_worker_starts_total", "supervisor_worker_exits_total",
		"supervisor_worker_boot_seconds", "supervisor_worker_drain_seconds", "supervisor_reloads_total",
		"supervisor_reload_duration_seconds", "supervisor_last_reload_success_timestamp_seconds",
		"supervisor_recycles_total", "supervisor_heartbeat_timeouts_total", "supervisor_worker_requests_total",
		"supervisor_worker_rss_bytes", "supervisor_notify_datagrams_dropped_total",
		"supervisor_control_requests_total", "supervisor_upgrades_total",
		"process_cpu_seconds_total", "go_goroutines"} {
		if mfs[name] == nil && name != "supervisor_worker_rss_bytes" && name != "supervisor_notify_datagrams_dropped_total" {
			t.Errorf("no %s", name)
		}
	}
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "supervisor_") {
			continue
		}
		if (mf.GetType().String() == "COUNTER") != strings.HasSuffix(name, "_total") {
			t.Errorf("%s is a %s: counters, and only counters, end in _total", name, mf.GetType())
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "pid" {
					t.Errorf("%s has a pid label", name)
				}
			}
		}
	}
}

// /health/ready follows the phase and the ready count; /health/live asks
// the loop; unknown paths are 404.
func TestHealthEndpoints(t *testing.T) {
	s := boot(t, 2, func(c *Config) { c.ShutdownDelay = time.Second })
	h := s.m.metrics.Handler()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		b, _ := io.ReadAll(rec.Body)
		return rec.Code, strings.TrimSpace(string(b))
	}
	if code, body := get("/health/ready"); code != 200 || body != "ready: 2/2 workers ready" {
		t.Errorf("/health/ready running: %d %q", code, body)
	}
	s.exit(s.pids(wReady, 1)[0], syscall.WaitStatus(1<<8))
	if code, body := get("/health/ready"); code != 503 || body != "not ready: 1/2 workers ready" {
		t.Errorf("/health/ready short of a worker: %d %q", code, body)
	}
	s.readyAll()
	s.intent(signals.Stop)
	if code, body := get("/health/ready"); code != 503 || body != "not ready: the master is draining" {
		t.Errorf("/health/ready in shutdown_delay: %d %q", code, body)
	}
	if code, _ := get("/nope"); code != 404 {
		t.Errorf("/nope: %d, want 404", code)
	}
	if code, body := get("/status"); code != 200 || !strings.Contains(body, `"phase": "draining"`) {
		t.Errorf("/status: %d %s", code, body)
	}

	// No loop takes the wake: the check gives up after liveTimeout.
	start := time.Now()
	if code, _ := get("/health/live"); code != 503 || time.Since(start) < liveTimeout {
		t.Errorf("/health/live with no loop: %d after %s, want 503 after %s", code, time.Since(start), liveTimeout)
	}
	// A loop that takes every wake (the one the failed check left
	// included) and ends a turn for each answers it.
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-s.m.metrics.live.wake:
				s.m.metrics.live.answer()
			case <-quit:
				return
			}
		}
	}()
	if code, _ := get("/health/live"); code != 200 {
		t.Errorf("/health/live with a loop: %d", code)
	}
	close(quit)
	<-done
}

// Concurrent liveness checks all pass while a loop takes the wakes (none
// is lost between a turn's answer and the next check), and fail at once
// after stop.
func TestLivenessChecks(t *testing.T) {
	l := newLiveness()
	quit := make(chan struct{})
	loopDone := make(chan struct{})
	turns := 0
	go func() { // the loop: one turn per wake
		defer close(loopDone)
		for {
			select {
			case <-l.wake:
				turns++
				l.answer()
			case <-quit:
				return
			}
		}
	}()
	const n = 50
	results := make(chan bool, n)
	for range n {
		go func() { results <- l.check(10 * time.Second) }()
	}
	for range n {
		if !<-results {
			t.Fatal("a check failed though the loop answers")
		}
	}
	close(quit)
	<-loopDone
	t.Logf("%d checks, %d loop turns", n, turns)
	if turns > n {
		t.Errorf("%d turns for %d checks", turns, n)
	}
	l.stop()
	start := time.Now()
	if l.check(10*time.Second) || time.Since(start) > 5*time.Second {
		t.Errorf("a check after stop passed, or waited %s", time.Since(start))
	}
}

// The cost of a snapshot, which the loop pays at the end of every turn:
// go test -run '^$' -bench Publish -benchmem ./supervisor/
func BenchmarkPublish(b *testing.B) {
	for _, n := range []int{2, 256} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			s := newSim(b, func(c *Config) { c.Workers = n })
			for range b.N {
				s.m.publish()
			}
		})
	}
}
