package supervisor

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/signals"
	"golang.org/x/sys/unix"
)

// A quiet pool trims once, trimAfter after it became quiet; a busy spell
// (here a storm of reloads) puts the trim off until it is over, and each
// quiet spell trims once, however long it lasts.
func TestSimTrimsOnceAQuietSpell(t *testing.T) {
	s := newSim(t, func(c *Config) { c.Workers = 2 })
	s.tick(2 * trimAfter)
	if s.trims != 0 {
		t.Fatalf("trimmed %d times while booting, want 0", s.trims)
	}
	s.readyAll()
	s.tick(trimAfter / 2)
	if s.trims != 0 {
		t.Fatalf("trimmed %d times %s after ready, want 0 before %s", s.trims, trimAfter/2, trimAfter)
	}
	s.tick(trimAfter / 2)
	if s.trims != 1 {
		t.Fatalf("trimmed %d times %s after ready, want 1", s.trims, trimAfter)
	}
	if at, ok := s.m.nextDeadline(); ok {
		t.Fatalf("a quiet, trimmed master still wakes at %s", at.Sub(s.now))
	}

	for range 5 { // a reload every half trimAfter: never quiet long enough
		s.intent(signals.Reload)
		s.tick(trimAfter / 2)
		s.settle()
		if s.trims != 1 {
			t.Fatalf("trimmed %d times during the reloads, want still 1", s.trims)
		}
	}
	s.tick(trimAfter - time.Millisecond)
	if s.trims != 1 {
		t.Fatalf("trimmed %d times just before the quiet spell lasted %s, want still 1", s.trims, trimAfter)
	}
	s.tick(time.Millisecond)
	s.tick(10 * trimAfter)
	if s.trims != 2 {
		t.Fatalf("trimmed %d times after the reloads, want 2 (once for that quiet spell)", s.trims)
	}
}

// codeRanges finds this test binary's text (this function is in it) and
// nothing writable.
func TestCodeRanges(t *testing.T) {
	rs := codeRanges()
	if len(rs) < 2 {
		t.Fatalf("codeRanges found %d mappings of the executable, want its text and read-only data", len(rs))
	}
	self := reflect.ValueOf(TestCodeRanges).Pointer()
	if !slices.ContainsFunc(rs, func(r addrRange) bool { return r.start <= self && self < r.end }) {
		t.Errorf("no range in %v holds this test's code at %#x", rs, self)
	}

	dev := unix.Mkdev(8, 1)
	for line, want := range map[string]bool{
		"00400000-00500000 r-xp 00000000 08:01 42   /bin/x": true,
		"00500000-00600000 r--p 00100000 08:01 42   /bin/x": true,
		"00600000-00700000 rw-p 00200000 08:01 42   /bin/x": false, // writable: its pages may differ from the file
		"00400000-00500000 r-xs 00000000 08:01 42   /bin/x": false, // shared
		"00400000-00500000 r-xp 00000000 08:01 43   /bin/y": false, // another file
		"00400000-00500000 r-xp 00000000 08:02 42   /bin/x": false, // another device
		"00500000-00400000 r-xp 00000000 08:01 42   /bin/x": false, // backwards
		"garbage": false,
		"":        false,
	} {
		if _, ok := codeRange(line, dev, 42); ok != want {
			t.Errorf("codeRange(%q) = %v, want %v", line, ok, want)
		}
	}
}

// settle ends the rollout under way: every starting worker becomes ready
// and every stopping one exits, until no rollout is left.
func (s *sim) settle() {
	s.t.Helper()
	for range 100 {
		if s.m.rollout == nil {
			return
		}
		s.readyAll()
		for _, pid := range s.pids(wStopping, 0) {
			s.exit(pid, 0)
		}
	}
	s.t.Fatalf("the rollout did not settle: %s", s.describe())
}

// trimMemory unmaps most of the executable's pages this test binary has
// mapped (the race runtime's included), and the binary goes on running.
func TestTrimMemoryUnmapsCode(t *testing.T) {
	before := fileRSS(t)
	trimMemory()
	after := fileRSS(t)
	t.Logf("file-backed RSS: %d KiB before the trim, %d KiB after", before, after)
	if after > before/2 {
		t.Errorf("file-backed RSS went from %d to %d KiB, want at most half", before, after)
	}
}

// fileRSS is this process's file-backed resident memory in KiB: Rss less
// Anonymous in /proc/self/smaps_rollup.
func fileRSS(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		t.Fatal(err)
	}
	kib := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		var key string
		var n int
		if _, err := fmt.Sscanf(line, "%s %d kB", &key, &n); err == nil {
			kib[key] = n
		}
	}
	if kib["Rss:"] == 0 {
		t.Fatalf("no Rss in /proc/self/smaps_rollup:\n%s", b)
	}
	return kib["Rss:"] - kib["Anonymous:"]
}
