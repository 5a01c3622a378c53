package testkit

import (
	"testing"
	"time"
)

// pollInterval is how often WaitFor asks again.
const pollInterval = 10 * time.Millisecond

// WaitFor returns once cond holds, asking at once and then every 10ms; when
// timeout passes first it fails t with "timed out after TIMEOUT waiting for
// WHAT". Like t.Fatal, call it from the test's goroutine only.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(pollInterval)
	}
}

// Recv returns the next value received from ch, or the zero value once ch
// is closed; when nothing comes within timeout it fails t with "timed out
// after TIMEOUT waiting for WHAT". Like t.Fatal, call it from the test's
// goroutine only.
func Recv[T any](t testing.TB, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
	var zero T
	return zero
}
