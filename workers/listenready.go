package workers

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// SocketInode returns the inode number of the socket open as fd: the N that
// /proc shows as "socket:[N]" in /proc/PID/fd, and (in hex) as "ino:" in an
// epoll instance's fdinfo. It only fstats fd, so the flags of the open file
// description are left alone; pass a raw fd (from SyscallConn().Control),
// never one from (*os.File).Fd, which clears O_NONBLOCK (DESIGN §5).
func SocketInode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("socket inode of fd %d: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return 0, fmt.Errorf("socket inode of fd %d: not a socket (mode %#o)", fd, st.Mode)
	}
	return st.Ino, nil
}

// Listening reports whether the process pid, or a process in the process
// group pid, is waiting for connections on one of the sockets inodes (from
// SocketInode): the `listen` readiness of DESIGN §3, for apps that say
// nothing. It reads /proc only, changes nothing, and does not wait for the
// process. The rule, in order:
//
//  1. Members: pid itself and every process whose process group is pid (one
//     listing of /proc and a getpgid(2) per entry), pid first, zombies
//     dropped (/proc/M/stat). A worker leads its own group, so this finds
//     the app under a shell wrapper and the workers of a pre-fork app.
//  2. Epoll: a member has one of the sockets registered for EPOLLIN in one of
//     its epoll instances (the "tfd: … events: … ino:" lines of
//     /proc/M/fdinfo/EPFD). This is how asyncio/uvicorn, libuv/Node and Go's
//     netpoller wait; a Go app counts from net.FileListener on, even before
//     it calls Accept.
//  3. Blocking accept: a thread of a member is in accept or accept4
//     (/proc/M/task/T/syscall) on an fd that is one of the sockets.
//  4. poll/select: a thread of a member is in poll, ppoll, select or
//     pselect6 asking for readability (POLLIN or POLLRDNORM, or the readfds
//     bit) of an fd that is one of the sockets. The fd set is read from
//     /proc/M/mem, and the thread's syscall line must be unchanged after that
//     read. Holding a socket while polling something else (gunicorn's
//     arbiter) does not count.
//
// Steps 3 and 4 know the syscall numbers of amd64 and arm64 only, and do not
// see 32-bit compat processes or waits through io_uring; such apps should
// send READY=1.
//
// The first member that matches ends the call with true. A process that is
// gone, or goes while it is read, is not listening: (false, nil). The caller
// must not have reaped pid, so that pid cannot have been reused. Reading the
// fd, syscall and mem files of another user's process needs root; without
// permission the error says so and errors.Is(err, fs.ErrPermission) holds.
// One call costs a listing of /proc and a getpgid(2) per process on the
// host, plus the members' files. A pid below 1 is an error; no inodes is
// (false, nil). Safe for concurrent use.
func Listening(pid int, inodes []uint64) (bool, error) {
	ev, err := seeListener(pid, inodes)
	return ev.How != "", err
}

// listenEvidence says what made Listening true: How is "epoll" (Tid 0) or
// the name of the syscall thread Tid of process Pid is blocked in.
type listenEvidence struct {
	Pid, Tid int
	How      string
}

func seeListener(pid int, inodes []uint64) (listenEvidence, error) {
	if pid <= 0 {
		return listenEvidence{}, fmt.Errorf("listen readiness: bad pid %d", pid)
	}
	if len(inodes) == 0 {
		return listenEvidence{}, nil
	}
	seen, errs := scanGroups(map[int][]uint64{pid: inodes})
	return seen[pid], errs[pid]
}

// ListenScan is Listening for many workers in one pass: watch maps each
// worker's pid (a process group leader, not yet reaped) to its sockets'
// inodes. One listing of /proc serves them all, where Listening lists /proc
// on every call; each group is then read as Listening reads it. It returns
// the pids seen listening, and for each pid whose files could not be read,
// why (a failed listing fails every pid); a pid in neither is not
// listening yet. Safe for concurrent use.
func ListenScan(watch map[int][]uint64) (listening []int, errs map[int]error) {
	seen, errs := scanGroups(watch)
	for pid := range seen {
		listening = append(listening, pid)
	}
	slices.Sort(listening)
	return listening, errs
}

