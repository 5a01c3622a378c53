package supervisor

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Resource limits met when forking a worker (DESIGN §4, "Limits").

// limitHint names the resource limit behind a failed fork, for the log
// line and the error: EMFILE is the master's RLIMIT_NOFILE, EAGAIN from
// fork the uid's RLIMIT_NPROC or the cgroup's pids.max.
func limitHint(err error) string {
	var lim unix.Rlimit
	switch {
	case errors.Is(err, syscall.EMFILE):
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
			return fmt.Sprintf(" (the master's RLIMIT_NOFILE is %d: raise LimitNOFILE=, ulimit -n)", lim.Cur)
		}
	case errors.Is(err, syscall.EAGAIN):
		if unix.Getrlimit(unix.RLIMIT_NPROC, &lim) == nil && lim.Cur != unix.RLIM_INFINITY {
			return fmt.Sprintf(" (uid %d reached its RLIMIT_NPROC %d, or the cgroup its pids.max: raise LimitNPROC= or TasksMax=)", os.Getuid(), lim.Cur)
		}
		return " (the cgroup's pids.max reached? raise TasksMax=)"
	}
	return ""
}
