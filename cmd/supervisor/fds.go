package main

import (
	"fmt"
	"math"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeOnExecInherited marks every descriptor from 3 up close-on-exec, so
// that no child of the master (a worker, or the next master of an upgrade)
// gets one it was not handed on purpose. run calls it first, before any
// child exists. A master started from a shell, a CI step or ssh may hold
// descriptors without FD_CLOEXEC (a pipe of the parent shell), and every
// fork would pass them on: a worker holding such a pipe keeps whoever waits
// for its EOF waiting for ever, and with --user an unprivileged worker
// would get what the root parent had open.
//
// The descriptors the master adopts need no exception, because none of
// them reaches a child by lacking FD_CLOEXEC:
//   - systemd's LISTEN_FDS and fd://N binds: listener.Open marks them
//     close-on-exec itself (as sd_listen_fds does), and sockets taken from
//     the upgrade store are F_DUPFD_CLOEXEC copies;
//   - tableflip's inherited files (fd 5 up in a new master): tableflip
//     marks them close-on-exec when it adopts them. Its two pipes to the
//     old master (fds 3 and 4) it leaves inheritable, yet uses them only
//     in-process: marked here too, they no longer reach the new master's
//     first workers;
//   - a worker gets its sockets as the explicit Files of workers.Start's
//     syscall.ForkExec, and the next master gets tableflip's files as the
//     Files of syscall.StartProcess: both dup2 each one into place in the
//     child, and a dup2'd copy never has FD_CLOEXEC.
//
// It uses close_range(2) with CLOSE_RANGE_CLOEXEC (Linux 5.11); where that
// fails (an older kernel: ENOSYS or EINVAL; a seccomp filter: EPERM) it sets
// FD_CLOEXEC on each descriptor listed in /proc/self/fd. The error is the
// fallback's: /proc not mounted.
func closeOnExecInherited() error {
	if unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC) == nil {
		return nil
	}
	return closeOnExecFromProc()
}

// closeOnExecFromProc is closeOnExecInherited's fallback: FD_CLOEXEC on
// each descriptor from 3 up listed in /proc/self/fd. A descriptor closed
// meanwhile (the listing's own) is skipped; one opened meanwhile was opened
// by Go, close-on-exec already.
func closeOnExecFromProc() error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("mark inherited descriptors close-on-exec: %w (is /proc mounted?)", err)
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= 3 {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}
