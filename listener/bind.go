package listener

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// bindTCP creates a plain-TCP (never MPTCP) listening socket. An IPv4
// literal binds IPv4 only and an IPv6 literal IPv6 only; an empty host or a
// name uses Go's "tcp" choice (":PORT" is a dual-stack [::] socket). With
// reuseport it sets SO_REUSEPORT before binding, so that Sibling can add
// sockets to its reuseport group (steering, DESIGN §8); the address must
// still be free, as without it (exclusive).
func bindTCP(a Addr, reuseport bool) (*Socket, error) {
	network := "tcp"
	if host, _, err := net.SplitHostPort(a.Address); err == nil {
		if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
			network = "tcp4"
		} else if err == nil {
			network = "tcp6"
		}
	}
	// TCP_NODELAY on the listener is inherited by every accepted socket, as
	// gunicorn and systemd's NoDelay= do: an app that takes fd 3 without
	// setting it (uvicorn --fd treats it as a unix socket) would otherwise
	// wait out the client's delayed ACK on each keep-alive answer (~40 ms).
	lc := net.ListenConfig{Control: func(_, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			if serr == nil && reuseport {
				serr = exclusive(int(fd), address)
			}
			if serr == nil && reuseport {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		return cmp.Or(err, serr)
	}}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), network, a.Address)
	if err != nil {
		return nil, bindError(a, err)
	}
	fd, err := takeFD(ln)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.what(), err)
	}
	return &Socket{Addr: sockname(fd), fd: fd}, nil
}

// exclusive checks that the address fd is about to bind is free, the way
// a bind without SO_REUSEPORT would: with it, a socket of the same user
// that listens there already would take ours into its reuseport group
// instead of failing, and a master started twice on one port would share
// it with the other. It binds a probe socket like fd (family, IPV6_V6ONLY,
// SO_REUSEADDR) without SO_REUSEPORT and closes it. A port of 0 is always
// free.
func exclusive(fd int, address string) error {
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("address %q: %w", address, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return err
	}
	family, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return err
	}
	ip := netip.IPv4Unspecified() // "": every address of fd's family
	if family == unix.AF_INET6 {
		ip = netip.IPv6Unspecified()
	}
	if host != "" {
		if ip, err = netip.ParseAddr(host); err != nil {
			return fmt.Errorf("address %q: %w", address, err)
		}
	}
	probe, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return err
	}
	defer unix.Close(probe)
	var sa unix.Sockaddr
	if family == unix.AF_INET6 {
		v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(probe, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			return err
		}
		sa = &unix.SockaddrInet6{Port: int(port), Addr: ip.As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(port), Addr: ip.Unmap().As4()}
	}
	if err := unix.SetsockoptInt(probe, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return err
	}
	return unix.Bind(probe, sa)
}

// bindUnix removes a stale socket file at the path (one nobody listens on),
// refuses a live one or anything that is not a socket (ClearStale), binds,
// and applies the mode.
func bindUnix(a Addr) (*Socket, error) {
	path := a.Address
	switch st, err := ClearStale(path); {
	case err != nil:
		return nil, fmt.Errorf("%s: %w", a.what(), err)
	case st.Live:
		return nil, fmt.Errorf("%s: address in use by a running process", a.what())
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, bindError(a, err)
	}
	fd, err := takeFD(ln)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("%s: %w", a.what(), err)
	}
	s := &Socket{Addr: path, fd: fd, unlink: path}
	if a.Mode != 0 {
		if err := os.Chmod(path, a.Mode); err != nil {
			s.Close()
			return nil, fmt.Errorf("%s: set mode %04o: %w", a.what(), a.Mode, err)
		}
	}
	return s, nil
}

// takeFD duplicates ln's descriptor (close-on-exec) through Control, never
// Fd, closes ln without unlinking a unix path, and puts the duplicate in
// blocking mode, as systemd hands sockets over. Workers that want
// non-blocking switch the shared description themselves.
func takeFD(ln net.Listener) (int, error) {
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	sc, ok := ln.(syscall.Conn)
	if !ok {
		ln.Close()
		return -1, fmt.Errorf("%T has no SyscallConn", ln)
	}
	fd, err := dupFD(sc)
	ln.Close()
	if err != nil {
		return -1, err
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil && flags&unix.O_NONBLOCK != 0 {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_NONBLOCK)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set blocking mode: %w", err)
	}
	return fd, nil
}

// dupFD returns a close-on-exec duplicate of c's descriptor, read through
// SyscallConn().Control so c's file status flags stay as they are.
func dupFD(c syscall.Conn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	return fd, nil
}

// bindError names the address and, for the common failures, the fix.
func bindError(a Addr, err error) error {
	var dns *net.DNSError
	switch {
	case errors.Is(err, syscall.EADDRINUSE) && a.Kind == KindUnix:
		return fmt.Errorf("%s: %w: stop the other process or choose another path", a.what(), syscall.EADDRINUSE)
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%s: %w: stop the other process or choose another port", a.what(), syscall.EADDRINUSE)
	case errors.Is(err, syscall.EACCES) && a.Kind == KindTCP && privileged(a.Address):
		return fmt.Errorf("%s: %w: ports below 1024 need root or CAP_NET_BIND_SERVICE", a.what(), syscall.EACCES)
	case errors.Is(err, syscall.EACCES) && a.Kind == KindUnix:
		return fmt.Errorf("%s: %w: the supervisor's user must be able to write the socket's directory", a.what(), syscall.EACCES)
	case errors.Is(err, syscall.ENOENT) && a.Kind == KindUnix:
		return fmt.Errorf("%s: no directory %s: create it first", a.what(), filepath.Dir(a.Address))
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%s: %w: no interface of this host has that address", a.what(), syscall.EADDRNOTAVAIL)
	case errors.As(err, &dns):
		return fmt.Errorf("%s: cannot resolve host %q: %w: use an IP address or a name this host resolves", a.what(), dns.Name, dns)
	}
	return fmt.Errorf("%s: %w", a.what(), err)
}

func privileged(hostport string) bool {
	_, port, _ := net.SplitHostPort(hostport)
	n, err := strconv.Atoi(port)
	return err == nil && n > 0 && n < 1024
}
