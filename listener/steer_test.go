package listener

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// reuseportGroup makes n plain-TCP listening sockets on one port of addr
// (127.0.0.1 or ::1), non-blocking, in one reuseport group, in join order.
func reuseportGroup(t *testing.T, addr netip.Addr, n int) (fds []int, port int) {
	t.Helper()
	family := unix.AF_INET
	if addr.Is6() {
		family = unix.AF_INET6
	}
	for range n {
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, sockaddr(addr, port)); err != nil {
			if addr.Is6() && errors.Is(err, unix.EADDRNOTAVAIL) {
				t.Skip("no IPv6 loopback here")
			}
			t.Fatal(err)
		}
		if err := unix.Listen(fd, 4096); err != nil {
			t.Fatal(err)
		}
		if port == 0 {
			port = localPort(t, fd)
		}
		fds = append(fds, fd)
	}
	return fds, port
}

// tcpSocket is a new blocking TCP socket of addr's family.
func tcpSocket(t *testing.T, addr netip.Addr) int {
	t.Helper()
	family := unix.AF_INET
	if addr.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func sockaddr(addr netip.Addr, port int) unix.Sockaddr {
	if addr.Is6() {
		return &unix.SockaddrInet6{Port: port, Addr: addr.As16()}
	}
	return &unix.SockaddrInet4{Port: port, Addr: addr.As4()}
}

func localPort(t *testing.T, fd int) int {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return sa.Port
	case *unix.SockaddrInet6:
		return sa.Port
	}
	t.Fatalf("getsockname: %T", sa)
	return 0
}

// connectOnce connects to addr:port (from srcPort if non-zero), and returns
// the index of the listener in fds whose queue the connection landed in,
// found with poll(2), so blocking listeners do too.
// The connection is reset on close, so no TIME_WAIT is left behind.
func connectOnce(t *testing.T, fds []int, addr netip.Addr, port, srcPort int) int {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if srcPort != 0 {
		d.LocalAddr = &net.TCPAddr{IP: addr.AsSlice(), Port: srcPort}
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }); err != nil {
				return err
			}
			return serr
		}
	}
	c, err := d.Dial("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	// The handshake's last ACK may still be on its way to the listener
	// when connect returns: wait (5 s at most) for a queue to hold it.
	pfds := make([]unix.PollFd, len(fds))
	for i, fd := range fds {
		pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		n, err := unix.Poll(pfds, int(time.Until(deadline).Milliseconds()))
		if errors.Is(err, unix.EINTR) && time.Now().Before(deadline) {
			continue // the runtime's preemption signal
		}
		if err != nil || n == 0 {
			t.Fatalf("no listener's queue held the connection within 5s (poll: %d, %v)", n, err)
		}
		break
	}
	landed := -1
	for i, fd := range fds {
		if pfds[i].Revents&unix.POLLIN == 0 {
			continue
		}
		s, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(s)
		if landed >= 0 {
			t.Fatalf("one connection accepted on listeners %d and %d", landed, i)
		}
		landed = i
	}
	if landed < 0 {
		t.Fatal("a connection was in no listener's queue")
	}
	return landed
}

// TestSteerWeightsAgainstTheKernel: the program attached to a real
// reuseport group splits 2,000 connections in proportion to the weights
// (within 5 standard deviations), and a socket of weight 0 gets none.
func TestSteerWeightsAgainstTheKernel(t *testing.T) {
	addr := netip.MustParseAddr("127.0.0.1")
	fds, port := reuseportGroup(t, addr, 3)
	prog, err := Steer{Weights: []uint32{1, 0, 3}}.Program()
	if err != nil {
		t.Fatal(err)
	}
	if err := Attach(fds[1], prog); err != nil { // any member sets the group's program
		t.Fatal(err)
	}
	const n = 2000
	got := make([]int, len(fds))
	for range n {
		got[connectOnce(t, fds, addr, port, 0)]++
	}
	// Binomial: 500 ± 19.4 (p = 1/4) and 1500 ± 19.4.
	t.Logf("accepts by socket: %v", got)
	if got[1] != 0 || got[0] < 500-100 || got[0] > 500+100 || got[0]+got[2] != n {
		t.Errorf("accepts by socket %v: want about [500 0 1500]", got)
	}
}

