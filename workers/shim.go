package workers

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ShimArg is the hidden first argument that makes the supervisor binary act
// as the exec shim: "supervisor __exec-shim PATH ARGV0 ARGS...".
const ShimArg = "__exec-shim"

// RunShim is the exec shim (DESIGN §5: Go cannot run code between fork and
// exec). It runs in the worker's own process, already in its process group,
// with its credentials: it sets LISTEN_PID (and, with a heartbeat,
// WATCHDOG_PID) to its own pid, which execve keeps, and replaces itself
// with PATH. args is [PATH, ARGV0, ARGS...].
//
// It sets the parent-death signal (SIGKILL, as Start does) again on the
// thread that calls execve, locked to it first. The kernel keeps that
// signal per thread, Start set it on the thread that was the whole process
// then, and execve from any other thread leaves the new program without
// it; Go may well have moved this goroutine to another thread by now
// (DESIGN §5). Until execve the process still has the original thread, so
// a master that dies meanwhile still kills it.
//
// It returns only on failure, with exit code 127 after printing why to
// stderr.
func RunShim(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "supervisor: exec shim: want PATH ARGV0 [ARGS...]")
		return 127
	}
	pid := strconv.Itoa(os.Getpid())
	env := append(os.Environ(), "LISTEN_PID="+pid)
	if os.Getenv("WATCHDOG_USEC") != "" {
		env = append(env, "WATCHDOG_PID="+pid)
	}
	runtime.LockOSThread() // never unlocked: execve replaces everything
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "supervisor: exec shim: set the parent-death signal: %v\n", err)
		return 127
	}
	err := syscall.Exec(args[0], args[1:], env)
	fmt.Fprintf(os.Stderr, "supervisor: exec %s: %v\n", args[0], err)
	return 127
}
