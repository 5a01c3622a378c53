package workers

import (
	"bytes"
	"os"
	"strconv"
)

// GroupRSS returns the resident memory, in bytes, of each process group
// named in groups (a worker leads its own group, so its pid names it): the
// sum over its processes of /proc/N/statm's resident pages. One scan of
// /proc serves every group (groupMembers: a getpgid(2) per process), then
// one statm read per member; a group with no process left is absent, and a
// process gone on the way is left out. It reads /proc only and blocks for
// no longer than that.
//
// statm, not stat's rss field: since Linux 6.2 the kernel keeps the RSS in
// per-CPU counters, and stat shows their approximate sum (0 for a process
// just started, and off by up to the counters' batch times the CPUs on a
// big host), while statm and status fold the exact one.
func GroupRSS(groups []int) map[int]int64 {
	want := make(map[int]bool, len(groups))
	for _, g := range groups {
		want[g] = true
	}
	rss := make(map[int]int64, len(groups))
	ms, _ := groupMembers(func(_, pg int) bool { return want[pg] })
	page := int64(os.Getpagesize())
	buf := make([]byte, 256)
	for _, m := range ms {
		b, err := readProc("/proc/"+strconv.Itoa(m.proc.PID)+"/statm", buf, false)
		if err != nil {
			continue // gone
		}
		if pages, ok := statmResident(b); ok {
			rss[m.pgid] += pages * page
		}
	}
	return rss
}

// statmResident is the second field of /proc/N/statm: resident pages.
func statmResident(b []byte) (int64, bool) {
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(f[1]), 10, 64)
	return n, err == nil && n >= 0
}
