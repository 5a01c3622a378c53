package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A real Prometheus (Debian's) scrapes the master every second through 3
// good reloads, 1 that rolls back, and a --max-requests recycle; PromQL over
// its HTTP API then sees exactly what happened.
func TestPrometheusScrapesTheMaster(t *testing.T) {
	prometheus, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (apt-get install prometheus)")
	}
	dir := t.TempDir()
	config := filepath.Join(dir, "supervisor.yaml")
	write := func(command string) {
		t.Helper()
		body := "bind: [\"127.0.0.1:0\"]\nworkers: 2\nmax_requests: 20\nmax_requests_jitter: 5\ncommand: " + command + "\n"
		if err := os.WriteFile(config, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	good := fmt.Sprintf("[%q, \"example-app\"]", self(t))
	write(good)
	p := startQuick(t, "--config", config, "--metrics", "127.0.0.1:0")
	addr := p.ready()
	prom := startPrometheus(t, prometheus, p.metricsAddr())

	reload := func(wantOK bool) {
		t.Helper()
		out, code := p.quickClient("reload", "--wait")
		if (code == 0) != wantOK {
			t.Fatalf("reload --wait: exit %d: %s (want success %v)", code, out, wantOK)
		}
		t.Logf("reload --wait: %s", strings.TrimSpace(out))
	}
	reload(true)
	write(`["/bin/sh", "-c", "echo 'app: cannot import settings' >&2; exit 3"]`)
	reload(false)
	write(good)
	reload(true)
	reload(true)

	// Requests until a worker is due for recycling (20 to 25 each).
	for i := 0; p.findLog("recycling worker") == nil; i++ {
		if i == 2000 {
			t.Fatal("no worker recycled after 2000 requests with --max-requests 20")
		}
		if _, err := get("http://" + addr + "/"); err != nil {
			t.Fatal(err)
		}
	}

	queries := []struct {
		q    string
		want func(float64) bool
		what string
	}{
		{`supervisor_reloads_total{result="succeeded"}`, eq(3), "3"},
		{`supervisor_reloads_total{result="rolled_back"}`, eq(1), "1"},
		{`supervisor_workers{state="ready"}`, eq(2), "2"},
		{`supervisor_recycles_total{reason="max_requests"}`, atLeast(1), ">= 1"},
		{`supervisor_worker_starts_total{reason="recycle"}`, atLeast(1), ">= 1"},
		{`supervisor_generation`, eq(5), "5 (1, +1 per reload that loaded a config, the rolled-back one too)"},
		{`up{job="supervisor"}`, eq(1), "1"},
	}
	results := make([]string, len(queries))
	var unmet []string
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		unmet = unmet[:0]
		for i, q := range queries {
			v, raw, err := prom.query(q.q)
			results[i] = q.q + " => " + raw
			if err != nil || !q.want(v) {
				unmet = append(unmet, fmt.Sprintf("%s = %s (err %v), want %s", q.q, raw, err, q.what))
			}
		}
		if len(unmet) == 0 || time.Now().After(deadline) {
			break
		}
		<-tick.C
	}
	t.Logf("PromQL over /api/v1/query:\n%s", strings.Join(results, "\n"))
	if len(unmet) > 0 {
		t.Errorf("after 30s of polling Prometheus:\n%s", strings.Join(unmet, "\n"))
	}
	prom.stop()
}

// promServer is a Prometheus started by a test.
type promServer struct {
	t    *testing.T
	base string // http://127.0.0.1:PORT
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// startPrometheus starts prometheus scraping target every second, its
// storage in a temporary directory, its web API on a free loopback port
// (another one if something else takes that port first), and waits until
// it is ready. It is stopped (TERM, then KILL) when the test ends.
func startPrometheus(t *testing.T, prometheus, target string) *promServer {
	t.Helper()
	dir := t.TempDir()
	config := filepath.Join(dir, "prometheus.yml")
	body := fmt.Sprintf("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"+
		"scrape_configs:\n  - job_name: supervisor\n    static_configs:\n      - targets: [%q]\n", target)
	if err := os.WriteFile(config, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 5; attempt++ {
		addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
		cmd := exec.Command(prometheus, "--config.file="+config,
			"--storage.tsdb.path="+filepath.Join(dir, "data"+strconv.Itoa(attempt)),
			"--web.listen-address="+addr, "--log.level=warn")
		ps := &promServer{t: t, base: "http://" + addr, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
		cmd.Stdout, cmd.Stderr = ps.out, ps.out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = cmd.Wait(); close(ps.done) }()
		t.Cleanup(ps.stop)
		switch ps.waitReady(30 * time.Second) {
		case "ready":
			return ps
		case "port taken":
			t.Logf("prometheus: %s was taken before it could bind; trying another port", addr)
			continue
		default:
			t.Fatalf("prometheus did not get ready within 30s; output:\n%s", ps.out.String())
		}
	}
	t.Fatal("prometheus: 5 free ports were taken before it could bind them")
	return nil
}

// waitReady returns "ready" once /-/ready answers 200, "port taken" when
// prometheus exited because its port was in use, or "" on timeout or any
// other exit.
func (ps *promServer) waitReady(timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		select {
		case <-ps.done:
			if strings.Contains(ps.out.String(), "address already in use") {
				return "port taken"
			}
			return ""
		default:
		}
		if code, _, _ := fetch(client, ps.base+"/-/ready"); code == http.StatusOK {
			return "ready"
		}
		<-tick.C
	}
	return ""
}

// stop ends prometheus by its pid (TERM, KILL after 10 s) and waits for it.
func (ps *promServer) stop() {
	select {
	case <-ps.done:
		return
	default:
	}
	_ = ps.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ps.done:
		return
	case <-time.After(10 * time.Second):
	}
	ps.t.Errorf("prometheus (pid %d) still running 10s after TERM; killing it", ps.cmd.Process.Pid)
	_ = ps.cmd.Process.Kill()
	<-ps.done
}

// query evaluates an instant PromQL query that selects one series; raw is
// the result as Prometheus gave it, for the log.
func (ps *promServer) query(q string) (float64, string, error) {
	code, body, err := fetch(client, ps.base+"/api/v1/query?query="+url.QueryEscape(q))
	if err != nil {
		return 0, "", err
	}
	var resp struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"` // [unix time, "value"]
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil || code != http.StatusOK || resp.Status != "success" {
		return 0, body, fmt.Errorf("query %s: %d %v %s", q, code, err, resp.Error)
	}
	res, _ := json.Marshal(resp.Data.Result)
	if len(resp.Data.Result) != 1 {
		return 0, string(res), fmt.Errorf("query %s: %d series, want 1", q, len(resp.Data.Result))
	}
	s, _ := resp.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, string(res), err
}
