package workers

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// The CPU one worker start costs, per way of setting LISTEN_PID: the
// user+system time of the reaped child (the shim, then /bin/true it execs),
// from wait4's rusage. The ways run interleaved, one start of each per
// round in a rotating order, so a busy machine slows them all alike:
//
//	go test -run '^$' -bench ShimCPU -benchtime 300x ./workers/
//
// direct: no shim (no LISTEN_PID), the floor. supervisor: the supervisor
// binary run as ShimArg (the fallback). go-minimal: the shim as the
// smallest Go program (testdata/gominshim). embedded: EmbeddedShim. sh:
// /bin/sh -c 'LISTEN_PID=$$ exec ...' (no sh in FROM scratch).
func BenchmarkShimCPU(b *testing.B) {
	dir := b.TempDir()
	build := func(out, pkg string) string {
		b.Helper()
		cmd := exec.Command("go", "build", "-ldflags=-s -w", "-o", filepath.Join(dir, out), pkg)
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
		}
		return filepath.Join(dir, out)
	}
	embedded, err := EmbeddedShim()
	if err != nil {
		b.Fatal(err)
	}
	ways := []struct {
		name string
		shim []string
	}{
		{"direct", nil},
		{"supervisor", []string{build("supervisor", "../cmd/supervisor"), ShimArg}},
		{"go-minimal", []string{build("gominshim", "./testdata/gominshim"), ShimArg}},
		{"embedded", embedded},
		{"sh", []string{"/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; shift; exec "$0" "$@"`}},
	}
	f := &rusageForker{ru: make(chan syscall.Rusage, 1)}
	cpu := make([]time.Duration, len(ways))
	round := 0
	for b.Loop() {
		for i := range ways {
			w := (i + round) % len(ways)
			cpu[w] += startOnce(b, f, ways[w].shim)
		}
		round++
	}
	for i, w := range ways {
		b.ReportMetric(float64(cpu[i].Microseconds())/1000/float64(round), "ms-cpu/"+w.name)
	}
}

// startOnce starts /bin/true through shim and returns the CPU it used.
func startOnce(b *testing.B, f *rusageForker, shim []string) time.Duration {
	b.Helper()
	exited := make(chan Exit, 1)
	_, err := Start(Spec{Path: "/bin/true", Args: []string{"true"}, Shim: shim, Env: os.Environ(),
		Stdout: 2, Stderr: 2, Forker: f, Exited: exited})
	if err != nil {
		b.Fatal(err)
	}
	var ru syscall.Rusage
	select {
	case ru = <-f.ru:
	case <-time.After(10 * time.Second):
		b.Fatal("no exit within 10s")
	}
	select {
	case e := <-exited:
		if !e.Status.Exited() || e.Status.ExitStatus() != 0 {
			b.Fatalf("shim %q: %s", shim, Describe(e.Status))
		}
	case <-time.After(10 * time.Second):
		b.Fatal("no Exit within 10s")
	}
	return time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
}

// rusageForker waits for each child itself and hands over its rusage.
type rusageForker struct{ ru chan syscall.Rusage }

func (f *rusageForker) Fork(start func() (int, error)) (int, <-chan syscall.WaitStatus, error) {
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	exited := make(chan syscall.WaitStatus, 1)
	go func() {
		var ws syscall.WaitStatus
		var ru syscall.Rusage
		for {
			_, err := syscall.Wait4(pid, &ws, 0, &ru)
			if err != syscall.EINTR {
				break
			}
		}
		f.ru <- ru
		exited <- ws
	}()
	return pid, exited, nil
}