// scanGroups applies Listening's rule to every group in watch at once: the
// evidence for each pid seen listening, the error for each that failed.
func scanGroups(watch map[int][]uint64) (map[int]listenEvidence, map[int]error) {
	seen, errs := map[int]listenEvidence{}, map[int]error{}
	groups, err := groupsOf(watch)
	if err != nil {
		for pid := range watch {
			errs[pid] = err
		}
		return seen, errs
	}
	buf := make([]byte, 16<<10)
	for pid, members := range groups {
		r := procReader{inodes: watch[pid], buf: buf}
		for _, m := range members {
			ev, err := r.member(m)
			if err != nil {
				errs[pid] = err
				break
			}
			if ev.How != "" {
				seen[pid] = ev
				break
			}
		}
	}
	return seen, errs
}

// The syscalls a thread waits for connections in, by number for this GOARCH.
type waitKind uint8

const (
	waitAccept waitKind = iota + 1 // arg1: the listening fd
	waitPoll                       // arg1: struct pollfd *, arg2: nfds
	waitSelect                     // arg1: nfds, arg2: fd_set *readfds
)

type waitSyscall struct {
	name string
	kind waitKind
}

var waitSyscalls = map[string]map[int]waitSyscall{
	"amd64": {43: {"accept", waitAccept}, 288: {"accept4", waitAccept}, 7: {"poll", waitPoll},
		271: {"ppoll", waitPoll}, 23: {"select", waitSelect}, 270: {"pselect6", waitSelect}},
	"arm64": {202: {"accept", waitAccept}, 242: {"accept4", waitAccept}, 73: {"ppoll", waitPoll},
		72: {"pselect6", waitSelect}},
}[runtime.GOARCH]

// pollIn is POLLIN|POLLRDNORM (the same values as EPOLLIN|EPOLLRDNORM).
const pollIn = 0x1 | 0x40

// maxPollFDs bounds the pollfd array read from a process's memory (64 KiB).
const maxPollFDs = 8192

// procReader reads one group for Listening: its inodes and a reused buffer.
type procReader struct {
	inodes []uint64
	buf    []byte
}

// groupsOf returns, for each pid in watch, pid (first, unless gone or a
// zombie) and the other live members of process group pid, each confirmed
// by its stat: one groupStats listing for them all.
func groupsOf(watch map[int][]uint64) (map[int][]int, error) {
	stats, err := groupStats(func(n, pg int) bool {
		_, leader := watch[n]
		_, member := watch[pg]
		return leader || member
	})
	if err != nil {
		return nil, procErr(err)
	}
	groups := map[int][]int{}
	for _, st := range stats {
		if st.State == "Z" || st.State == "X" {
			continue
		}
		pid := st.PGRP
		if _, ok := watch[st.PID]; ok {
			pid = st.PID
		}
		if _, ok := watch[pid]; !ok {
			continue
		}
		members := append(groups[pid], st.PID)
		if st.PID == pid {
			last := len(members) - 1
			members[0], members[last] = members[last], members[0]
		}
		groups[pid] = members
	}
	return groups, nil
}

// member applies steps 2-4 of Listening to process pid, in that order.
func (r *procReader) member(pid int) (listenEvidence, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	held, epolls, err := r.fds(dir)
	if err != nil {
		return listenEvidence{}, err
	}
	if ok, err := r.epollAsks(dir, epolls, held); err != nil || ok {
		if ok {
			return listenEvidence{Pid: pid, How: "epoll"}, nil
		}
		return listenEvidence{}, err
	}
	return r.blockedWait(pid, dir, held)
}

// fds lists the fds of the process at dir ("/proc/PID") that are one of
// the sockets (held) and those that are epoll instances (their names).
func (r *procReader) fds(dir string) (held []int, epolls []string, err error) {
	names, err := readDirNames(dir+"/fd", r.buf)
	if err != nil {
		return nil, nil, procErr(err)
	}
	var link [32]byte // fits "socket:[N]" and "anon_inode:[eventpoll]"
	for _, name := range names {
		path := dir + "/fd/" + name
		n, err := unix.Readlink(path, link[:])
		if err != nil {
			if gone(err) {
				continue // closed since the listing
			}
			return nil, nil, procErr(&fs.PathError{Op: "readlink", Path: path, Err: err})
		}
		if ino, ok := parseSocketLink(link[:n]); ok && slices.Contains(r.inodes, ino) {
			fd, _ := strconv.Atoi(name)
			held = append(held, fd)
		} else if string(link[:n]) == "anon_inode:[eventpoll]" {
			epolls = append(epolls, name)
		}
	}
	return held, epolls, nil
}

