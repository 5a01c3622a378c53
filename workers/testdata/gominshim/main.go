// Command gominshim is RunShim as the smallest Go program that does its
// job, for BenchmarkShimCPU only: what a Go-built embedded shim would cost.
package main

import (
	"os"
	"runtime"
	"strconv"
	"syscall"
)

func main() {
	args := os.Args[2:] // SHIM __exec-shim PATH ARGV0 ARGS...
	pid := strconv.Itoa(syscall.Getpid())
	env := append(syscall.Environ(), "LISTEN_PID="+pid)
	if v, _ := syscall.Getenv("WATCHDOG_USEC"); v != "" {
		env = append(env, "WATCHDOG_PID="+pid)
	}
	runtime.LockOSThread()
	syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0)
	err := syscall.Exec(args[0], args[1:], env)
	os.Stderr.WriteString("gominshim: exec " + args[0] + ": " + err.Error() + "\n")
	os.Exit(127)
}
