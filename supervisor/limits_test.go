package supervisor

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// A failed fork's error names the limit behind it.
func TestLimitHint(t *testing.T) {
	wrap := func(e syscall.Errno) error { return fmt.Errorf("start /bin/app: %w", e) }
	if h := limitHint(wrap(syscall.EMFILE)); !strings.Contains(h, "RLIMIT_NOFILE") {
		t.Errorf("EMFILE: hint %q, want RLIMIT_NOFILE named", h)
	}
	if h := limitHint(wrap(syscall.EAGAIN)); !strings.Contains(h, "RLIMIT_NPROC") && !strings.Contains(h, "pids.max") {
		t.Errorf("EAGAIN: hint %q, want RLIMIT_NPROC or pids.max named", h)
	}
	if h := limitHint(errors.New("exec: no such file")); h != "" {
		t.Errorf("another error: hint %q, want none", h)
	}
}
