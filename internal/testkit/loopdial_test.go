package testkit_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// TestDialLoopbackSpreadsSourceAddresses: connections to 127.0.0.1 come
// from different source addresses, none of them 127.0.0.1, each port left
// to connect(2); a connection elsewhere is dialed as it would be.
func TestDialLoopbackSpreadsSourceAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	seen := map[string]bool{}
	for range 3 {
		c, err := testkit.DialLoopback(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		local := c.LocalAddr().(*net.TCPAddr)
		if got := s.RemoteAddr().(*net.TCPAddr); !got.IP.Equal(local.IP) || got.Port != local.Port {
			t.Errorf("the server sees %v, the client is %v", got, local)
		}
		if local.IP.Equal(net.IPv4(127, 0, 0, 1)) || !local.IP.IsLoopback() || local.Port == 0 {
			t.Errorf("source address %v: want another loopback address than 127.0.0.1, with a port", local)
		}
		seen[local.IP.String()] = true
		c.Close()
		s.Close()
	}
	if len(seen) != 3 {
		t.Errorf("3 connections came from %d source addresses (%v): want 3", len(seen), seen)
	}

	ln6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	defer ln6.Close()
	c, err := testkit.DialLoopback(ctx, "tcp", ln6.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ip := c.LocalAddr().(*net.TCPAddr).IP; !ip.Equal(net.IPv6loopback) {
		t.Errorf("a connection to [::1] came from %v", ip)
	}
}
