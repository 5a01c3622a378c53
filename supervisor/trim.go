package supervisor

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The master's memory between events (§4, "Memory"). Each busy spell (a
// boot, a rollout, a recycle, a crash's refill, a scale) allocates a little
// and faults in code that the quiet loop never runs again: config parsing,
// the fork path, the logger's encoders. Left alone, the Go runtime keeps the
// freed heap for reuse and the kernel keeps every page of the binary it
// mapped (64 KiB at a time, by fault-around), so the RSS only grows: 12 MB
// at ready and 18 MB after 1,000 reloads were measured before this.
//
// So once the pool has been quiet for trimAfter, the loop trims: it returns
// the free heap to the kernel and unmaps the executable's read-only pages.
// Those are the file's own pages (text and read-only data, never written),
// still in the page cache and shared with any worker running the same
// binary; the next use of one is a minor fault that maps it back. What
// stays mapped is what the quiet master actually runs.

// trimAfter is how long the pool must stay quiet before a trim, so a storm
// of reloads trims once, after it.
const trimAfter = time.Second

// quiet reports whether nothing is under way: no rollout, no upgrade, and
// every worker ready.
func (m *master) quiet() bool {
	if m.rollout != nil || m.upgrade != nil || m.phase != running {
		return false
	}
	for _, w := range m.workers {
		if w.state != wReady {
			return false
		}
	}
	return true
}

// planTrim ends a turn: a busy pool cancels the trim, and a quiet one sets
// it trimAfter from the turn that found it quiet.
func (m *master) planTrim(now time.Time) {
	switch {
	case !m.quiet():
		m.nextTrim, m.trimmed = time.Time{}, false
	case !m.trimmed && m.nextTrim.IsZero():
		m.nextTrim = now.Add(trimAfter)
	}
}

// onTrimTick trims when the quiet spell has lasted trimAfter.
func (m *master) onTrimTick(now time.Time) {
	if reached(m.nextTrim, now) {
		m.nextTrim, m.trimmed = time.Time{}, true
		m.env.trim()
	}
}

// trimMemory returns the heap the runtime holds free to the kernel, then
// drops this process's mappings of its executable's read-only pages.
// Errors are ignored: a trim that cannot drop pages leaves them mapped.
func trimMemory() {
	debug.FreeOSMemory()
	for _, r := range codeRanges() {
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, r.start, r.end-r.start, unix.MADV_DONTNEED)
	}
}

// addrRange is one mapping, [start, end).
type addrRange struct{ start, end uintptr }

// codeRanges lists the private, read-only mappings of this process's own
// executable (text and read-only data), found in /proc/self/maps by the
// executable's device and inode. None is writable, so dropping their pages
// loses nothing: a private file mapping that was never written reads back
// from the file.
func codeRanges() []addrRange {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/exe", &st); err != nil {
		return nil
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return nil
	}
	var rs []addrRange
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		if r, ok := codeRange(sc.Text(), st.Dev, st.Ino); ok {
			rs = append(rs, r)
		}
	}
	return rs
}

// codeRange parses one line of /proc/PID/maps and reports whether it is a
// private mapping of the file dev:ino that nobody can write ("r-xp" or
// "r--p").
func codeRange(line string, dev, ino uint64) (addrRange, bool) {
	var start, end uintptr
	var perms string
	var offset, inode uint64
	var major, minor uint32
	if _, err := fmt.Sscanf(line, "%x-%x %s %x %x:%x %d", &start, &end, &perms, &offset, &major, &minor, &inode); err != nil {
		return addrRange{}, false
	}
	if inode != ino || unix.Mkdev(major, minor) != dev || (perms != "r-xp" && perms != "r--p") || end <= start {
		return addrRange{}, false
	}
	return addrRange{start, end}, true
}
