package workers

import (
	"os/exec"
	"syscall"
	"testing"
)

// GroupRSS sums a process group's members and leaves out other groups.
func TestGroupRSS(t *testing.T) {
	// A group of two: sh and its sleep child.
	cmd := exec.Command("/bin/sh", "-c", "sleep 60 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	self := syscall.Getpgrp()
	got := GroupRSS([]int{cmd.Process.Pid, self, 1 << 30})
	if got[cmd.Process.Pid] <= 0 {
		t.Errorf("RSS of the sh group = %d, want > 0", got[cmd.Process.Pid])
	}
	if got[self] < 1<<20 {
		t.Errorf("RSS of the test's own group = %d, want at least 1 MiB", got[self])
	}
	if _, ok := got[1<<30]; ok {
		t.Error("a group with no process has an RSS")
	}
	if v, ok := statmResident([]byte("100 42 7 1 0 30 0\n")); !ok || v != 42 {
		t.Errorf("statmResident = %d %v, want 42", v, ok)
	}
	if _, ok := statmResident([]byte("100\n")); ok {
		t.Error("statmResident of a short line: ok")
	}
}