// TestSteerProbePort: a connection from the probe port lands on the probe
// index, though that socket has no weight, over IPv4 and IPv6 (where the
// TCP header starts 40 bytes in, not 20), and over both on a dual-stack
// group ([::]), which gets packets of either version.
func TestSteerProbePort(t *testing.T) {
	for _, c := range []struct{ bind, client string }{
		{"127.0.0.1", "127.0.0.1"}, {"::1", "::1"}, {"::", "127.0.0.1"}, {"::", "::1"},
	} {
		t.Run(c.bind+" from "+c.client, func(t *testing.T) {
			addr := netip.MustParseAddr(c.client)
			fds, port := reuseportGroup(t, netip.MustParseAddr(c.bind), 2)
			probe := probePort(t, addr)
			prog, err := Steer{Weights: []uint32{1, 0}, ProbePort: uint16(probe), ProbeIndex: 1}.Program()
			if err != nil {
				t.Fatal(err)
			}
			if err := Attach(fds[0], prog); err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				if got := connectOnce(t, fds, addr, port, probe); got != 1 {
					t.Fatalf("probe %d landed on socket %d, want 1", i, got)
				}
				if got := connectOnce(t, fds, addr, port, 0); got != 0 {
					t.Fatalf("connection %d (not the probe port) landed on socket %d, want 0", i, got)
				}
			}
		})
	}
}

// probePort finds a source port that is free now.
func probePort(t *testing.T, addr netip.Addr) int {
	t.Helper()
	fd := tcpSocket(t, addr)
	defer unix.Close(fd)
	if err := unix.Bind(fd, sockaddr(addr, 0)); err != nil {
		t.Fatal(err)
	}
	return localPort(t, fd)
}

func TestSteerProgramErrors(t *testing.T) {
	for _, c := range []struct {
		s    Steer
		want string
	}{
		{Steer{}, "no socket has a weight"},
		{Steer{Weights: []uint32{0, 0}}, "no socket has a weight"},
		{Steer{Weights: make([]uint32, maxSteerSockets+1)}, "sockets, at most"},
		{Steer{Weights: []uint32{1 << 31, 1 << 31}}, "at most 2^31"},
	} {
		if c.s.Weights != nil && len(c.s.Weights) > 2 {
			c.s.Weights[0] = 1
		}
		_, err := c.s.Program()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%d weights: error %v, want one containing %q", len(c.s.Weights), err, c.want)
		}
	}
}

// TestQueueLen: the accept queue of a real listener, as connections arrive
// and are accepted; a socket that is not listening is an error.
func TestQueueLen(t *testing.T) {
	addr := netip.MustParseAddr("127.0.0.1")
	fds, port := reuseportGroup(t, addr, 1)
	want := func(n int) {
		t.Helper()
		if got, err := QueueLen(fds[0]); err != nil || got != n {
			t.Fatalf("QueueLen = %d, %v; want %d", got, err, n)
		}
	}
	want(0)
	for range 3 {
		c, err := net.Dial("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// Each connection is queued once the handshake's last ACK is in.
	testkit.WaitFor(t, 5*time.Second, "3 connections in the queue", func() bool {
		n, err := QueueLen(fds[0])
		return err == nil && n == 3
	})
	s, _, err := unix.Accept4(fds[0], unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	want(2)
	if _, err := QueueLen(s); err == nil || !strings.Contains(err.Error(), "not a listening") {
		t.Errorf("QueueLen of an accepted connection: %v, want an error", err)
	}
	unix.Close(s)
}
