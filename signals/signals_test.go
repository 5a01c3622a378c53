package signals

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestIntentOf(t *testing.T) {
	for sig, want := range map[os.Signal]Intent{
		syscall.SIGTERM: Stop, syscall.SIGINT: FastStop, syscall.SIGQUIT: FastStop,
		syscall.SIGHUP: Reload, syscall.SIGUSR1: ReopenLogs, syscall.SIGUSR2: Upgrade,
		syscall.SIGTTIN: ScaleUp, syscall.SIGTTOU: ScaleDown, syscall.SIGURG: None, syscall.SIGCHLD: None,
	} {
		if got := IntentOf(sig); got != want {
			t.Errorf("IntentOf(%v) = %v, want %v", sig, got, want)
		}
	}
	for _, sig := range Handled {
		if IntentOf(sig) == None {
			t.Errorf("%v is in Handled but has no intent", sig)
		}
	}
}

func TestNotifyRelaysHandledSignals(t *testing.T) {
	c, stop := Notify()
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTTIN); err != nil {
		t.Fatal(err)
	}
	select {
	case sig := <-c:
		if sig != syscall.SIGTTIN {
			t.Fatalf("got %v, want SIGTTIN", sig)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SIGTTIN not relayed within 5s")
	}
}

func forkTrue(t *testing.T, r *Reaper, script string) (int, <-chan syscall.WaitStatus) {
	t.Helper()
	pid, ch, err := r.Fork(func() (int, error) {
		return syscall.ForkExec("/bin/sh", []string{"sh", "-c", script}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}})
	})
	if err != nil {
		t.Fatal(err)
	}
	return pid, ch
}

func waitStatus(t *testing.T, ch <-chan syscall.WaitStatus) syscall.WaitStatus {
	t.Helper()
	select {
	case ws := <-ch:
		return ws
	case <-time.After(10 * time.Second):
		t.Fatal("no exit status within 10s")
	}
	return 0
}

func TestReaperReportsExitStatus(t *testing.T) {
	r := NewReaper(false)
	defer r.Close()
	_, ch := forkTrue(t, r, "exit 7")
	if ws := waitStatus(t, ch); !ws.Exited() || ws.ExitStatus() != 7 {
		t.Fatalf("status %v, want exited 7", ws)
	}
	pid, ch := forkTrue(t, r, "exec sleep 30")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if ws := waitStatus(t, ch); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("status %v, want killed by SIGKILL", ws)
	}
}

// A child that exits before Fork returns is still reported: the pid is
// registered under the lock that the reap takes.
func TestReaperManyInstantExits(t *testing.T) {
	r := NewReaper(false)
	defer r.Close()
	var chans []<-chan syscall.WaitStatus
	for range 20 {
		_, ch := forkTrue(t, r, "exit 3")
		chans = append(chans, ch)
	}
	for _, ch := range chans {
		if ws := waitStatus(t, ch); ws.ExitStatus() != 3 {
			t.Fatalf("status %v, want exited 3", ws)
		}
	}
}

// Without orphan reaping the reaper waits only for its own pids, so os/exec
// in the same process keeps its exit statuses (DESIGN §5: no stolen statuses).
func TestReaperDoesNotStealFromOsExec(t *testing.T) {
	r := NewReaper(false)
	defer r.Close()
	for range 10 {
		_, ch := forkTrue(t, r, "exit 0")
		err := exec.Command("/bin/sh", "-c", "exit 5").Run()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 5 {
			t.Fatalf("os/exec: got %v, want exit status 5", err)
		}
		waitStatus(t, ch)
	}
}

func TestReaperCloseIsIdempotent(t *testing.T) {
	r := NewReaper(true)
	r.Close()
	r.Close()
}

// Every intent but None has at least one signal, and every signal of an
// intent gives it the same name.
func TestIntentTable(t *testing.T) {
	names := map[Intent]string{}
	for _, row := range table {
		if prev, ok := names[row.intent]; ok && prev != row.name {
			t.Errorf("%v: intent %d named %q and %q", row.sig, row.intent, prev, row.name)
		}
		names[row.intent] = row.name
	}
	for i := None + 1; i <= ScaleDown; i++ {
		if names[i] == "" {
			t.Errorf("intent %d has no signal in the table", i)
		}
	}
	if got := None.String(); got != "none" {
		t.Errorf("None.String() = %q", got)
	}
	if got := Intent(99).String(); got != "unknown" {
		t.Errorf("Intent(99).String() = %q", got)
	}
	if got := FastStop.String(); got != "fast-stop" {
		t.Errorf("FastStop.String() = %q", got)
	}
}
