package workers

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// Ready tells the master this worker is ready (READY=1 on NOTIFY_SOCKET).
// Without NOTIFY_SOCKET it does nothing.
func Ready() error { return Notify(os.Getenv("NOTIFY_SOCKET"), "READY=1") }

// Serve serves srv on lns, sends READY=1, and on SIGTERM drains without
// losing an accepted request. It returns nil after a clean drain.
//
// Go's own Shutdown drops a request read after shutdown began (DESIGN §5), so
// the drain runs in this order:
//  1. disable keep-alives, so each connection closes after its response;
//  2. close the listeners: new connections stay in the kernel's shared
//     queue for the other workers;
//  3. wait for every Serve loop to return;
//  4. wait until no connection is new or active (tracked with ConnState);
//  5. Shutdown, which now only closes idle connections.
//
// The master's graceful_timeout bounds the whole drain with SIGKILL.
func Serve(srv *http.Server, lns []net.Listener) error {
	if len(lns) == 0 {
		return errors.New("serve: no listeners (want LISTEN_FDS >= 1)")
	}
	t := newConnTracker(srv.ConnState)
	srv.ConnState = t.track

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	defer signal.Stop(term)

	served := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { served <- srv.Serve(ln) }()
	}
	if err := Ready(); err != nil {
		return err
	}
	running := len(lns)
	select {
	case err := <-served:
		running--
		if !errors.Is(err, http.ErrServerClosed) {
			for _, ln := range lns {
				ln.Close()
			}
			for ; running > 0; running-- {
				<-served
			}
			return err
		}
	case <-term:
	}
	srv.SetKeepAlivesEnabled(false)
	for _, ln := range lns {
		ln.Close()
	}
	for ; running > 0; running-- {
		<-served
	}
	t.waitIdle()
	return srv.Shutdown(context.Background())
}

// connTracker counts connections that are new or active.
type connTracker struct {
	next    func(net.Conn, http.ConnState)
	mu      sync.Mutex
	busy    map[net.Conn]bool // guarded by mu
	changed chan struct{}     // closed and replaced on every change; guarded by mu
}

func newConnTracker(next func(net.Conn, http.ConnState)) *connTracker {
	return &connTracker{next: next, busy: make(map[net.Conn]bool), changed: make(chan struct{})}
}

func (t *connTracker) track(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	if s == http.StateNew || s == http.StateActive {
		t.busy[c] = true
	} else {
		delete(t.busy, c)
	}
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
	if t.next != nil {
		t.next(c, s)
	}
}

// waitIdle blocks until no connection is new or active.
func (t *connTracker) waitIdle() {
	for {
		t.mu.Lock()
		n, ch := len(t.busy), t.changed
		t.mu.Unlock()
		if n == 0 {
			return
		}
		<-ch
	}
}
