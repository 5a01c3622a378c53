package listener

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Group is one TCP bind's reuseport group as the master that steers it
// sees it (DESIGN §8): its listening sockets in the kernel's index order,
// which is the order a Steer program's weights are written in.
//
// The kernel numbers a group's sockets in the order they joined it
// (listen), and when one leaves (close, or shutdown of a listener) it moves
// the last socket into the gap. A Group mirrors that exactly as long as it
// alone changes the group: Add appends, Remove leaves and moves the last
// into the gap, as the kernel does. Socket 0 is the bind's own socket,
// which the master keeps for its whole life (the upgrade store and
// systemd's fd store hold it): it never leaves, so it is always index 0,
// also in the group a crashed master leaves behind. A socket of the same
// user bound by anyone else joins the group too and breaks the numbering:
// the documentation says so.
type Group struct {
	socks []*Socket
}

// NewGroup makes the group of first, a listening plain-TCP socket bound
// with SO_REUSEPORT, with more: the sockets already in it after first, in
// index order (a new master's inheritance from the one it replaces). It
// refuses a socket that cannot have siblings, saying why.
func NewGroup(first *Socket, more ...*Socket) (*Group, error) {
	fd := first.RawFD()
	if err := reusePortListener(fd, first.Name); err != nil {
		return nil, err
	}
	g := &Group{socks: []*Socket{first}}
	for _, s := range more {
		if err := reusePortListener(s.RawFD(), s.Name); err != nil {
			return nil, err
		}
		g.socks = append(g.socks, s)
	}
	return g, nil
}

// reusePortListener checks that fd is a listening plain-TCP socket with
// SO_REUSEPORT: one that has, or can join, a reuseport group.
func reusePortListener(fd int, name string) error {
	if fd < 0 {
		return fmt.Errorf("%s: closed", name)
	}
	if sockopt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL) != unix.IPPROTO_TCP || sockopt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN) != 1 {
		return fmt.Errorf("%s: not a listening plain-TCP socket: only those can be steered", name)
	}
	if sockopt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT) != 1 {
		return fmt.Errorf("%s: bound without SO_REUSEPORT, so it has no reuseport group", name)
	}
	return nil
}

// sockopt is fd's integer socket option, -1 when it cannot be read.
func sockopt(fd, level, opt int) int {
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		return -1
	}
	return v
}

// Len is the number of sockets in the group.
func (g *Group) Len() int { return len(g.socks) }

// Socket returns the socket at index i.
func (g *Group) Socket(i int) *Socket { return g.socks[i] }

// Add creates a sibling of socket 0 (Socket.Sibling: same address and
// options, blocking, close-on-exec) and returns it with its index, the
// group's size before. The caller owns it (Remove or Close it).
func (g *Group) Add() (*Socket, int, error) {
	s, err := g.socks[0].Sibling()
	if err != nil {
		return nil, 0, err
	}
	g.socks = append(g.socks, s)
	return s, len(g.socks) - 1, nil
}

// Remove takes the socket at index i > 0 out of the group and closes it:
// shutdown(2) first, which leaves the group at once even where a worker
// still holds a duplicate (connections still in its accept queue are
// reset, or moved to another socket of the group where
// net.ipv4.tcp_migrate_req is 1: empty it first). The last socket takes
// index i, as in the kernel; the program attached until the next Attach
// was written for the old numbering.
func (g *Group) Remove(i int) error {
	if i <= 0 || i >= len(g.socks) {
		return fmt.Errorf("steer: no socket %d to remove (group of %d, socket 0 stays)", i, len(g.socks))
	}
	err := g.socks[i].Retire()
	last := len(g.socks) - 1
	g.socks[i] = g.socks[last]
	g.socks[last] = nil
	g.socks = g.socks[:last]
	return err
}

// Attach builds s's program and attaches it to the group, replacing the
// one before. s.Weights has one weight per socket, in index order.
func (g *Group) Attach(s Steer) error {
	if len(s.Weights) != len(g.socks) {
		return fmt.Errorf("steer: %d weights for a group of %d sockets", len(s.Weights), len(g.socks))
	}
	prog, err := s.Program()
	if err != nil {
		return err
	}
	fd := g.socks[0].RawFD()
	if fd < 0 {
		return errors.New("steer: the group's first socket is closed")
	}
	return Attach(fd, prog)
}

// Close closes every socket but socket 0, which belongs to the bind.
func (g *Group) Close() {
	for _, s := range g.socks[1:] {
		s.Close()
	}
	g.socks = g.socks[:1]
}

// QueueLen is the accept queue of the socket at index i (QueueLen).
func (g *Group) QueueLen(i int) (int, error) { return QueueLen(g.socks[i].RawFD()) }

// Adopt takes fd, a listening socket this process received (a steered
// group's socket, from the master before an upgrade), as a Socket named
// name that owns fd. It refuses anything else, closing nothing.
func Adopt(fd int, name string) (*Socket, error) {
	if err := listening(fd); err != nil {
		return nil, fmt.Errorf("socket %d of %s %w", fd, name, err)
	}
	unix.CloseOnExec(fd)
	return &Socket{Name: name, Addr: sockname(fd), fd: fd}, nil
}
