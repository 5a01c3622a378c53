package supervisor

import (
	"testing"
	"time"
)

func TestCrashDelay(t *testing.T) {
	for _, tc := range []struct {
		prior int
		want  time.Duration
	}{
		{0, 0}, {1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {3, 400 * time.Millisecond},
		{7, 6400 * time.Millisecond}, {8, 10 * time.Second}, {50, 10 * time.Second}, {-1, 0},
	} {
		if got := crashDelay(tc.prior); got != tc.want {
			t.Errorf("crashDelay(%d) = %s, want %s", tc.prior, got, tc.want)
		}
	}
}

func TestPriorCrashesResetsAfterAWorkerStayedUp(t *testing.T) {
	if got := priorCrashes(5, time.Second); got != 5 {
		t.Errorf("short-lived worker: got %d, want 5", got)
	}
	if got := priorCrashes(5, crashResetAfter); got != 0 {
		t.Errorf("worker up for %s: got %d, want 0", crashResetAfter, got)
	}
}
