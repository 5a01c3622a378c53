package workers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/supervisor-dev/supervisor/listener"
	"golang.org/x/sys/unix"
)

// Notification is one accepted datagram with its sender.
type Notification struct {
	PID  int // sender's pid from SCM_CREDENTIALS
	PGID int // sender's process group at receive time; 0 if the sender is gone
	Msg  Message
}

// NotifySocket is the master's end of NOTIFY_SOCKET: a unix datagram socket
// with SO_PASSCRED.
type NotifySocket struct {
	conn    *net.UnixConn
	addr    string
	path    string   // "" for an abstract address; unlinked by Close
	dir     string   // ListenPrivateNotify's directory, removed by Close; "" otherwise
	allow   []uint32 // sender uids accepted; nil: any
	dropped atomic.Uint64
	closed  sync.Once

	buf []byte // owned by the one goroutine that calls Read
	oob []byte
}

// oobSize fits the sender's credentials and up to 16 fds. A sender passing
// more fds gets MSG_CTRUNC; the kernel closes the fds that did not fit.
var oobSize = unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(4*16)

// ListenNotify binds the notify socket. An address starting with '@' is in
// the abstract namespace; otherwise it is a path, removed first when it is a
// stale socket (one nobody is bound to any more, see listener.ClearStale); a
// live socket there, or a file that is not a socket, is an error and is left
// alone. SO_PASSCRED is set before bind, so every datagram received carries
// its sender's credentials.
func ListenNotify(addr string) (*NotifySocket, error) {
	if addr == "" || addr == "@" {
		return nil, fmt.Errorf("listen notify socket %q: empty address", addr)
	}
	path := ""
	if addr[0] != '@' {
		path = addr
		switch st, err := listener.ClearStale(path); {
		case err != nil:
			return nil, fmt.Errorf("listen notify socket %s: %w", addr, err)
		case st.Live:
			return nil, fmt.Errorf("listen notify socket %s: a live socket is bound at %s", addr, path)
		}
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_PASSCRED: %w", serr)
		}
		return nil
	}}
	pc, err := lc.ListenPacket(context.Background(), "unixgram", addr)
	if err != nil {
		return nil, fmt.Errorf("listen notify socket %s: %w", addr, err)
	}
	return &NotifySocket{
		conn: pc.(*net.UnixConn),
		addr: addr,
		path: path,
		buf:  make([]byte, MaxMessageSize+1),
		oob:  make([]byte, oobSize),
	}, nil
}

// Addr is the value to put in a worker's NOTIFY_SOCKET: the address given to
// ListenNotify, with the leading '@' for an abstract one.
func (n *NotifySocket) Addr() string { return n.addr }

// Read blocks until a well-formed datagram arrives and returns it. Every fd
// received in ancillary data is closed (which also releases a BARRIER=1
// sender at once), whether the datagram is accepted or dropped. Datagrams
// that are truncated (over MaxMessageSize bytes or too many fds), carry no
// sender pid, come from a uid the socket does not accept (ListenPrivateNotify),
// or fail ParseMessage are dropped, counted in Dropped, and Read keeps
// waiting. A message that only says BARRIER=1 is still returned.
// The error is non-nil only when the socket fails; after Close it satisfies
// errors.Is(err, net.ErrClosed). One goroutine calls Read.
func (n *NotifySocket) Read() (Notification, error) {
	b, err := n.ReadBatch(nil, 1)
	if err != nil {
		return Notification{}, err
	}
	return b[0], nil
}

