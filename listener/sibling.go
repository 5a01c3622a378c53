package listener

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Sibling creates another listening socket on s's exact address, in s's
// reuseport group, for a generation of its own (steering, DESIGN §8): plain
// TCP (never MPTCP), blocking, close-on-exec, with s's backlog,
// TCP_NODELAY, SO_REUSEADDR and, for IPv6, IPV6_V6ONLY. s must be a TCP
// listener bound with SO_REUSEPORT (bindTCP's reuseport); anything else is
// an error that says so. The new socket joins the group last, so its index
// in the group is the group's size before.
func (s *Socket) Sibling() (*Socket, error) {
	fd := s.RawFD()
	if err := reusePortListener(fd, s.Name); err != nil {
		return nil, err
	}
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return nil, fmt.Errorf("%s: getsockopt TCP_INFO: %w", s.Name, err)
	}
	backlog := int(ti.Sacked) // on a listener: the accept queue's limit
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("%s: getsockname: %w", s.Name, err)
	}
	family := sockopt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	nfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, fmt.Errorf("%s: socket: %w", s.Name, err)
	}
	opts := []struct{ level, opt int }{
		{unix.SOL_SOCKET, unix.SO_REUSEPORT},
		{unix.SOL_SOCKET, unix.SO_REUSEADDR},
		{unix.IPPROTO_TCP, unix.TCP_NODELAY},
	}
	if family == unix.AF_INET6 {
		opts = append(opts, struct{ level, opt int }{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY})
	}
	for _, o := range opts {
		if v := sockopt(fd, o.level, o.opt); v >= 0 {
			if err = unix.SetsockoptInt(nfd, o.level, o.opt, v); err != nil {
				break
			}
		}
	}
	if err == nil {
		err = unix.Bind(nfd, sa)
	}
	if err == nil {
		err = unix.Listen(nfd, backlog)
	}
	if err != nil {
		unix.Close(nfd)
		return nil, fmt.Errorf("%s: a sibling socket: %w", s.Name, err)
	}
	return &Socket{Name: s.Name, Addr: s.Addr, fd: nfd}, nil
}
