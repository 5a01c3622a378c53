package testkit

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Load loops that open a new connection per request to 127.0.0.1 run out
// of the client's ephemeral ports: each closed connection holds its port
// in TIME_WAIT for 60 s, and with 28,232 ports (32768-60999) and 1,000
// connections a second the kernel's search for a free port starts to burn
// whole CPUs after about 15 s (measured here: the load generator went from
// half a CPU to two, and starved the workers it was measuring). The
// 4-tuple, not the port alone, must be unique, so DialLoopback takes each
// connection's source address in turn from 127.0.0.2-127.0.0.254 (all of
// 127/8 is the loopback) and leaves the port to connect(2)
// (IP_BIND_ADDRESS_NO_PORT): 253 times the room, and a connection still
// closes with FIN as before.

// loopSources is the number of source addresses DialLoopback cycles through.
const loopSources = 253

var loopNext atomic.Uint32

// DialLoopback dials like net.Dialer.DialContext; a TCP connection to
// 127.0.0.1 gets the next source address of 127.0.0.2-127.0.0.254.
func DialLoopback(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{}
	if host, _, err := net.SplitHostPort(addr); err == nil && host == "127.0.0.1" && (network == "tcp" || network == "tcp4") {
		n := loopNext.Add(1) % loopSources
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+n))}
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return d.DialContext(ctx, network, addr)
}

// Client is an HTTP client that opens a new connection per request through
// DialLoopback, each request bounded by timeout.
func Client(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true, DialContext: DialLoopback}}
}
