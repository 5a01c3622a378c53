package workers

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/signals"
)

// offMainShimArg runs RunShim on a thread that is not the process's first,
// as Go may do whenever the main goroutine has moved.
const offMainShimArg = "__exec-shim-off-main"

func shimOffMain(args []string) int {
	runtime.LockOSThread() // the main goroutine keeps the main thread
	code := make(chan int)
	go func() {
		runtime.LockOSThread() // so this goroutine runs on another thread
		code <- RunShim(args)
	}()
	return <-code
}

func init() {
	// master-of-one starts one worker, /bin/sleep, through the shim run off
	// the main thread, prints its pid and waits to be killed.
	testkit.Register("master-of-one", func() int {
		r := signals.NewReaper(false)
		p, err := Start(Spec{Path: "/bin/sleep", Args: []string{"sleep", "60"}, Shim: []string{os.Args[0], offMainShimArg},
			Env: os.Environ(), Stdout: 2, Stderr: 2, Forker: r, Exited: make(chan Exit, 1)})
		if err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			return 1
		}
		os.Stdout.WriteString(strconv.Itoa(p.Pid) + "\n")
		select {} // until SIGKILL
	})
}

// A worker whose shim execs from another thread than the one Start forked
// still dies with its master: execve keeps only the calling thread's
// parent-death signal, so RunShim sets it there again (DESIGN §5).
func TestShimKeepsTheParentDeathSignal(t *testing.T) {
	cmd := testkit.Command(t, t.Context(), "master-of-one")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("master-of-one said %q, %v", line, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
	testkit.WaitFor(t, 5*time.Second, "the worker to exec sleep", func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		return err == nil && strings.TrimSpace(string(b)) == "sleep"
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	testkit.WaitFor(t, 5*time.Second, "the worker to die with its master", func() bool { return !testkit.Alive(pid) })
}
