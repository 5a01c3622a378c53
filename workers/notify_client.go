package workers

import (
	"fmt"
	"net"
)

// Notify sends state (e.g. "READY=1", or several "KEY=VALUE" lines joined
// by '\n') to the socket named by addr ("@abstract" or a path) in one
// datagram, in the sd_notify wire format. The kernel attaches the caller's
// credentials. An empty addr is a no-op that returns nil, so callers can pass
// os.Getenv("NOTIFY_SOCKET") unchecked. It returns an error when nobody is
// bound at addr or the send fails; like sd_notify it may block while the
// receiver's queue is full.
func Notify(addr, state string) error {
	if addr == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify %s: %w", addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify %s: %w", addr, err)
	}
	return nil
}
