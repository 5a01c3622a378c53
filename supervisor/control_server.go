package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The control protocol: a client connects to the control socket, writes one
// JSON Request, and reads one JSON Response; then both sides close.

const (
	controlMaxRequest   = 64 << 10        // bytes; a Request is well under 1 KiB
	controlMaxResponse  = 16 << 20        // bytes; a status of thousands of workers fits
	controlReadTimeout  = 5 * time.Second // for the client to send its request
	controlWriteTimeout = 5 * time.Second // for the client to take the answer
	controlAcceptMax    = 1 * time.Second // accept error backoff cap (EMFILE)
)

// ControlServer is the master's end of the control socket. Serve hands each
// request to the master's loop as a Call; Close ends everything.
type ControlServer struct {
	path string
	ln   *net.UnixListener
	uid  int           // the master's euid: allowed besides root
	file os.FileInfo   // the socket file as bound, to remove only our own
	done chan struct{} // closed by Close

	wg sync.WaitGroup // the accept loop and every connection

	metrics *Metrics    // counts requests when set (Count); nil: not counted
	log     *zap.Logger // says when accepting fails and recovers (SetLog); nil: silent

	mu      sync.Mutex // guards the fields below
	serving bool
	closed  bool
	unlink  bool
	paused  chan struct{} // non-nil while paused; closed by Resume
	conns   map[*net.UnixConn]struct{}
}

// NewControlServer adopts ln, already listening at path (for example
// inherited from the previous master through tableflip), as a control
// server. Close removes path only when it is still the file that was there
// when NewControlServer was called.
func NewControlServer(ln *net.UnixListener, path string) *ControlServer {
	ln.SetUnlinkOnClose(false) // Close decides, by inode
	s := &ControlServer{path: path, ln: ln, uid: os.Geteuid(), done: make(chan struct{}),
		unlink: true, conns: make(map[*net.UnixConn]struct{})}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
		s.file = fi
	}
	return s
}

// Path is where the socket is.
func (s *ControlServer) Path() string { return s.path }

// Listener is the listening socket, to hand to a new master in an upgrade
// (with SetUnlinkOnClose(false), so this master's Close leaves the file).
func (s *ControlServer) Listener() *net.UnixListener { return s.ln }

// SetUnlinkOnClose sets whether Close removes the socket file (default
// true; false once the socket was handed to a new master).
func (s *ControlServer) SetUnlinkOnClose(unlink bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unlink = unlink
}

// Count makes the server count every request it answers in m
// (supervisor_control_requests_total). Call it before Serve.
func (s *ControlServer) Count(m *Metrics) { s.metrics = m }

// SetLog makes the server log, once each, when it cannot accept
// connections (EMFILE: the master's open-file limit) and when it accepts
// again. Call it before Serve.
func (s *ControlServer) SetLog(log *zap.Logger) { s.log = log }

// Serve starts answering connections in the background and returns at once.
// For each connection it checks the peer's credentials (root or the
// master's own euid), reads one Request (at most 64 KiB, within 5 s),
// rejects a malformed one itself, sends the rest on calls as a Call and
// writes back the loop's answer, however long the loop takes (a reload
// with Wait may take minutes). A status answer gets each worker's RSS
// here, off the loop. The loop must answer every Call it receives,
// once, on Call.Reply. Serve may be called once; after Close it does
// nothing.
func (s *ControlServer) Serve(calls chan<- Call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serving {
		panic("supervisor: ControlServer.Serve called twice")
	}
	s.serving = true
	if s.closed {
		return
	}
	s.wg.Add(1)
	go s.accept(calls)
}

// Close stops the server, in order: stop accepting; cut short every
// request still being read; answer every connection still waiting for the
// loop with "the master is shutting down" (an answer already given by the
// loop still wins); wait for every goroutine (at most controlWriteTimeout
// for a client that does not take its answer); remove the socket file if it
// is still the one this server bound. Close is idempotent; it returns the
// error of closing the listener or of removing the file.
func (s *ControlServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	close(s.done)
	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	for c := range s.conns {
		_ = c.SetReadDeadline(time.Unix(1, 0)) // unblocks the read at once
	}
	unlink := s.unlink
	s.mu.Unlock()
	s.wg.Wait()
	if unlink && s.file != nil {
		if fi, serr := os.Lstat(s.path); serr == nil && os.SameFile(fi, s.file) {
			if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
	}
	return err
}

// Pause stops accepting connections until Resume, for a master upgrade:
// from the commit the new master accepts on the same socket, and clients
// that connect meanwhile wait in its queue, never refused. Connections
// already accepted are still answered here. Pausing twice is pausing once.
func (s *ControlServer) Pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paused == nil {
		s.paused = make(chan struct{})
		_ = s.ln.SetDeadline(time.Unix(1, 0)) // wakes the accept loop
	}
}

// Resume accepts again after Pause (the new master of an upgrade died
// after the commit, and this master takes its pool back).
func (s *ControlServer) Resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paused != nil {
		_ = s.ln.SetDeadline(time.Time{}) // before the accept loop wakes
		close(s.paused)
		s.paused = nil
	}
}

