package supervisor

import (
	"testing"
	"time"
)

func TestEarliest(t *testing.T) {
	t0 := time.Unix(100, 0)
	if _, ok := earliest(time.Time{}, time.Time{}); ok {
		t.Error("all zero: want ok=false")
	}
	got, ok := earliest(time.Time{}, t0.Add(time.Second), t0, t0.Add(-time.Second).Add(2*time.Second))
	if !ok || !got.Equal(t0) {
		t.Errorf("earliest = %v %v, want %v true", got, ok, t0)
	}
}

// TestNextDeadlineAllocates nothing: it runs every turn of the loop, over
// every worker.
func TestNextDeadlineAllocates(t *testing.T) {
	m := &master{workers: map[int]*worker{}}
	t0 := time.Unix(100, 0)
	for pid := 1; pid <= 64; pid++ {
		m.workers[pid] = &worker{state: wReady, heartbeatBy: t0.Add(time.Duration(pid) * time.Second), retireAt: t0.Add(time.Hour)}
	}
	m.workers[7].killAt = t0
	if got, ok := m.nextDeadline(); !ok || !got.Equal(t0) {
		t.Fatalf("nextDeadline = %v %v, want %v true", got, ok, t0)
	}
	if n := testing.AllocsPerRun(10, func() { m.nextDeadline() }); n != 0 {
		t.Errorf("nextDeadline allocates %v times a call, want 0", n)
	}
}
