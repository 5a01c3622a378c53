package listener

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary re-runs itself as a helper process (as Go's os/exec tests
// do): helperEnv names the helper, which runs instead of the tests.
const helperEnv = "LISTENER_TEST_HELPER"

var helpers = map[string]func() int{
	"open":            helperOpen,
	"inherited":       helperInherited,
	"tableflip-child": helperTableflipChild,
}

var (
	helpersMu   sync.Mutex
	helpersUsed = map[string]bool{}
)

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		h, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(h())
	}
	goleak.VerifyTestMain(checkHelpers{m})
}

// checkHelpers fails a full run (no -run filter) that never used a helper.
type checkHelpers struct{ m *testing.M }

func (c checkHelpers) Run() int {
	code := c.m.Run()
	if f := flag.Lookup("test.run"); code != 0 || testing.Short() || f == nil || f.Value.String() != "" {
		return code
	}
	helpersMu.Lock()
	defer helpersMu.Unlock()
	for name := range helpers {
		if !helpersUsed[name] {
			fmt.Fprintf(os.Stderr, "helper %q was never used\n", name)
			code = 1
		}
	}
	return code
}

func markHelper(name string) {
	helpersMu.Lock()
	defer helpersMu.Unlock()
	helpersUsed[name] = true
}

// helperCmd runs the test binary as helper name with env added (LISTEN_*
// variables of this process removed). The command is bounded by ctx.
func helperCmd(t *testing.T, ctx context.Context, name string, env ...string) *exec.Cmd {
	t.Helper()
	markHelper(name)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, exe)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, helperEnv+"="+name)
	cmd.Env = append(cmd.Env, env...)
	cmd.WaitDelay = time.Second
	return cmd
}

// runHelper runs helper name to the end (30s at most) and returns its
// stdout; a non-zero exit fails the test.
func runHelper(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper %v: %v\nstderr:\n%s", cmd.Env[len(cmd.Env)-1], err, stderr.String())
	}
	return string(out)
}

func helperContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pretendShim sets LISTEN_PID to this process, as the supervisor's exec
// shim does between fork and exec (Go cannot set it before the fork).
func pretendShim() {
	if os.Getenv("LISTEN_FDS") != "" {
		os.Setenv("LISTEN_PID", fmt.Sprint(os.Getpid()))
	}
}

// helperOpen opens the newline-separated --bind values in LISTENER_TEST_BINDS
// with the systemd sockets from the environment and prints one line per
// socket, "name|addr|fd|nonblocking", or "error: ..." .
func helperOpen() int {
	pretendShim()
	sd, err := FromEnv(os.Getenv, os.Getpid())
	if err != nil {
		fmt.Println("error:", err)
		return 0
	}
	addrs, err := ParseAll(strings.Split(os.Getenv("LISTENER_TEST_BINDS"), "\n"))
	if err != nil {
		fmt.Println("error:", err)
		return 0
	}
	socks, err := Open(addrs, nil, sd)
	if err != nil {
		fmt.Println("error:", err)
		return 0
	}
	for _, s := range socks {
		fl, _ := fcntlGetfl(s.RawFD())
		fmt.Printf("%s|%s|%d|%v\n", s.Name, s.Addr, s.RawFD(), fl&syscall.O_NONBLOCK != 0)
		s.Close()
	}
	return 0
}
