package workers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Unread returns those of the TCP sockets whose inodes are in inodes that
// hold bytes their owner has not read yet (the kernel's receive queue, as
// sock_diag reports it), IPv4 and IPv6. A worker whose accepted
// connections all have empty receive queues has read every request sent
// so far: steering (DESIGN §8) waits for that before signalling it.
//
// The kernel filters the dump to the states a served connection can be in
// (ESTABLISHED, CLOSE_WAIT: a client may send its request and shut down
// its side), so the TIME_WAIT sockets of a busy host are never read.
// (github.com/vishvananda/netlink's SocketDiagTCP dumps every state, with
// TCP_INFO each, which is why it is not used.) A dump walks the kernel's
// whole established-socket hash table, sized by the host's memory, whatever
// it finds: about 1.2 ms of kernel time here (24 GiB, 262,144 buckets). The
// table holds both families, and the request sock_diag kept from
// inet_diag's first version (TCPDIAG_GETSOCK) reads both in one walk,
// where SOCK_DIAG_BY_FAMILY needs one walk per family; a kernel that
// refuses the old request gets the two. Call it once for every worker
// being drained, not once per worker (BenchmarkUnread).
func Unread(inodes map[uint64]bool) (map[uint64]bool, error) {
	if len(inodes) == 0 {
		return map[uint64]bool{}, nil
	}
	return unreadOf(inodes)
}

// unreadOf is Unread of inodes, or of every socket when inodes is nil.
func unreadOf(inodes map[uint64]bool) (map[uint64]bool, error) {
	out := map[uint64]bool{}
	err := dumpUnread(bothFamiliesReq(), inodes, out)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) {
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			if err = dumpUnread(familyReq(family), inodes, out); err != nil {
				break
			}
		}
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

const (
	tcpEstablished = 1 // include/net/tcp_states.h
	tcpCloseWait   = 8
	servedStates   = 1<<tcpEstablished | 1<<tcpCloseWait

	tcpDiagGetSock      = 18 // TCPDIAG_GETSOCK, include/uapi/linux/inet_diag.h
	sizeofInetDiagReq   = 60 // struct inet_diag_req (the first version)
	sizeofInetDiagReqV2 = 56 // struct inet_diag_req_v2
	sizeofInetDiagMsg   = 72 // struct inet_diag_msg
)

// bothFamiliesReq is a dump request for the TCP sockets of both families
// in servedStates: nlmsghdr + inet_diag_req, in host byte order. The
// kernel answers it as a SOCK_DIAG_BY_FAMILY request of family AF_UNSPEC.
func bothFamiliesReq() []byte {
	req := dumpHeader(tcpDiagGetSock, sizeofInetDiagReq)
	binary.NativeEndian.PutUint32(req[unix.NLMSG_HDRLEN+52:], servedStates) // idiag_states, after the 48 byte sockid
	return req
}

// familyReq is a dump request for family's TCP sockets in servedStates:
// nlmsghdr + inet_diag_req_v2.
func familyReq(family uint8) []byte {
	req := dumpHeader(unix.SOCK_DIAG_BY_FAMILY, sizeofInetDiagReqV2)
	body := req[unix.NLMSG_HDRLEN:]
	body[0], body[1] = family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(body[4:], servedStates)
	return req
}

// dumpHeader is a zeroed request of type typ with a body of n bytes.
func dumpHeader(typ uint16, n int) []byte {
	req := make([]byte, unix.NLMSG_HDRLEN+n)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], typ)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	return req
}

// dumpUnread sends the dump request req and adds to out the inodes of the
// sockets it returns that are in inodes (nil: any) and hold unread bytes.
func dumpUnread(req []byte, inodes, out map[uint64]bool) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("sock_diag: socket: %w", err)
	}
	defer unix.Close(fd)

	// Both calls retry EINTR, as proc.go's reads do: the Go runtime's
	// preemption signal can land while the kernel builds a batch.
	err = unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	for err == unix.EINTR {
		err = unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	}
	if err != nil {
		return fmt.Errorf("sock_diag: send: %w", err)
	}

	ne := binary.NativeEndian
	buf := make([]byte, 64<<10)
	for {
		got, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sock_diag: receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:got])
		if err != nil {
			return fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data)); errno != 0 {
						return fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
					}
				}
				return errors.New("sock_diag: error message")
			case unix.SOCK_DIAG_BY_FAMILY, tcpDiagGetSock:
				if len(m.Data) < sizeofInetDiagMsg {
					return fmt.Errorf("sock_diag: a record of %d bytes, want %d", len(m.Data), sizeofInetDiagMsg)
				}
				// idiag_rqueue at 56, idiag_inode at 68 (after the 4
				// byte header, the 48 byte sockid and idiag_expires).
				rqueue, inode := ne.Uint32(m.Data[56:]), ne.Uint32(m.Data[68:])
				if rqueue > 0 && (inodes == nil || inodes[uint64(inode)]) {
					out[uint64(inode)] = true
				}
			}
		}
	}
}

// UnreadGroups returns which of the process groups pgids (a worker's pid
// is its group's id) hold an accepted TCP connection whose bytes they have
// not read yet. The whole set costs one dump and at most one /proc
// listing, however many groups it has: the dump comes first, and only
// when some served socket of the host holds unread bytes are the groups'
// fds read to see whose it is (a drain mostly finds none, and reading the
// fds of 64 groups costs more than the dump). A socket a group accepts
// after the dump is not seen, as it would not be by a dump after the
// listing: the caller's pause keeps new connections away. A group with no
// live process is not in the result.
func UnreadGroups(pgids []int) (map[int]bool, error) {
	out := map[int]bool{}
	unread, err := unreadOf(nil)
	if err != nil || len(unread) == 0 {
		return out, err
	}
	want := map[int]bool{}
	for _, pg := range pgids {
		want[pg] = true
	}
	ms, err := groupMembers(func(_, pg int) bool { return want[pg] })
	if err != nil {
		return nil, procErr(err)
	}
	buf := make([]byte, 8192)
	for _, m := range ms {
		if out[m.pgid] {
			continue
		}
		dir := "/proc/" + strconv.Itoa(m.proc.PID) + "/fd"
		names, err := readDirNames(dir, buf)
		if err != nil {
			if gone(err) {
				continue
			}
			return nil, procErr(err)
		}
		var link [32]byte
		for _, name := range names {
			n, err := unix.Readlink(dir+"/"+name, link[:])
			if err != nil {
				continue // closed since the listing
			}
			if ino, ok := parseSocketLink(link[:n]); ok && unread[ino] {
				out[m.pgid] = true
				break
			}
		}
	}
	return out, nil
}
