package supervisor

// The control socket's file: where it may be created, what may already be
// there, and how it is bound without ever being reachable with a wider mode.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/supervisor-dev/supervisor/listener"
	"golang.org/x/sys/unix"
)

// ListenControl creates the control socket at path, mode 0600, and returns
// the server, not yet serving.
//
// The parent directory is created (0700) when missing; an existing one must
// be owned by root or by this user. A socket file already at path is probed:
// when nothing answers (a master that died) it is replaced; when a master
// answers, ListenControl fails ("another master is running"). Any other file
// at path is an error and is left alone.
//
// The socket is bound inside a private 0700 directory next to path, set to
// 0600, then renamed into place (without replacing a file that appeared in
// the meantime), so it is never reachable with a wider mode and the
// process-wide umask is not touched. Only when that temporary path would
// not fit in sun_path is the socket bound at path directly and then chmod-ed.
func ListenControl(path string) (*ControlServer, error) {
	if path == "" {
		return nil, errors.New("control socket: empty path")
	}
	if len(path) > listener.MaxUnixPath {
		return nil, fmt.Errorf("control socket %s: path too long (%d bytes, at most %d)", path, len(path), listener.MaxUnixPath)
	}
	dir := filepath.Dir(path)
	if err := controlDir(dir); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := clearStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := bindControl(path)
	if err != nil {
		return nil, err
	}
	s := NewControlServer(ln, path)
	if s.file == nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: vanished right after it was created", path)
	}
	return s, nil
}

// controlDir makes sure dir exists and is not someone else's: created 0700
// when missing; an existing one must be a directory owned by root or by
// this user (so nobody else can swap the socket).
func controlDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("directory %s is owned by uid %d, not by root or by this user", dir, st.Uid)
	}
	return nil
}

// clearStaleSocket removes a socket at path that nobody listens on
// (listener.ClearStale); it fails when a master answers there, naming its
// pid, or when path is not a socket.
func clearStaleSocket(path string) error {
	st, err := listener.ClearStale(path)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if st.Live {
		pid := "pid unknown"
		if st.PID > 0 {
			pid = "pid " + strconv.Itoa(st.PID)
		}
		return fmt.Errorf("control socket %s: another master is running (%s): give each master its own --control (or --pid)", path, pid)
	}
	return nil
}

// bindControl binds the listening socket and moves it to path with mode
// 0600 (see ListenControl).
func bindControl(path string) (*net.UnixListener, error) {
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".ctl")
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer os.RemoveAll(tmp)
	at := filepath.Join(tmp, "s")
	direct := len(at) > listener.MaxUnixPath
	if direct {
		at = path
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: at, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, errnoOf(err))
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, error) {
		ln.Close()
		_ = os.Remove(at)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(at, 0o600); err != nil {
		return fail(err)
	}
	if direct {
		return ln, nil
	}
	err = unix.Renameat2(unix.AT_FDCWD, at, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		err = os.Rename(at, path) // a file system without RENAME_NOREPLACE
	}
	if errors.Is(err, unix.EEXIST) {
		return fail(errors.New("another master created it while this one was starting"))
	}
	if err != nil {
		return fail(err)
	}
	return ln, nil
}
