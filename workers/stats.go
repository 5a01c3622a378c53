package workers

import "os"

// GroupRSS returns the resident memory, in bytes, of each process group
// named in groups (a worker leads its own group, so its pid names it): the
// sum over its processes of the rss field of /proc/N/stat, resident pages
// (the same counter as the second field of /proc/N/statm). One scan of
// /proc serves every group (groupStats: a getpgid(2) per process, a stat
// read per member); a group with no process left is absent, and a process
// whose stat cannot be read or parsed is left out. It reads /proc only and
// blocks for no longer than that.
func GroupRSS(groups []int) map[int]int64 {
	want := make(map[int]bool, len(groups))
	for _, g := range groups {
		want[g] = true
	}
	rss := make(map[int]int64, len(groups))
	stats, _ := groupStats(func(_, pg int) bool { return want[pg] })
	page := int64(os.Getpagesize())
	for _, st := range stats {
		if want[st.PGRP] { // the group at the time of the read
			rss[st.PGRP] += int64(st.RSS) * page
		}
	}
	return rss
}
