// Package listener owns the master's listening sockets and nothing else: it
// parses --bind addresses, binds them (or inherits them from systemd socket
// activation, an fd number, systemd's fd store after a crash, or the
// previous master across an upgrade through a tableflip-style Store), and
// hands out their raw descriptors in a stable order for workers to inherit
// as fds 3, 4, ...
//
// Contract with the rest of the supervisor (DESIGN §5):
//   - TCP sockets are plain TCP, never Go's default MPTCP.
//   - Every socket the package creates is put in blocking mode once, at bind
//     time, before any worker exists; after that the package never changes
//     the file status flags of the shared open file description: it never
//     calls (*os.File).Fd, net.FileListener or anything that does, and keeps
//     descriptors as plain ints, out of the runtime poller.
//   - Inherited sockets (systemd, fd://N, a Store) are used as they come.
//   - Every descriptor the master holds is close-on-exec: workers get theirs
//     by an explicit dup2 when they are spawned, never by leaking.
//
// Across a master upgrade every socket, including fd://N and systemd ones
// (the new master has neither that fd nor LISTEN_PID), goes through the
// Store under keys "listener:"+Addr.Key() (see Open). Systemd names travel
// in a small memfd beside them. The Store cannot forget a key, so a socket
// closed on reload still reaches the next master, which drops it unused
// (tableflip closes unused inherited files after Ready). At the end of the
// last master, close the Store first (tableflip: Stop, then wait for Exit)
// and the Sockets after it; a unix path still open in the Store is left in
// place, and the next start removes it as stale.
//
// Across a master crash, under systemd with FileDescriptorStoreMax=, the
// TCP and unix sockets (the master's own included) go through systemd's fd
// store instead: FDStore sends each one (FDSTORE=1) under a name made from
// its Store key ("listener_127.0.0.1_8080"), and Open adopts a passed
// socket of that name for its bind after a restart. Those names belong to
// the master: "systemd" binds never take such a socket, and
// ReleaseUnclaimed closes the ones no bind of the new config claims.
//
// Linux only (SO_ACCEPTCONN, SO_PROTOCOL, memfd).
//
// ClearStale is the one check for a unix socket path left by a process that
// died (used for --bind unix:, the control socket and the notify socket).
//
// Inherited is the app side: a Go worker turns its fds 3.. into listeners.
package listener
