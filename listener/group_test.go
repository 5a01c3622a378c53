package listener

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
)

// TestGroupMirrorsTheKernel: a Group's numbering is the kernel's. After
// three Adds and a Remove of index 1 (the last socket moves into the gap),
// a program that weights one index sends every connection to the socket
// the Group has at that index, for each index in turn.
func TestGroupMirrorsTheKernel(t *testing.T) {
	first := bindFor(t, "127.0.0.1:0", true)
	g, err := NewGroup(first)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for want := 1; want <= 3; want++ {
		if _, i, err := g.Add(); err != nil || i != want {
			t.Fatalf("Add: index %d, %v; want %d", i, err, want)
		}
	}
	was3 := g.Socket(3)
	if err := g.Remove(1); err != nil {
		t.Fatal(err)
	}
	if g.Len() != 3 || g.Socket(1) != was3 {
		t.Fatalf("after Remove(1): %d sockets, index 1 is %p, want 3 and the former last %p", g.Len(), g.Socket(1), was3)
	}
	port := int(netip.MustParseAddrPort(first.Addr).Port())
	fds := make([]int, g.Len())
	for i := range fds {
		fds[i] = g.Socket(i).RawFD()
	}
	for want := range g.Len() {
		w := make([]uint32, g.Len())
		w[want] = 1
		if err := g.Attach(Steer{Weights: w}); err != nil {
			t.Fatal(err)
		}
		for range 5 {
			if got := connectOnce(t, fds, netip.MustParseAddr("127.0.0.1"), port, 0); got != want {
				t.Fatalf("weight on index %d: a connection landed on the Group's socket %d", want, got)
			}
		}
	}
	if err := g.Attach(Steer{Weights: []uint32{1}}); err == nil {
		t.Error("Attach with one weight for three sockets: no error")
	}
	if err := g.Remove(0); err == nil {
		t.Error("Remove(0): no error; socket 0 must stay")
	}
}

// TestNewGroupRefuses: only a listening TCP socket with SO_REUSEPORT can
// be steered; anything else is refused with the reason.
func TestNewGroupRefuses(t *testing.T) {
	plain := bindFor(t, "127.0.0.1:0", false)
	if _, err := NewGroup(plain); err == nil || !strings.Contains(err.Error(), "without SO_REUSEPORT") {
		t.Errorf("NewGroup of a socket without SO_REUSEPORT: %v", err)
	}
	first := bindFor(t, "127.0.0.1:0", true)
	if _, err := NewGroup(first, plain); err == nil {
		t.Error("NewGroup with a socket without SO_REUSEPORT among the others: no error")
	}
}

// TestReusePortBindIsExclusive: binding with SO_REUSEPORT still refuses
// an address another socket listens on, reuseport or not, as a bind
// without it would; the second master of a port fails instead of joining
// the first one's group.
func TestReusePortBindIsExclusive(t *testing.T) {
	for _, reuse := range []bool{true, false} {
		taken := bindFor(t, "127.0.0.1:0", reuse)
		a, err := Parse(taken.Addr)
		if err != nil {
			t.Fatal(err)
		}
		s, err := bindTCP(a, true)
		if err == nil {
			s.Close()
			t.Fatalf("a reuseport bind of %s, taken by a socket with reuseport %v, succeeded", taken.Addr, reuse)
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("bind of a taken address: %v, want EADDRINUSE", err)
		}
	}
	// The dual-stack form of a taken IPv4 port is taken too.
	taken := bindFor(t, "0.0.0.0:0", true)
	a, err := Parse(":" + strings.TrimPrefix(taken.Addr, "0.0.0.0:"))
	if err != nil {
		t.Fatal(err)
	}
	if s, err := bindTCP(a, true); err == nil {
		s.Close()
		t.Errorf("a dual-stack reuseport bind of %s's port succeeded", taken.Addr)
	}
}
