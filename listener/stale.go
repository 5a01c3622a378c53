package listener

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// errNotSocket is ClearStale's answer for a file that is not a socket.
var errNotSocket = errors.New("exists and is not a socket")

// PathState is what ClearStale found at a unix socket path.
type PathState struct {
	// Live: a process is bound there (listening on a stream or seqpacket
	// socket, or bound to a datagram one), and the file was left alone.
	// False: nothing was there, or a stale socket file (nobody bound to it
	// any more) was removed.
	Live bool
	// PID, when Live, is the process that created the listening socket
	// (SO_PEERCRED), if it still runs; 0 when unknown: a datagram socket, an
	// accept queue that is full, a creator that exited while another
	// process still holds the socket.
	PID int
}

// ClearStale makes path ready for binding a new unix socket, stream or
// datagram, unless someone still uses the socket there. It does, in order:
//
//  1. Lstat path: nothing there is (PathState{}, nil); anything that is not
//     a socket (a regular file, a directory, a symlink) is left alone and
//     is an error naming the path and the fix ("PATH exists and is not a
//     socket: remove it or choose another path").
//  2. Probe the socket with a non-blocking SOCK_STREAM connect: refused
//     means nobody is bound to it any more; connected, a full queue
//     (EAGAIN) or EPROTOTYPE (a live socket of another type, such as a
//     datagram socket) means Live, and the file is left alone. A connected
//     probe also reads the listener's pid, and leaves an empty connection
//     in that listener's queue, closed from this side at once.
//  3. Remove the stale file: (PathState{}, nil).
//
// A path that vanishes on the way is free. Other failures (permission to
// stat, connect or remove) are errors naming the path; the state is then
// meaningless. ClearStale never blocks: the probe does not wait. Two
// processes clearing the same path at once may both find it free; the
// bind that follows settles it (EADDRINUSE).
func ClearStale(path string) (PathState, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return PathState{}, nil
	} else if err != nil {
		return PathState{}, err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return PathState{}, fmt.Errorf("%s %w: remove it or choose another path", path, errNotSocket)
	}
	st, err := probeUnix(path)
	if err != nil {
		return PathState{}, fmt.Errorf("probe the socket at %s: %w", path, err)
	}
	if st.Live {
		return st, nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return PathState{}, fmt.Errorf("remove the stale socket %s: %w", path, err)
	}
	return PathState{}, nil
}

// probeUnix is step 2 of ClearStale: not Live only when connecting is
// refused (a stale file) or the path is gone.
func probeUnix(path string) (PathState, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return PathState{}, err
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	switch {
	case errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.ENOENT):
		return PathState{}, nil
	case err == nil:
		return PathState{Live: true, PID: listenerPID(fd)}, nil
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINPROGRESS), errors.Is(err, unix.EPROTOTYPE):
		return PathState{Live: true}, nil // its queue is full, or a live socket of another type
	}
	return PathState{}, err
}

// listenerPID is the pid that created the listening socket fd is connected
// to, if that process still runs; else 0.
func listenerPID(fd int) int {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil || cred.Pid <= 0 || unix.Kill(int(cred.Pid), 0) == unix.ESRCH {
		return 0
	}
	return int(cred.Pid)
}
