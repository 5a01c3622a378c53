package workers

// Generic /proc access: the members of process groups (groupMembers, for
// Listening and GroupRSS) and their stats through procfs (groupStats), and
// for the other reads plain syscalls on reused buffers, retried on EINTR,
// errors as *fs.PathError.

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// member is a process groupMembers kept: procfs's handle and the process
// group getpgid(2) gave when it was listed.
type member struct {
	proc procfs.Proc
	pgid int
}

// groupMembers lists /proc once and keeps each process that keep accepts,
// given its pid and its process group from getpgid(2). That pre-filter is a
// syscall and no file, several times cheaper than reading every process's
// stat, so the callers read files of the processes kept only. A process
// gone on the way is left out; only a failed listing is an error.
func groupMembers(keep func(pid, pgid int) bool) ([]member, error) {
	proc, err := procfs.NewFS(procfs.DefaultMountPoint)
	if err != nil {
		return nil, err
	}
	procs, err := proc.AllProcs()
	if err != nil {
		return nil, err
	}
	var ms []member
	for _, p := range procs {
		if pg, err := unix.Getpgid(p.PID); err == nil && keep(p.PID, pg) {
			ms = append(ms, member{proc: p, pgid: pg})
		}
	}
	return ms, nil
}

// groupStats reads the stat (/proc/N/stat, through procfs) of each process
// groupMembers keeps. A process gone on the way, or whose stat cannot be
// read, is left out. A stat that does not parse is left out too and
// reported in err once the scan is done, with the other stats still
// returned; only a failed listing returns no stats.
func groupStats(keep func(pid, pgid int) bool) ([]procfs.ProcStat, error) {
	ms, err := groupMembers(keep)
	if err != nil {
		return nil, err
	}
	var stats []procfs.ProcStat
	var bad error
	for _, m := range ms {
		st, err := m.proc.Stat()
		var unread *fs.PathError
		switch {
		case errors.As(err, &unread):
			continue // gone; stat is readable by everyone
		case err != nil:
			bad = cmp.Or(bad, fmt.Errorf("/proc/%d/stat: %w", m.proc.PID, err))
			continue
		}
		stats = append(stats, st)
	}
	return stats, bad
}

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
// task's syscall file fits in one). The result aliases buf, or a larger
// buffer when whole needs one.
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
