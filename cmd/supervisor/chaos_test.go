package main

import (
	"os"
	"time"
)

// The chaos suite (chaos_*_test.go) abuses a real master: signal storms,
// killed workers, hostile notify and control clients, exhausted limits and
// a thousand reloads. CI runs its short form, as part of the README's test
// command; by hand it runs long:
//
//	SUPERVISOR_CHAOS=long go test -race -count=1 -run Chaos -v ./cmd/supervisor/
//
// Both forms assert the same things; only durations and counts differ.
var chaosLong = os.Getenv("SUPERVISOR_CHAOS") == "long"

// chaosSpan is short in the short form and long in the long one.
func chaosSpan(short, long time.Duration) time.Duration {
	if chaosLong {
		return long
	}
	return short
}

// chaosCount is short in the short form and long in the long one.
func chaosCount(short, long int) int {
	if chaosLong {
		return long
	}
	return short
}
