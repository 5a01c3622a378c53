package workers

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// The hand-rolled /proc/PID/stat parser against procfs, for one stat read
// and for the scans that read the stat of one process group's members.
//
//	go test -run '^$' -bench . -benchmem ./workers/

func BenchmarkStat(b *testing.B) {
	pid := os.Getpid()
	b.Run("hand", func(b *testing.B) {
		r := procReader{buf: make([]byte, 16<<10)}
		for b.Loop() {
			buf, err := readProc("/proc/self/stat", r.buf, false)
			if err != nil {
				b.Fatal(err)
			}
			if _, _, err := parseStat(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("procfs", func(b *testing.B) {
		fs, err := procfs.NewDefaultFS()
		if err != nil {
			b.Fatal(err)
		}
		p, err := fs.Proc(pid)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := p.Stat(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// benchGroup starts a process group of three (a shell and two sleeps) and
// returns its id once all three are there.
func benchGroup(b *testing.B) int {
	b.Helper()
	cmd := exec.Command("/bin/sh", "-c", "sleep 60 & sleep 60 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	pgid := cmd.Process.Pid
	b.Cleanup(func() {
		_ = unix.Kill(-pgid, unix.SIGKILL)
		_ = cmd.Wait()
	})
	r := procReader{buf: make([]byte, 16<<10)}
	for deadline := time.Now().Add(5 * time.Second); ; {
		if m, err := r.group(pgid); err == nil && len(m) == 3 {
			return pgid
		} else if time.Now().After(deadline) {
			b.Fatalf("group %d: members %v, %v; want 3 within 5s", pgid, m, err)
		}
	}
}

func BenchmarkGroup(b *testing.B) {
	pgid := benchGroup(b)
	b.Run("hand", func(b *testing.B) {
		r := procReader{buf: make([]byte, 16<<10)}
		for b.Loop() {
			if m, err := r.group(pgid); err != nil || len(m) != 3 {
				b.Fatal(m, err)
			}
		}
	})
	b.Run("procfs", func(b *testing.B) {
		fs, err := procfs.NewDefaultFS()
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if m, err := groupProcfs(fs, pgid); err != nil || len(m) != 3 {
				b.Fatal(m, err)
			}
		}
	})
}

func BenchmarkGroupRSS(b *testing.B) {
	pgid := benchGroup(b)
	b.Run("hand-statm", func(b *testing.B) {
		for b.Loop() {
			if rss := GroupRSS([]int{pgid}); rss[pgid] == 0 {
				b.Fatal(rss)
			}
		}
	})
	b.Run("procfs-stat", func(b *testing.B) {
		fs, err := procfs.NewDefaultFS()
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if rss := groupRSSProcfs(fs, []int{pgid}); rss[pgid] == 0 {
				b.Fatal(rss)
			}
		}
	})
}

// groupProcfs is procReader.group with procfs: the same getpgid(2)
// pre-filter, then each member's stat.
func groupProcfs(fs procfs.FS, pid int) ([]int, error) {
	procs, err := fs.AllProcs()
	if err != nil {
		return nil, err
	}
	var members []int
	for _, p := range procs {
		if p.PID != pid {
			if pg, err := unix.Getpgid(p.PID); err != nil || pg != pid {
				continue
			}
		}
		st, err := p.Stat()
		if err != nil {
			continue
		}
		if (p.PID != pid && st.PGRP != pid) || st.State == "Z" || st.State == "X" {
			continue
		}
		members = append(members, p.PID)
		if p.PID == pid {
			last := len(members) - 1
			members[0], members[last] = members[last], members[0]
		}
	}
	return members, nil
}

// groupRSSProcfs is GroupRSS with procfs: stat's rss field for statm's.
func groupRSSProcfs(fs procfs.FS, groups []int) map[int]int64 {
	want := make(map[int]bool, len(groups))
	for _, g := range groups {
		want[g] = true
	}
	rss := make(map[int]int64, len(groups))
	procs, err := fs.AllProcs()
	if err != nil {
		return rss
	}
	page := int64(os.Getpagesize())
	for _, p := range procs {
		pg, err := unix.Getpgid(p.PID)
		if err != nil || !want[pg] {
			continue
		}
		if st, err := p.Stat(); err == nil {
			rss[pg] += int64(st.RSS) * page
		}
	}
	return rss
}
