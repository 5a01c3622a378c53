package workers

// Generic /proc access, shared by Listening and GroupRSS: plain syscalls on
// reused buffers, retried on EINTR, errors as *fs.PathError.

import (
	"errors"
	"io/fs"

	"golang.org/x/sys/unix"
)

// gone reports whether err means the process, thread or fd no longer exists.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH)
}

// openProc opens path read-only and close-on-exec.
func openProc(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, &fs.PathError{Op: "open", Path: path, Err: err}
		}
		return fd, nil
	}
}

// readProc reads path into buf: all of it when whole, else one read (a
// prefix is enough for stat, and syscall fits). The result aliases buf, or a
// larger buffer when whole needs one.
func readProc(path string, buf []byte, whole bool) ([]byte, error) {
	fd, err := openProc(path)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(buf) {
			buf = append(buf, make([]byte, len(buf))...)
		}
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		n += m
		if m == 0 || !whole {
			return buf[:n], nil
		}
	}
}

// readDirNames lists a directory without sorting, using buf for the raw
// entries.
func readDirNames(path string, buf []byte) ([]string, error) {
	fd, err := openProc(path)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var names []string
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "readdirent", Path: path, Err: err}
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}
