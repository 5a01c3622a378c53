package listener

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// FDStore keeps the master's listening sockets in systemd's file
// descriptor store (FileDescriptorStoreMax=), so that they outlive the
// master: after a crash systemd starts it again with them in LISTEN_FDS,
// named, and Open adopts them (DESIGN §4). A nil *FDStore is off: Add and
// Remove do nothing and return nil.
type FDStore struct {
	addr string // NOTIFY_SOCKET: a path, or "@name" in the abstract namespace
}

// FDStoreFromEnv returns the fd store at NOTIFY_SOCKET when systemd gave
// the service one: NOTIFY_SOCKET set and FDSTORE (systemd 254 and later
// set it to FileDescriptorStoreMax=; a unit for an older systemd sets it
// with Environment=) a whole number above 0. Anything else, an unparsable
// FDSTORE included, gives nil: no store, nothing said.
func FDStoreFromEnv(getenv func(string) string) *FDStore {
	addr := getenv("NOTIFY_SOCKET")
	n, err := strconv.Atoi(getenv("FDSTORE"))
	if addr == "" || err != nil || n <= 0 {
		return nil
	}
	return &FDStore{addr: addr}
}

// Add sends s to the store: one datagram "FDSTORE=1\nFDNAME=<name>" with
// s's descriptor as SCM_RIGHTS, name being the address's fd-store name
// (Socket.FDStoreName). The descriptor is read as a plain int, never
// through (*os.File).Fd, and its flags are left alone. A socket with no
// such name (fd://N, systemd's own sockets) is not sent: nil. Sending a
// socket the store already holds is harmless: systemd keeps one copy. It
// may block while systemd's queue is full, like sd_notify. An error means
// the datagram was not sent; the socket itself is unaffected.
func (st *FDStore) Add(s *Socket) error {
	if st == nil || s.storeName == "" {
		return nil
	}
	s.mu.Lock() // Close must not free the number while it is sent
	defer s.mu.Unlock()
	if s.fd < 0 {
		return fmt.Errorf("keep %s in systemd's fd store: the socket is closed", s.Name)
	}
	return st.send("FDSTORE=1\nFDNAME="+s.storeName, s.fd, s.Name)
}

// Remove tells systemd to drop every descriptor it keeps under s's
// fd-store name: "FDSTOREREMOVE=1\nFDNAME=<name>". For a socket with no
// such name it does nothing. It neither closes s nor needs it open.
func (st *FDStore) Remove(s *Socket) error {
	if st == nil || s.storeName == "" {
		return nil
	}
	return st.remove(s.storeName, s.Name)
}

func (st *FDStore) remove(name, what string) error {
	if st == nil {
		return nil
	}
	return st.send("FDSTOREREMOVE=1\nFDNAME="+name, -1, what)
}

// send writes state to the notify socket in one datagram, with fd as
// SCM_RIGHTS unless it is -1; what names the socket in errors.
func (st *FDStore) send(state string, fd int, what string) error {
	c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("systemd's fd store, %s: socket: %w", what, err)
	}
	defer unix.Close(c)
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	// x/sys/unix maps a leading '@' to the abstract namespace.
	if err := unix.Sendmsg(c, []byte(state), oob, &unix.SockaddrUnix{Name: st.addr}, unix.MSG_NOSIGNAL); err != nil {
		return fmt.Errorf("systemd's fd store, %s: send to NOTIFY_SOCKET %s: %w: is systemd listening there (NotifyAccess=main)? unset FDSTORE to keep no sockets there", what, st.addr, err)
	}
	return nil
}
