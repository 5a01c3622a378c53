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
