package workers

// Parsers for the /proc files Listening reads.

import (
	"bytes"
	"fmt"
	"strconv"
)

// parseSyscall parses /proc/PID/task/TID/syscall: "NR ARG1 … ARG6 SP PC"
// (hex) while the thread is blocked in syscall NR; "-1 SP PC" while it is
// blocked outside a syscall and "running" while it runs, both with in false.
func parseSyscall(b []byte) (nr int, args [6]uint64, in bool, err error) {
	f := bytes.Fields(b)
	if len(f) == 1 && string(f[0]) == "running" {
		return -1, args, false, nil
	}
	if len(f) == 0 {
		return 0, args, false, fmt.Errorf("syscall %q: empty", b)
	}
	if nr, err = strconv.Atoi(string(f[0])); err != nil {
		return 0, args, false, fmt.Errorf("syscall %q: %w", b, err)
	}
	if nr < 0 {
		return nr, args, false, nil
	}
	if len(f) < 7 {
		return 0, args, false, fmt.Errorf("syscall %q: short", b)
	}
	for i := range args {
		if args[i], err = strconv.ParseUint(string(f[1+i]), 0, 64); err != nil {
			return 0, args, false, fmt.Errorf("syscall %q: arg %d: %w", b, i+1, err)
		}
	}
	return nr, args, true, nil
}

// epollTarget is one fd registered in an epoll instance.
type epollTarget struct {
	fd     int    // the fd number in the process that registered it
	events uint32 // EPOLLIN, …
	ino    uint64 // 0 when the kernel does not say
}

// parseEpollTargets parses the "tfd:" lines of an epoll instance's fdinfo:
// "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x" (events and
// ino in hex). Other lines, such as the instance's own "ino:\t1038"
// (decimal), are skipped.
func parseEpollTargets(b []byte) ([]epollTarget, error) {
	var ts []epollTarget
	for line := range bytes.Lines(b) {
		if !bytes.HasPrefix(line, []byte("tfd:")) {
			continue
		}
		var t epollTarget
		var haveEvents bool
		f := bytes.Fields(line)
		for i := 0; i < len(f); i++ {
			key, val, _ := bytes.Cut(f[i], []byte(":"))
			if len(val) == 0 && i+1 < len(f) { // "key: value"
				i++
				val = f[i]
			}
			var err error
			switch string(key) {
			case "tfd":
				t.fd, err = strconv.Atoi(string(val))
			case "events":
				var e uint64
				e, err = strconv.ParseUint(string(val), 16, 32)
				t.events, haveEvents = uint32(e), true
			case "ino":
				t.ino, err = strconv.ParseUint(string(val), 16, 64)
			}
			if err != nil {
				return nil, fmt.Errorf("epoll fdinfo %q: %s: %w", bytes.TrimSpace(line), key, err)
			}
		}
		if !haveEvents {
			return nil, fmt.Errorf("epoll fdinfo %q: no events", bytes.TrimSpace(line))
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// parseSocketLink returns N from a /proc/PID/fd link "socket:[N]".
func parseSocketLink(b []byte) (uint64, bool) {
	s, ok := bytes.CutPrefix(b, []byte("socket:["))
	if !ok {
		return 0, false
	}
	s, ok = bytes.CutSuffix(s, []byte("]"))
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(string(s), 10, 64)
	return ino, err == nil
}
