package workers

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// MaxMessageSize is the largest notify datagram the master accepts, in bytes.
// Larger datagrams are dropped by NotifySocket.Read and rejected by
// ParseMessage.
const MaxMessageSize = 4096

// Message is what one sd_notify datagram said, as far as the master cares.
// Unknown keys are ignored.
type Message struct {
	Ready       bool   // READY=1
	Stopping    bool   // STOPPING=1
	Watchdog    bool   // WATCHDOG=1
	Status      string // STATUS=...; valid when HasStatus
	HasStatus   bool
	Requests    int64 // X_REQUESTS=N (N >= 0); valid when HasRequests
	HasRequests bool
	Barrier     bool // BARRIER=1
}

// ParseMessage parses newline-separated KEY=VALUE lines. It returns an error
// for a malformed datagram: empty (no KEY=VALUE line at all), longer than
// MaxMessageSize, not UTF-8, NUL bytes, a non-empty line without '=', an
// empty key, or an X_REQUESTS value that is not a decimal int64 >= 0.
// Empty lines (such as a trailing newline) are skipped. READY, STOPPING,
// WATCHDOG and BARRIER count only with the value "1"; for a repeated key the
// last line wins. Well-formed lines with other keys are ignored. It never
// panics.
func ParseMessage(b []byte) (Message, error) {
	var m Message
	switch {
	case len(b) > MaxMessageSize:
		return m, fmt.Errorf("notify message: %d bytes, over %d", len(b), MaxMessageSize)
	case !utf8.Valid(b):
		return m, errors.New("notify message: not valid UTF-8")
	case bytes.IndexByte(b, 0) >= 0:
		return m, errors.New("notify message: contains a NUL byte")
	}
	lines := 0
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(line, []byte("="))
		if !ok {
			return Message{}, fmt.Errorf("notify message: line %q has no '='", line)
		}
		if len(k) == 0 {
			return Message{}, fmt.Errorf("notify message: line %q has an empty key", line)
		}
		lines++
		switch string(k) {
		case "READY":
			m.Ready = string(v) == "1"
		case "STOPPING":
			m.Stopping = string(v) == "1"
		case "WATCHDOG":
			m.Watchdog = string(v) == "1"
		case "BARRIER":
			m.Barrier = string(v) == "1"
		case "STATUS":
			m.Status, m.HasStatus = string(v), true
		case "X_REQUESTS":
			n, err := parseCount(v)
			if err != nil {
				return Message{}, fmt.Errorf("notify message: X_REQUESTS=%q: %w", v, err)
			}
			m.Requests, m.HasRequests = n, true
		}
	}
	if lines == 0 {
		return Message{}, errors.New("notify message: empty")
	}
	return m, nil
}

// parseCount accepts only decimal digits (no sign, no spaces) that fit an int64.
func parseCount(v []byte) (int64, error) {
	if len(v) == 0 {
		return 0, errors.New("not a number")
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, errors.New("not a decimal number >= 0")
		}
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, errors.New("out of range")
	}
	return n, nil
}
