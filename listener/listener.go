package listener

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Kind says where a socket comes from.
type Kind int

const (
	KindTCP     Kind = iota + 1 // HOST:PORT, [::1]:PORT, :PORT; bound by the master
	KindUnix                    // unix:/path[?mode=0660]; bound by the master
	KindFD                      // fd://N: a descriptor the supervisor itself inherited
	KindSystemd                 // systemd or systemd:NAME: systemd socket activation
)

// Addr is one parsed --bind value.
type Addr struct {
	Raw     string      // the value as given, e.g. "127.0.0.1:0"; also the default fd name
	Kind    Kind        //
	Network string      // "tcp" or "unix" for KindTCP/KindUnix, "" otherwise
	Address string      // host:port (KindTCP, IP literals normalized) or filesystem path (KindUnix)
	Mode    os.FileMode // KindUnix: permissions from ?mode=, 0 when not given
	FD      int         // KindFD: the descriptor number
	Name    string      // KindSystemd: NAME from systemd:NAME, "" for all passed sockets
	Repeat  int         // N for the Nth repeat of Raw in one ParseAll list (only HOST:0 repeats); else 0
	// Role is "" for a --bind (a socket for the workers), else the flag of
	// a socket the master keeps for itself ("metrics"): it is kept in the
	// Store under Role+":"+Key instead of "listener:"+Key, and errors name
	// --Role.
	Role string
	// ReusePort (KindTCP) binds the socket with SO_REUSEPORT, still
	// refusing an address in use, so that a Group can add sibling sockets
	// to its reuseport group (steering, DESIGN §8). It changes neither
	// Key nor the store's name for the socket.
	ReusePort bool
}

// flag is the command-line flag the address came from, for errors.
func (a Addr) flag() string {
	if a.Role == "" {
		return "--bind"
	}
	return "--" + a.Role
}

// what names the address in bind errors: "bind ADDR" for a --bind,
// "--ROLE ADDR" for the master's own socket.
func (a Addr) what() string {
	if a.Role == "" {
		return "bind " + a.Raw
	}
	return a.flag() + " " + a.Raw
}

// storeKey is the name of the address's socket in a Store.
func (a Addr) storeKey() string {
	if a.Role == "" {
		return "listener:" + a.Key()
	}
	return a.Role + ":" + a.Key()
}

// Key names the bind wherever its socket is kept for reuse: by the master
// across a reload, and (as "listener:"+Key) in the Store across an upgrade.
// It is Raw, plus "#N" for the Nth repeat (Repeat), since a repeated HOST:0
// is a socket of its own each time: "127.0.0.1:0", "127.0.0.1:0#1".
func (a Addr) Key() string {
	if a.Repeat == 0 {
		return a.Raw
	}
	return a.Raw + "#" + strconv.Itoa(a.Repeat)
}

// Store keeps descriptors across a master upgrade; *tableflip.Fds satisfies
// it (its "fd" kind: File/AddFile never change a descriptor's mode).
type Store interface {
	// File returns a duplicate of the inherited descriptor called name, or
	// nil, nil when the previous master passed none.
	File(name string) (*os.File, error)
	// AddFile records a duplicate of f under name for the next master.
	AddFile(name string, f *os.File) error
}

// Socket is one listening socket held by the master for its whole life.
//
// A Socket owns one descriptor: a close-on-exec duplicate for sockets the
// package bound or took from a Store, the inherited number itself for fd://N
// and systemd sockets. The package keeps it as a plain int, never inside an
// *os.File, so nothing (Fd, the runtime poller) ever touches its flags.
type Socket struct {
	// Name is its LISTEN_FDNAMES entry: the systemd name, else Addr.Raw.
	// A Raw value holds ':' ("127.0.0.1:8080"), the separator of that list,
	// so whoever builds LISTEN_FDNAMES must map it (workers.FDName does).
	Name string
	Addr string // the real local address ("127.0.0.1:43567", "/run/app.sock")

	mu        sync.Mutex
	fd        int    // -1 once closed
	unlink    string // KindUnix: path Close removes once nobody listens on it
	inherited bool   // fd://N, systemd or systemd's fd store, not from a Store: Open's cleanup leaves it open
	storeName string // its FDNAME in systemd's fd store (Addr.fdStoreName); "" if never kept there
	fdStored  bool   // adopted from systemd's fd store by that name
}

// FDStoreName returns the name the socket is kept under in systemd's fd
// store (FDNAME=), "" for a socket never kept there (fd://N, systemd's).
func (s *Socket) FDStoreName() string { return s.storeName }

// FromFDStore reports whether Open adopted the socket from systemd's fd
// store (LISTEN_FDS, by its FDStoreName) rather than binding it.
func (s *Socket) FromFDStore() bool { return s.fdStored }

// RawFD returns the descriptor number that workers inherit. It is valid
// until Close (after which it returns -1) and reading it never changes the
// descriptor's flags.
func (s *Socket) RawFD() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fd
}

// Close closes the master's descriptor and, for a unix socket (bound by this
// master or by a previous one and passed through a Store), removes its path
// once no process listens on it any more: a path still served by a new
// master after an upgrade, or by workers, is left in place (checked by
// connecting to it, which leaves an empty connection in that listener's
// queue). It never removes anything that is not a socket. Idempotent: later
// calls return nil.
func (s *Socket) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	if err != nil {
		err = fmt.Errorf("close %s: %w", s.Name, err)
	}
	if s.unlink != "" {
		if _, rerr := ClearStale(s.unlink); rerr != nil && !errors.Is(rerr, errNotSocket) && err == nil {
			err = fmt.Errorf("close %s: %w", s.Name, rerr)
		}
	}
	return err
}

// Listener returns a net.Listener on a duplicate of the socket, for a
// socket the master serves itself (the metrics port), never one passed to
// workers: the runtime's poller makes the socket non-blocking, and that
// flag belongs to the open file description every duplicate shares (a
// worker blocked in accept on it would spin or stall; DESIGN §5). Closing
// the Listener leaves the Socket open.
func (s *Socket) Listener() (net.Listener, error) {
	fd := s.RawFD()
	if fd < 0 {
		return nil, fmt.Errorf("%s: closed", s.Name)
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: dup: %w", s.Name, err)
	}
	f := os.NewFile(uintptr(dup), s.Name)
	defer f.Close()
	return net.FileListener(f)
}

// Retire takes a socket out of service for good, for a bind removed on
// reload: shutdown(2) stops the socket itself (every duplicate, including
// the copy a Store keeps for a master upgrade), so new connections are
// refused instead of queueing for nobody; then Close. Idempotent.
func (s *Socket) Retire() error {
	if fd := s.RawFD(); fd >= 0 {
		_ = unix.Shutdown(fd, unix.SHUT_RDWR)
	}
	return s.Close()
}
