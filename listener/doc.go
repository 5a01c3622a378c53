// Package listener owns the master's listening sockets and nothing else: it
// parses --bind addresses, binds them (or inherits them from systemd socket
// activation, an fd number, or the previous master across an upgrade through
// a tableflip-style Store), and hands out their raw descriptors in a stable
// order for workers to inherit as fds 3, 4, ...
//
// Contract with the rest of the supervisor (DESIGN §5):
//   - TCP sockets are plain TCP, never Go's default MPTCP.
//   - Every socket the package creates is put in blocking mode once, at bind
//     time, before any worker exists; after that the package never changes
//     the file status flags of the shared open file description: it never
//     calls (*os.File).Fd, net.FileListener or anything that does.
//   - Inherited sockets (systemd, fd://N, a Store) are used as they come.
//
// Inherited is the app side: a Go worker turns its fds 3.. into listeners.
package listener
