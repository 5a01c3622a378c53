package workers

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// GroupRSS returns the resident memory, in bytes, of each process group
// named in groups (a worker leads its own group, so its pid names it): the
// sum over its live processes of /proc/N/statm's resident pages. One scan of
// /proc serves every group; a group with no process left is absent. It
// reads /proc only and blocks for no longer than that.
func GroupRSS(groups []int) map[int]int64 {
	want := make(map[int]bool, len(groups))
	for _, g := range groups {
		want[g] = true
	}
	rss := make(map[int]int64, len(groups))
	buf := make([]byte, 64<<10)
	names, err := readDirNames("/proc", buf)
	if err != nil {
		return rss
	}
	page := int64(os.Getpagesize())
	for _, name := range names {
		n, err := strconv.Atoi(name)
		if err != nil {
			continue // not a process
		}
		pg, err := unix.Getpgid(n)
		if err != nil || !want[pg] {
			continue
		}
		b, err := readProc("/proc/"+name+"/statm", buf, false)
		if err != nil {
			continue // gone
		}
		if pages, ok := statmResident(b); ok {
			rss[pg] += pages * page
		}
	}
	return rss
}

// statmResident is the second field of /proc/N/statm: resident pages.
func statmResident(b []byte) (int64, bool) {
	var size, resident int64
	if _, err := fmt.Sscan(string(b), &size, &resident); err != nil {
		return 0, false
	}
	return resident, true
}
