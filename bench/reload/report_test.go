package main

import (
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// TestDuringSplitsByWhoAnswered: of the requests sent in a reload's
// window, those a worker of an older generation answered are "old", those
// a worker of the reload's own generation answered are "fresh"; requests
// outside every window, and answers naming no known worker, are in neither.
func TestDuringSplitsByWhoAnswered(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p := &phase{errs: map[string]int{}}
	for _, r := range []struct {
		at   time.Duration
		body string
	}{
		{0, "hello from pid 10"},                     // before the window
		{10 * time.Millisecond, "hello from pid 10"}, // old, generation 1
		{20 * time.Millisecond, "hello from pid 11"}, // fresh, generation 2
		{30 * time.Millisecond, "something else"},    // in the window, unknown
		{60 * time.Millisecond, "hello from pid 11"}, // after the window
	} {
		p.add(&vegeta.Result{Timestamp: t0.Add(r.at), Latency: r.at + time.Millisecond, Body: []byte(r.body)})
	}
	reloads := []reloadResult{{gen: 2, at: t0.Add(5 * time.Millisecond), drained: 40 * time.Millisecond}}
	in, old, fresh := p.during(reloads, map[int]int{10: 1, 11: 2})
	if len(in.latencies) != 3 || len(old.latencies) != 1 || len(fresh.latencies) != 1 {
		t.Fatalf("in %d, old %d, fresh %d: want 3, 1, 1", len(in.latencies), len(old.latencies), len(fresh.latencies))
	}
	if old.latencies[0] != 11*time.Millisecond || fresh.latencies[0] != 21*time.Millisecond {
		t.Errorf("old %v, fresh %v: want 11ms, 21ms", old.latencies, fresh.latencies)
	}
}
