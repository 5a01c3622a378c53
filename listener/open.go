package listener

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Open binds or inherits every address in order and returns the sockets in
// bind order (a "systemd" address expands to every passed socket, in order).
// A store may be nil. On error, every socket already opened is closed
// (inherited descriptors excepted, see below) and the error names the
// address and the fix ("bind 127.0.0.1:80: permission
// denied: ports below 1024 need root or CAP_NET_BIND_SERVICE").
//
// For each address Open does, in order:
//  1. ask the store for the socket the previous master kept under the
//     address's key ("listener:"+Key(): Raw, plus "#N" for the Nth repeat
//     of a HOST:0 value, numbered by ParseAll) and, if there is one, use it
//     as it is (mode untouched);
//  2. otherwise, for a TCP or unix address, adopt the first socket systemd
//     passed under the address's fd-store name (Socket.FDStoreName: the
//     master kept it in systemd's fd store before it crashed), as it is
//     (mode untouched), after checking it is a listening socket and marking
//     it close-on-exec; Socket.FromFDStore then reports true;
//  3. otherwise bind TCP and unix addresses (plain TCP, blocking mode, a
//     stale unix socket file replaced, ?mode= applied), or take fd://N and
//     systemd descriptors as they are, after checking each is a listening
//     socket and marking it close-on-exec;
//  4. once every address is open, add each socket that did not come from the
//     store to it, so the store only changes when Open succeeds.
//
// A passed socket whose name is an fd-store name ("listener_…",
// "metrics_…") is the master's own: a "systemd" or "systemd:NAME" address
// never takes it, whatever the order of the addresses, so it can be
// adopted by its bind only. See ReleaseUnclaimed for those no bind claims.
//
// Every descriptor in sd is marked close-on-exec, as sd_listen_fds does,
// whether an address uses it or not; unused ones stay open. A descriptor of
// fd://N, systemd or its fd store belongs to the returned Socket and only Socket.Close
// closes it (the cleanup after an error leaves it open). An inherited
// descriptor can be used by one address only: "systemd" next to
// "systemd:NAME", or fd://3 next to a systemd socket 3, is an error.
// The addresses come from ParseAll, all of them or a part (the master opens
// its binds one at a time), so a repeat carries its number: two addresses
// with the same Key in one call are an error. Open holds no lock; calls
// must not run concurrently on the same store.
func Open(addrs []Addr, store Store, sd Systemd) ([]*Socket, error) {
	for _, fd := range sd.FDs {
		unix.CloseOnExec(fd)
	}
	o := &opener{store: store, sd: sd, claimed: map[int]string{}, kept: map[string]bool{}}
	var socks []*Socket
	err := func() error {
		for _, a := range addrs {
			got, err := o.open(a)
			socks = append(socks, got...)
			if err != nil {
				return err
			}
		}
		for _, add := range o.adds {
			if err := add(); err != nil {
				return fmt.Errorf("keep sockets for a master upgrade: %w", err)
			}
		}
		return nil
	}()
	if err != nil {
		for _, s := range socks {
			if !s.inherited {
				s.Close()
			}
		}
		return nil, err
	}
	return socks, nil
}

// opener is the state of one Open call.
type opener struct {
	store   Store
	sd      Systemd
	claimed map[int]string  // inherited descriptor -> the --bind value using it
	kept    map[string]bool // keys of the sockets opened so far, but systemd's
	adds    []func() error  // store additions, run once every address is open
}

func (o *opener) open(a Addr) ([]*Socket, error) {
	key := a.storeKey()
	if a.Kind == KindSystemd {
		return o.systemd(a, key)
	}
	fd, ok, err := o.fromStore(key)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", a.flag(), a.Raw, err)
	}
	name := a.fdStoreName()
	passed := -1
	if !ok && name != "" {
		passed = o.passedNamed(name)
	}
	var s *Socket
	switch {
	case ok:
		s = &Socket{Addr: sockname(fd), fd: fd}
		if a.Kind == KindUnix {
			s.Addr, s.unlink = a.Address, a.Address
		}
	case passed >= 0:
		s, err = o.fromFDStore(a, name, passed)
	case a.Kind == KindTCP:
		s, err = bindTCP(a, a.ReusePort)
	case a.Kind == KindUnix:
		s, err = bindUnix(a)
	case a.Kind == KindFD:
		s, err = o.inherit(a.FD, "", a.Raw, a.Raw)
	default:
		err = fmt.Errorf("%s %q: unknown kind %d", a.flag(), a.Raw, a.Kind)
	}
	if err != nil {
		return nil, err
	}
	s.Name, s.storeName = a.Raw, name
	if o.kept[key] { // a second socket under one key would replace the first
		return []*Socket{s}, fmt.Errorf("%s %s: repeated without its repeat number (parse the list with ParseAll)", a.flag(), a.Raw)
	}
	o.kept[key] = true
	if !ok {
		o.keep(key, s.fd)
	}
	return []*Socket{s}, nil
}

// fromStore takes the descriptor kept under key as a close-on-exec
// duplicate it owns; ok is false when the store has none.
func (o *opener) fromStore(key string) (fd int, ok bool, err error) {
	if o.store == nil {
		return -1, false, nil
	}
	f, err := o.store.File(key)
	if err != nil || f == nil {
		return -1, false, err
	}
	defer f.Close()
	fd, err = dupFD(f)
	if err != nil {
		return -1, false, fmt.Errorf("take %s from the previous master: %w", key, err)
	}
	return fd, true, nil
}

// keep schedules adding fd to the store under key.
func (o *opener) keep(key string, fd int) {
	if o.store == nil {
		return
	}
	o.adds = append(o.adds, func() error {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("dup %s: %w", key, err)
		}
		f := os.NewFile(uintptr(dup), key)
		defer f.Close()
		return o.store.AddFile(key, f)
	})
}

// inherit wraps a descriptor the process was given, after checking it is
// free and a listening socket; what names it in errors.
func (o *opener) inherit(fd int, name, bind, what string) (*Socket, error) {
	if by, ok := o.claimed[fd]; ok {
		return nil, fmt.Errorf("%s is already used by --bind %s", what, by)
	}
	if err := listening(fd); err != nil {
		return nil, fmt.Errorf("%s %w", what, err)
	}
	unix.CloseOnExec(fd)
	o.claimed[fd] = bind
	return &Socket{Name: name, Addr: sockname(fd), fd: fd, inherited: true}, nil
}

// listening checks that fd is open and a listening socket (SO_ACCEPTCONN).
// Its errors read as a predicate: "fd://5 " + err.
func listening(fd int) error {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return fmt.Errorf("is not open: %w", err)
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return fmt.Errorf("is not a listening socket: %w", err)
	}
	if v != 1 {
		return errors.New("is not a listening socket")
	}
	return nil
}

// sockname formats fd's local address: "127.0.0.1:8080", "[::1]:8080", or
// a unix path; "" if it has none.
func sockname(fd int) string {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return ""
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		ip := netip.AddrFrom16(sa.Addr)
		if sa.ZoneId != 0 {
			zone := strconv.Itoa(int(sa.ZoneId))
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			}
			ip = ip.WithZone(zone)
		}
		return netip.AddrPortFrom(ip, uint16(sa.Port)).String()
	case *unix.SockaddrUnix:
		return sa.Name
	}
	return ""
}
