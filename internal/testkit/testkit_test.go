package testkit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

const argHook = "__testkit-arg"

func TestMain(m *testing.M) {
	testkit.Main(m, testkit.Arg(argHook, func(rest []string) int {
		fmt.Println(strings.Join(rest, " "))
		return 4
	}), testkit.AfterTests(func() {
		if os.Getenv("TESTKIT_TEST_AFTER") != "" {
			fmt.Println("after the tests")
		}
	}))
}

func init() {
	// env prints the environment variables it was given, one a line.
	testkit.Register("env", func() int {
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
		return 0
	})
	// exit-3 exits with status 3.
	testkit.Register("exit-3", func() int { return 3 })
}

func bounded(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A helper gets this process's environment without LISTEN_*, then env.
func TestCommandRunsTheHelper(t *testing.T) {
	t.Setenv("LISTEN_FDS", "2")
	t.Setenv("TESTKIT_TEST_KEPT", "yes")
	out, err := testkit.Command(t, bounded(t), "env", "TESTKIT_TEST_ADDED=1").Output()
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, want := range []string{"TESTKIT_HELPER=env", "TESTKIT_TEST_KEPT=yes", "TESTKIT_TEST_ADDED=1"} {
		if !contains(env, want) {
			t.Errorf("helper environment lacks %s: %q", want, env)
		}
	}
	if contains(env, "LISTEN_FDS=2") {
		t.Errorf("helper environment has this process's LISTEN_FDS: %q", env)
	}

	var ee *exec.ExitError
	if err := testkit.Command(t, bounded(t), "exit-3").Run(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("exit-3: %v, want exit status 3", err)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// An unknown helper name exits 2 and says so; an Arg hook runs before any
// helper and gets the arguments after its own.
func TestMainDispatch(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(bounded(t), exe)
	cmd.Env = append(os.Environ(), "TESTKIT_HELPER=no-such-helper")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	var ee *exec.ExitError
	if err := cmd.Run(); !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), `unknown helper "no-such-helper"`) {
		t.Errorf("unknown helper: %v, stderr %q; want exit status 2 naming it", err, stderr.String())
	}

	cmd = testkit.Command(t, bounded(t), "exit-3")
	cmd.Args = []string{exe, argHook, "a", "b"}
	out, err := cmd.Output()
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || string(out) != "a b\n" {
		t.Errorf("arg hook: %v, %q; want exit status 4 and %q", err, out, "a b\n")
	}
}

// An AfterTests function runs once the tests have run.
func TestAfterTests(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(bounded(t), exe, "-test.run", "^TestAlive$")
	cmd.Env = append(os.Environ(), "TESTKIT_TEST_AFTER=1")
	out, err := cmd.Output()
	pass, after := strings.Index(string(out), "PASS"), strings.Index(string(out), "after the tests")
	if err != nil || pass < 0 || after < pass {
		t.Errorf("a run with an AfterTests hook: %v, output %q; want PASS, then the hook's line", err, out)
	}
}

func TestPublicBinary(t *testing.T) {
	bin := testkit.PublicBinary(t)
	if again := testkit.PublicBinary(t); again != bin {
		t.Errorf("second call: %s, want the same copy %s", again, bin)
	}
	for _, p := range []string{bin, filepath.Dir(bin)} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v, %v; want mode 0755", p, fi.Mode(), err)
		}
	}
	exe, _ := os.Executable()
	want, _ := os.Stat(exe)
	if got, err := os.Stat(bin); err != nil || got.Size() != want.Size() {
		t.Errorf("copy: %v; want %d bytes like %s", err, want.Size(), exe)
	}
}

func TestAlive(t *testing.T) {
	if !testkit.Alive(os.Getpid()) {
		t.Error("Alive(this process) = false")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// Not waited for: it ends as a zombie, which is not alive.
	testkit.WaitFor(t, 10*time.Second, "true to exit", func() bool { return !testkit.Alive(pid) })
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if testkit.Alive(pid) {
		t.Errorf("Alive(%d) after it was reaped = true", pid)
	}
}

// fatalTB records the message of the Fatalf that ends its goroutine.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// failure runs fn with a fatalTB on a goroutine of its own and returns the
// message fn failed with ("" when it returned).
func failure(t *testing.T, fn func(testing.TB)) string {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	testkit.Recv(t, done, 10*time.Second, "the function under test")
	return f.msg
}

func TestWaitForAndRecv(t *testing.T) {
	calls := 0
	if msg := failure(t, func(tb testing.TB) {
		testkit.WaitFor(tb, time.Second, "the third call", func() bool { calls++; return calls == 3 })
	}); msg != "" || calls != 3 {
		t.Errorf("WaitFor failed %q after %d calls; want it to return at the third", msg, calls)
	}
	if msg, want := failure(t, func(tb testing.TB) {
		testkit.WaitFor(tb, 50*time.Millisecond, "never", func() bool { return false })
	}), "timed out after 50ms waiting for never"; msg != want {
		t.Errorf("WaitFor: %q, want %q", msg, want)
	}

	ch := make(chan int, 1)
	ch <- 7
	if got := testkit.Recv(t, ch, time.Second, "7"); got != 7 {
		t.Errorf("Recv = %d, want 7", got)
	}
	close(ch)
	if got := testkit.Recv(t, ch, time.Second, "the close"); got != 0 {
		t.Errorf("Recv on a closed channel = %d, want 0", got)
	}
	if msg, want := failure(t, func(tb testing.TB) {
		testkit.Recv(tb, make(chan int), 50*time.Millisecond, "nothing")
	}), "timed out after 50ms waiting for nothing"; msg != want {
		t.Errorf("Recv: %q, want %q", msg, want)
	}
}