// pausedUntil is the channel Resume closes, or nil when not paused.
func (s *ControlServer) pausedUntil() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused
}

func (s *ControlServer) accept(calls chan<- Call) {
	defer s.wg.Done()
	var delay time.Duration
	failed := 0 // accept errors since the last connection accepted
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if resume := s.pausedUntil(); resume != nil {
				select {
				case <-s.done:
					return
				case <-resume:
				}
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue // a Pause that Resume undid before this turn
			}
			// EMFILE and the like: back off as net/http does, and say
			// so once: clients wait in the socket's queue meanwhile.
			if failed++; failed == 1 && s.log != nil {
				s.log.Warn("control socket: cannot accept connections; retrying", zap.String("path", s.path),
					zap.Error(fmt.Errorf("%w%s", errnoOf(err), limitHint(err))))
			}
			delay = min(max(2*delay, 5*time.Millisecond), controlAcceptMax)
			select {
			case <-s.done:
				return
			case <-time.After(delay):
			}
			continue
		}
		if failed > 0 && s.log != nil {
			s.log.Info("control socket: accepting connections again", zap.String("path", s.path), zap.Int("failed_accepts", failed))
		}
		delay, failed = 0, 0
		// Set before the connection is tracked, so Close's deadline wins.
		_ = conn.SetReadDeadline(time.Now().Add(controlReadTimeout))
		if !s.track(conn) {
			conn.Close()
			return
		}
		go s.handle(conn, calls)
	}
}

// track registers conn for Close; false once closed.
func (s *ControlServer) track(conn *net.UnixConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *ControlServer) handle(conn *net.UnixConn, calls chan<- Call) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		conn.Close()
	}()
	req, resp, fromLoop := s.answer(conn, calls)
	if resp.Status != nil {
		// Memory is read here, off the loop: /proc walks cost
		// milliseconds with hundreds of workers.
		st := withRSS(*resp.Status, workers.GroupRSS(poolPids(resp.Status.Pool)))
		resp.Status = &st
	}
	if s.metrics != nil {
		result := "rejected"
		switch {
		case resp.OK:
			result = "ok"
		case fromLoop:
			result = "error"
		}
		s.metrics.controlRequest(req.Command, result)
	}
	_ = conn.SetWriteDeadline(time.Now().Add(controlWriteTimeout))
	_ = json.NewEncoder(conn).Encode(resp)
}

// answer reads the one request on conn and returns it with its Response;
// fromLoop says the loop gave the answer (rather than the server refusing
// the request, or answering for a loop that stopped).
func (s *ControlServer) answer(conn *net.UnixConn, calls chan<- Call) (req Request, resp Response, fromLoop bool) {
	cred, err := peerCred(conn)
	if err != nil {
		return req, Response{Error: "cannot check the client's credentials: " + err.Error()}, false
	}
	if uid := int(cred.Uid); uid != 0 && uid != s.uid {
		// Take the request anyway (bounded by the read deadline), so
		// closing with unread data does not reset the client's read.
		_, _ = io.Copy(io.Discard, io.LimitReader(conn, controlMaxRequest))
		return req, Response{Error: fmt.Sprintf("permission denied: uid %d is neither root nor the master's user", uid)}, false
	}
	req, err = readRequest(conn)
	if err != nil && s.closing() {
		return req, Response{Error: "the master is shutting down"}, false
	}
	if err != nil {
		return req, Response{Error: "bad request: " + err.Error()}, false
	}
	call := Call{Request: req, Reply: make(chan Response, 1)}
	select {
	case calls <- call:
	case <-s.done:
		return req, Response{Error: "the master is shutting down"}, false
	}
	select {
	case r := <-call.Reply:
		return req, r, true
	case <-s.done:
		select {
		case r := <-call.Reply:
			return req, r, true
		default:
			return req, Response{Error: "the master is shutting down; no answer to " + req.Command}, false
		}
	}
}

func poolPids(pool []WorkerInfo) []int {
	pids := make([]int, len(pool))
	for i, w := range pool {
		pids[i] = w.Pid
	}
	return pids
}

func (s *ControlServer) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// peerCred is the SO_PEERCRED of conn, an accepted connection: the client
// process.
func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}

// readRequest reads and checks one Request: a command in the commands
// table whose check passes (checkCommand), and a timeout that parses.
func readRequest(r io.Reader) (Request, error) {
	lr := &io.LimitedReader{R: r, N: controlMaxRequest + 1}
	var req Request
	if err := json.NewDecoder(lr).Decode(&req); err != nil {
		switch {
		case lr.N <= 0:
			return req, fmt.Errorf("larger than %d KiB", controlMaxRequest>>10)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return req, fmt.Errorf("no request within %s", controlReadTimeout)
		case errors.Is(err, io.EOF):
			return req, errors.New("empty request")
		}
		return req, fmt.Errorf("not a JSON request: %w", err)
	}
	if err := checkCommand(req); err != nil {
		return req, err
	}
	if req.Timeout != "" {
		if d, err := time.ParseDuration(req.Timeout); err != nil || d < 0 {
			return req, fmt.Errorf("timeout %q: want a duration like 5m", req.Timeout)
		}
	}
	return req, nil
}
