package workers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/supervisor-dev/supervisor/listener"
)

// Ready tells the master this worker is ready (READY=1 on NOTIFY_SOCKET).
// Without NOTIFY_SOCKET it does nothing. Serve sends READY=1 itself.
func Ready() error { return Notify(os.Getenv("NOTIFY_SOCKET"), "READY=1") }

// Listeners returns the sockets this worker serves on. Under the supervisor
// (or systemd socket activation) they are the inherited fds 3.. in order
// (LISTEN_FDS, for this process by LISTEN_PID; the variables are then
// unset). When nothing was passed to this process it listens on ":$PORT"
// (PORT unset: 8080), plain TCP (not Go's default MPTCP), so the same app
// runs standalone. It returns an error for malformed LISTEN_* variables, an
// inherited fd that is not a listening socket, or a failed listen; then no
// listener is left open. Call it once.
func Listeners() ([]net.Listener, error) {
	lns, _, err := listener.Inherited()
	if err != nil || len(lns) > 0 {
		return lns, err
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	addr := standaloneAddr(os.Getenv)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("no inherited sockets (LISTEN_FDS unset), so listen on $PORT: %w", err)
	}
	return []net.Listener{ln}, nil
}

// standaloneAddr is ":$PORT", or ":8080" without PORT.
func standaloneAddr(getenv func(string) string) string {
	if p := getenv("PORT"); p != "" {
		return ":" + p
	}
	return ":8080"
}

// Serve serves srv on lns (from Listeners) until SIGTERM, speaking the
// worker protocol on NOTIFY_SOCKET, and drains without losing an accepted
// request. It blocks, and returns nil after a clean drain.
//
// While serving it sends READY=1 right after starting one srv.Serve
// goroutine per listener, without waiting for them to reach Accept: the
// listeners are already open and the kernel queues connections on them, so
// one that arrives first waits for its Accept and none is lost. It also
// sends WATCHDOG=1 every WATCHDOG_USEC/2 when WATCHDOG_USEC is set (and
// WATCHDOG_PID is unset or this process), until it returns; and
// X_REQUESTS=N, the requests that reached the handler so far, at most every
// 250ms and only when N changed. It wraps srv.Handler (nil:
// http.DefaultServeMux) to count requests and srv.ConnState to track
// connections; both still call the originals. Without NOTIFY_SOCKET it
// sends nothing. A failed send is not fatal: the first one is logged to
// stderr, later ones are not.
//
// On SIGTERM it sends STOPPING=1 and drains. Go's own Shutdown drops a
// request read after shutdown began (DESIGN §5), so the drain runs in this
// order:
//  1. disable keep-alives, so each connection closes after its response;
//  2. close the listeners: new connections stay in the kernel's shared
//     queue for the other workers;
//  3. wait for every Serve loop to return;
//  4. wait until no connection is new or active (tracked with ConnState);
//  5. Shutdown, which now only closes idle connections;
//  6. send the final X_REQUESTS=N (always, even if unchanged).
//
// There is no deadline of its own: the master's graceful_timeout bounds the
// drain with SIGKILL. A client that connects and never sends holds step 4
// until then, so set srv.ReadHeaderTimeout. Hijacked connections are not
// waited for (see http.Server.RegisterOnShutdown). If a Serve loop fails
// (not http.ErrServerClosed), Serve drains the same way and returns that
// error. Every goroutine Serve starts has ended when it returns. Call it
// once per srv; lns must not be empty.
func Serve(srv *http.Server, lns []net.Listener) error {
	if len(lns) == 0 {
		return errors.New("serve: no listeners (want LISTEN_FDS >= 1, or use Listeners)")
	}
	n := &notifier{addr: os.Getenv("NOTIFY_SOCKET")}
	var requests atomic.Int64
	srv.Handler = countRequests(srv.Handler, &requests)
	t := newConnTracker(srv.ConnState)
	srv.ConnState = t.track

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	defer signal.Stop(term)

	served := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { served <- srv.Serve(ln) }()
	}
	n.send("READY=1")
	stopReports := n.startReports(watchdogInterval(os.Getenv, os.Getpid()), &requests)

	var serveErr error
	running := len(lns)
	select {
	case err := <-served:
		running--
		if !errors.Is(err, http.ErrServerClosed) {
			serveErr = fmt.Errorf("serve %s: %w", lns[0].Addr(), err)
		}
	case <-term:
	}
	n.send("STOPPING=1")
	srv.SetKeepAlivesEnabled(false)
	for _, ln := range lns {
		ln.Close()
	}
	for ; running > 0; running-- {
		<-served
	}
	t.waitIdle()
	err := srv.Shutdown(context.Background())
	stopReports()
	n.send("X_REQUESTS=" + strconv.FormatInt(requests.Load(), 10))
	return errors.Join(serveErr, err)
}

// countRequests wraps h (nil: http.DefaultServeMux) to add one to n per
// request, as it reaches the handler.
func countRequests(h http.Handler, n *atomic.Int64) http.Handler {
	if h == nil {
		h = http.DefaultServeMux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.UserAgent() != ProbeUserAgent { // the master's canary probe is no traffic
			n.Add(1)
		}
		h.ServeHTTP(w, r)
	})
}

// ProbeUserAgent is the User-Agent of the master's canary probe
// (canary_probe); Serve does not count its requests in X_REQUESTS.
const ProbeUserAgent = "supervisor-canary-probe"

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
