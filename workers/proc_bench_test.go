package workers

import (
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// The cost of reading /proc/PID/stat through procfs: one read, and the
// scans that read a process group's stats (the readiness group, GroupRSS).
//
//	go test -run '^$' -bench 'Stat|Group' -benchmem ./workers/

func BenchmarkStat(b *testing.B) {
	p, err := procfs.NewProc(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := p.Stat(); err != nil {
			b.Fatal(err)
		}
	}
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
	for deadline := time.Now().Add(5 * time.Second); ; {
		if m, err := groupOf(pgid); err == nil && len(m) == 3 {
			return pgid
		} else if time.Now().After(deadline) {
			b.Fatalf("group %d: members %v, %v; want 3 within 5s", pgid, m, err)
		}
	}
}

func BenchmarkGroup(b *testing.B) {
	pgid := benchGroup(b)
	for b.Loop() {
		if m, err := groupOf(pgid); err != nil || len(m) != 3 {
			b.Fatal(m, err)
		}
	}
}

func BenchmarkGroupRSS(b *testing.B) {
	pgid := benchGroup(b)
	for b.Loop() {
		if rss := GroupRSS([]int{pgid}); rss[pgid] == 0 {
			b.Fatal(rss)
		}
	}
}

// groupOf is the readiness scan's members of one group.
func groupOf(pgid int) ([]int, error) {
	groups, err := groupsOf(map[int][]uint64{pgid: nil})
	return groups[pgid], err
}

// The readiness scan's cost per tick with 256 starting workers (each a
// process group of one sleep holding the listening socket, as a worker
// that has not started listening yet): one ListenScan for all of them,
// against a Listening call per worker (a /proc listing each).
//
//	go test -run '^$' -bench ListenScan -benchmem ./workers/
func BenchmarkListenScan(b *testing.B) {
	const n = 256
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	inodes := []uint64{st.Sys().(*syscall.Stat_t).Ino}
	watch := map[int][]uint64{}
	for range n {
		cmd := exec.Command("/bin/sleep", "60")
		cmd.ExtraFiles = []*os.File{f}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		watch[cmd.Process.Pid] = inodes
	}
	b.Run("scan-once", func(b *testing.B) {
		for b.Loop() {
			if seen, errs := ListenScan(watch); len(seen) != 0 || len(errs) != 0 {
				b.Fatal(seen, errs)
			}
		}
	})
	b.Run("listening-each", func(b *testing.B) {
		for b.Loop() {
			for pid, inodes := range watch {
				if ok, err := Listening(pid, inodes); ok || err != nil {
					b.Fatal(pid, ok, err)
				}
			}
		}
	})
}
