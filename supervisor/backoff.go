package supervisor

import "time"

// Crash backoff: the first crash of a slot is replaced at once, each further
// consecutive crash waits twice as long, from crashBackoffBase up to
// crashBackoffMax. A worker that stayed up for crashResetAfter resets its
// slot's count.
const (
	crashBackoffBase = 100 * time.Millisecond
	crashBackoffMax  = 10 * time.Second
	crashResetAfter  = 10 * time.Second
)

// crashDelay is how long to wait before replacing a worker whose slot has
// crashed prior times in a row before this crash.
func crashDelay(prior int) time.Duration {
	if prior <= 0 {
		return 0
	}
	d := crashBackoffBase
	for i := 1; i < prior && d < crashBackoffMax; i++ {
		d *= 2
	}
	return min(d, crashBackoffMax)
}

// priorCrashes is the count crashDelay gets for a slot that had count
// consecutive crashes, when the worker that just crashed had been up for up.
func priorCrashes(count int, up time.Duration) int {
	if up >= crashResetAfter {
		return 0
	}
	return count
}