// epollAsks is step 2: whether one of the epoll instances epolls (fd
// names) of the process at dir has one of the sockets registered for
// EPOLLIN.
func (r *procReader) epollAsks(dir string, epolls []string, held []int) (bool, error) {
	for _, name := range epolls {
		b, err := readProc(dir+"/fdinfo/"+name, r.buf, true)
		if err != nil {
			if gone(err) {
				continue
			}
			return false, procErr(err)
		}
		targets, err := parseEpollTargets(b)
		if err != nil {
			return false, fmt.Errorf("listen readiness: %s/fdinfo/%s: %w", dir, name, err)
		}
		for _, t := range targets {
			// Kernels before ino: was printed: the fd number in this process.
			ours := slices.Contains(r.inodes, t.ino) || (t.ino == 0 && slices.Contains(held, t.fd))
			if ours && t.events&unix.EPOLLIN != 0 {
				return true, nil
			}
		}
	}
	return false, nil
}

// blockedWait is steps 3 and 4: a thread of process pid (at dir) blocked in
// accept on one of held, or in poll or select asking for input on one.
func (r *procReader) blockedWait(pid int, dir string, held []int) (listenEvidence, error) {
	none := listenEvidence{}
	if len(held) == 0 || waitSyscalls == nil {
		return none, nil
	}
	tids, err := readDirNames(dir+"/task", r.buf)
	if err != nil {
		return none, procErr(err)
	}
	mem := -1
	defer func() {
		if mem >= 0 {
			unix.Close(mem)
		}
	}()
	for _, tid := range tids {
		path := dir + "/task/" + tid + "/syscall"
		b, err := readProc(path, r.buf, false)
		if err != nil {
			if gone(err) {
				continue
			}
			return none, procErr(err)
		}
		nr, args, in, err := parseSyscall(b)
		if err != nil {
			return none, fmt.Errorf("listen readiness: %s: %w", path, err)
		}
		w, ok := waitSyscalls[nr]
		if !in || !ok {
			continue
		}
		seen := false
		if w.kind == waitAccept {
			seen = slices.Contains(held, int(args[0]))
		} else {
			line := bytes.Clone(b)
			if mem < 0 {
				if mem, err = openProc(dir + "/mem"); err != nil {
					return none, procErr(err)
				}
			}
			if w.kind == waitPoll {
				seen = r.pollAsks(mem, args[0], args[1], held)
			} else {
				seen = selectAsks(mem, args[0], args[1], held)
			}
			if seen { // the same wait still, not memory reused after it returned
				b, err := readProc(path, r.buf, false)
				seen = err == nil && bytes.Equal(b, line)
			}
		}
		if seen {
			t, _ := strconv.Atoi(tid)
			return listenEvidence{Pid: pid, Tid: t, How: w.name}, nil
		}
	}
	return none, nil
}

// pollAsks reports whether the pollfd array at addr asks for input on one of
// held. amd64 and arm64 are little-endian: struct pollfd is {int32 fd; int16
// events; int16 revents}. An unreadable array (the wait ended) is a no.
func (r *procReader) pollAsks(mem int, addr, nfds uint64, held []int) bool {
	n := int(min(nfds, maxPollFDs)) * 8
	if n == 0 || addr > 1<<62 {
		return false
	}
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	b := r.buf[:n]
	got, err := unix.Pread(mem, b, int64(addr))
	if err != nil {
		return false
	}
	for i := 0; i+8 <= got; i += 8 {
		fd := int32(binary.LittleEndian.Uint32(b[i:]))
		events := binary.LittleEndian.Uint16(b[i+4:])
		if events&(pollIn) != 0 && slices.Contains(held, int(fd)) {
			return true
		}
	}
	return false
}

// selectAsks reports whether the fd_set at readfds has the bit of one of
// held set. On a little-endian machine bit fd of the array of longs is bit
// fd%8 of byte fd/8.
func selectAsks(mem int, nfds, readfds uint64, held []int) bool {
	if readfds == 0 || readfds > 1<<62 {
		return false
	}
	for _, fd := range held {
		if uint64(fd) >= nfds {
			continue
		}
		var b [1]byte
		if n, err := unix.Pread(mem, b[:], int64(readfds)+int64(fd/8)); err == nil && n == 1 && b[0]&(1<<(fd%8)) != 0 {
			return true
		}
	}
	return false
}

// procErr turns a failed /proc access into Listening's error: nil when the
// process is gone, a hint when permission is missing.
func procErr(err error) error {
	switch {
	case gone(err):
		return nil
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("listen readiness: %w (reading another user's /proc/PID/fd, task/*/syscall and mem "+
			"needs the master to run as root, or as the worker's user with ptrace allowed by kernel.yama.ptrace_scope; "+
			"else use --ready notify)", err)
	}
	return fmt.Errorf("listen readiness: %w", err)
}