// ReadBatch is Read for a flood: it blocks until at least one well-formed
// datagram arrives, then takes the datagrams already queued, up to max
// received in all, without waiting again, and returns those it accepted
// (dropping the rest as Read does) appended to dst. A reader woken once for
// many datagrams, and a loop handed them at once, cost the master one
// wake-up where Read costs one per datagram. max bounds the time a batch
// holds back a good datagram behind a stream of bad ones.
func (n *NotifySocket) ReadBatch(dst []Notification, max int) ([]Notification, error) {
	rc, err := n.conn.SyscallConn()
	if err != nil {
		return dst, fmt.Errorf("read notify socket %s: %w", n.addr, err)
	}
	got := 0
	var rerr error
	read := func(fd uintptr) bool {
		for range max {
			nb, noob, flags, _, err := unix.Recvmsg(int(fd), n.buf, n.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
			for err == unix.EINTR {
				nb, noob, flags, _, err = unix.Recvmsg(int(fd), n.buf, n.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
			}
			switch {
			case err == unix.EAGAIN:
				// Empty: wait for the next datagram unless we have one.
				// (The poller is edge-triggered: it wakes us only for
				// a datagram that arrives after this EAGAIN.)
				return got > 0
			case err != nil:
				rerr = err
				return true
			}
			if note, ok := n.accept(nb, noob, flags); ok {
				dst = append(dst, note)
				got++
			}
		}
		return true // max received; more may be queued: the next call reads first
	}
	for got == 0 && rerr == nil {
		if err := rc.Read(read); err != nil {
			return dst, fmt.Errorf("read notify socket %s: %w", n.addr, err)
		}
	}
	if got == 0 {
		return dst, fmt.Errorf("read notify socket %s: %w", n.addr, rerr)
	}
	return dst, nil
}

// accept checks one datagram received in n.buf and n.oob and closes every
// fd it carried; ok is false (and the datagram counted in Dropped) when it
// is not to be returned.
func (n *NotifySocket) accept(nb, noob, flags int) (Notification, bool) {
	pid, uid, fds, ok := parseControl(n.oob[:noob])
	if ok && n.allow != nil && !slices.Contains(n.allow, uid) {
		ok = false // before Getpgid: a foreign flood costs no more
	}
	pgid := 0
	if ok {
		// Before the fds are closed: a BARRIER sender is still waiting
		// on them, so it and its parent are still there.
		if g, err := unix.Getpgid(pid); err == nil {
			pgid = g
		} // else the sender is gone already: 0
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	if !ok || nb > MaxMessageSize || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		n.dropped.Add(1)
		return Notification{}, false
	}
	msg, err := ParseMessage(n.buf[:nb])
	if err != nil {
		n.dropped.Add(1)
		return Notification{}, false
	}
	return Notification{PID: pid, PGID: pgid, Msg: msg}, true
}

// parseControl returns the sender's pid and uid and every fd passed in the
// control messages; ok is false without usable credentials. The caller
// closes fds.
func parseControl(oob []byte) (pid int, uid uint32, fds []int, ok bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, 0, nil, false
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case unix.SCM_RIGHTS:
			got, _ := unix.ParseUnixRights(m)
			fds = append(fds, got...)
		case unix.SCM_CREDENTIALS:
			if cred, err := unix.ParseUnixCredentials(m); err == nil && cred.Pid > 0 {
				pid, uid, ok = int(cred.Pid), cred.Uid, true
			}
		}
	}
	return pid, uid, fds, ok
}

// Dropped returns how many datagrams Read has dropped. Safe from any goroutine.
func (n *NotifySocket) Dropped() uint64 { return n.dropped.Load() }

// Close closes the socket (unlinking a path socket, and removing the
// directory ListenPrivateNotify made) and unblocks a Read in progress, which
// then returns an error wrapping net.ErrClosed. Safe from any goroutine; a
// second call returns an error wrapping net.ErrClosed.
func (n *NotifySocket) Close() error {
	err := n.conn.Close()
	n.closed.Do(func() {
		for _, p := range []string{n.path, n.dir} {
			if p == "" {
				continue
			}
			if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
				err = rerr
			}
		}
	})
	if err != nil {
		return fmt.Errorf("close notify socket %s: %w", n.addr, err)
	}
	return nil
}
