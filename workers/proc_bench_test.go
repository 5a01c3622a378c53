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
	r := procReader{buf: make([]byte, 16<<10)}
	for b.Loop() {
		if m, err := r.group(pgid); err != nil || len(m) != 3 {
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
