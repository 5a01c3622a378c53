package workers

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
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
	// master-of-one starts one worker, /bin/sleep, through the Go shim run
	// off the main thread (or, with SHIM=embedded, the embedded shim),
	// prints its pid and waits to be killed.
	testkit.Register("master-of-one", func() int {
		r := signals.NewReaper(false)
		shim := []string{os.Args[0], offMainShimArg}
		if os.Getenv("SHIM") == "embedded" {
			var err error
			if shim, err = EmbeddedShim(); err != nil {
				os.Stdout.WriteString("error: " + err.Error() + "\n")
				return 1
			}
		}
		p, err := Start(Spec{Path: "/bin/sleep", Args: []string{"sleep", "60"}, Shim: shim,
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
// parent-death signal, so RunShim sets it there again (DESIGN §5). So does
// a worker started through the embedded shim.
func TestShimKeepsTheParentDeathSignal(t *testing.T) {
	t.Run("go shim off the main thread", func(t *testing.T) { testParentDeath(t, "SHIM=go") })
	t.Run("embedded shim", func(t *testing.T) { testParentDeath(t, "SHIM=embedded") })
}

func testParentDeath(t *testing.T, env string) {
	cmd := testkit.Command(t, t.Context(), "master-of-one", env)
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

// The committed shim_amd64.bin is what shimsrc/build.sh makes of
// shimsrc/shim_amd64.S (go generate ./workers/ rebuilds it). It needs GNU
// as and ld, and is skipped without them.
func TestEmbeddedShimIsUpToDate(t *testing.T) {
	for _, tool := range []string{"as", "ld", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s to build the embedded shim with", tool)
		}
	}
	out := filepath.Join(t.TempDir(), "shim")
	if msg, err := exec.Command("sh", "shimsrc/build.sh", out).CombinedOutput(); err != nil {
		t.Fatalf("shimsrc/build.sh: %v\n%s", err, msg)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("shim_amd64.bin")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("shim_amd64.bin (%d bytes) differs from a build of shimsrc/shim_amd64.S (%d bytes): run go generate ./workers/", len(got), len(want))
	}
}

// The embedded shim fails as RunShim does: exit status 127, one line on
// stderr saying what could not be run and why.
func TestEmbeddedShimFails(t *testing.T) {
	shim, err := EmbeddedShim()
	if err != nil {
		t.Fatal(err)
	}
	memfd := os.NewFile(uintptr(shimFd(t, shim)), "shim") // this test's own; closed at its end
	defer memfd.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"/nonexistent", "x"}, "supervisor: exec /nonexistent: no such file or directory\n"},
		{[]string{"/", "x"}, "supervisor: exec /: permission denied\n"},
		{[]string{"/" + strings.Repeat("x", 5000), "x"}, "supervisor: exec /" + strings.Repeat("x", 5000) + ": errno 36\n"},
		{[]string{"/bin/true"}, "supervisor: exec shim: want PATH ARGV0 [ARGS...]\n"},
	} {
		var stderr bytes.Buffer
		cmd := exec.Command(shim[0], append(shim[1:], tc.args...)...)
		cmd.ExtraFiles = []*os.File{memfd}
		cmd.Path = "/proc/self/fd/3"
		cmd.Args[0] = cmd.Path
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 127 {
			t.Errorf("%q: %v, want exit status 127", tc.args, err)
		}
		if got := stderr.String(); got != tc.want {
			t.Errorf("%q: stderr %q, want %q", tc.args, got, tc.want)
		}
	}
}

// shimFd is the fd in EmbeddedShim's "/proc/self/fd/N".
func shimFd(t *testing.T, shim []string) int {
	t.Helper()
	fd, err := strconv.Atoi(strings.TrimPrefix(shim[0], "/proc/self/fd/"))
	if err != nil {
		t.Fatalf("shim %q: %v", shim, err)
	}
	return fd
}
