package listener

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// The test binary re-runs itself as a helper process (testkit, as Go's
// os/exec tests do): testkit.Command(t, ctx, name, env...) runs one.
func init() {
	testkit.Register("open", helperOpen)
	testkit.Register("inherited", helperInherited)
	testkit.Register("tableflip-child", helperTableflipChild)
}

func TestMain(m *testing.M) { testkit.Main(m) }

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
