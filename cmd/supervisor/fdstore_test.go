package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/workers"
	"golang.org/x/sys/unix"
)

// fakeSystemd is the test's systemd: the NOTIFY_SOCKET of the masters it
// starts, receiving their datagrams and the descriptors they pass.
type fakeSystemd struct {
	addr string
	got  chan datagram
}

// datagram is one notify message and the descriptors that came with it
// (close-on-exec: ReadMsgUnix asks for it). They are kept as plain ints:
// (*os.File).Fd would make the master's own metrics socket blocking under
// its HTTP server (DESIGN §5).
type datagram struct {
	text string
	fds  []int
}

var fakeSystemds atomic.Int64

// newFakeSystemd listens on an abstract unixgram address until the test
// ends; a goroutine reads it, so a master never waits on the test.
func newFakeSystemd(t *testing.T) *fakeSystemd {
	t.Helper()
	addr := fmt.Sprintf("@supervisor-test-fdstore/%d/%d", os.Getpid(), fakeSystemds.Add(1))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSystemd{addr: addr, got: make(chan datagram, 256)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(f.got)
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4*16))
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			d := datagram{text: string(buf[:n])}
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				fds, _ := unix.ParseUnixRights(&m)
				d.fds = append(d.fds, fds...)
			}
			f.got <- d
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
		for d := range f.got {
			d.close()
		}
	})
	return f
}

func (d datagram) close() {
	for _, fd := range d.fds {
		unix.Close(fd)
	}
}

// until returns every datagram up to and including the first that holds
// the line want, waiting at most 30s for each.
func (f *fakeSystemd) until(t *testing.T, want string) []datagram {
	t.Helper()
	var out []datagram
	for {
		d := testkit.Recv(t, f.got, 30*time.Second, want+" from the master")
		t.Cleanup(d.close)
		out = append(out, d)
		if slices.Contains(strings.Split(d.text, "\n"), want) {
			return out
		}
	}
}

// stored is one socket the master pushed to the fd store.
type stored struct {
	name string
	fd   int // the test's copy, closed when the test ends
}

// storedSockets picks the FDSTORE=1 datagrams out of ds, in order; each
// must carry one descriptor, of a listening socket.
func storedSockets(t *testing.T, ds []datagram) []stored {
	t.Helper()
	var out []stored
	for _, d := range ds {
		name, ok := strings.CutPrefix(d.text, "FDSTORE=1\nFDNAME=")
		if !ok {
			continue
		}
		if len(d.fds) != 1 || strings.Contains(name, "\n") {
			t.Fatalf("fd store datagram %q with %d descriptors, want FDSTORE=1, FDNAME= and one", d.text, len(d.fds))
		}
		if v, err := unix.GetsockoptInt(d.fds[0], unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
			t.Fatalf("%s: the descriptor is not a listening socket (%d, %v)", name, v, err)
		}
		out = append(out, stored{name, d.fds[0]})
	}
	return out
}

// restartCommand is what systemd does after a crash: the master again,
// with the stored sockets as fds 3.. and LISTEN_FDS, LISTEN_FDNAMES and
// LISTEN_PID (set to the new process's pid by the exec shim, which Go
// cannot do between fork and exec).
func restartCommand(t *testing.T, sd *fakeSystemd, socks []stored, args ...string) *exec.Cmd {
	t.Helper()
	cmd := command(t, append([]string{workers.ShimArg, self(t), "supervisor", "run"}, args...)...)
	var names []string
	for _, s := range socks {
		names = append(names, s.name)
		// ExtraFiles calls Fd, which makes a descriptor blocking: fine for
		// duplicates of the test's copies with no master running (a bind is
		// blocking already; the crash test checks its flags stay as they
		// were). Never in the master (DESIGN §5).
		dup, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(dup), s.name)
		t.Cleanup(func() { f.Close() })
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+sd.addr, "FDSTORE=8",
		fmt.Sprintf("LISTEN_FDS=%d", len(socks)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	return cmd
}

// logs returns every JSON log line of the output with this msg.
func (p *proc) logs(msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == msg {
			out = append(out, line)
		}
	}
	return out
}

func getfl(t *testing.T, fd int) int {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fl
}

// restartSec stands for the unit's RestartSec=: how long the test, as
// systemd, waits after the crash before it starts the master again.
const restartSec = 500 * time.Millisecond

// Under systemd's fd store the sockets outlive a master killed under load:
// the master pushes each one, the test (as systemd) starts it again with
// them in LISTEN_FDS, the new master adopts them by name on the same
// ports, and no connection is refused meanwhile: those that arrive wait
// in the queue for the new workers. Requests the killed workers had
// already accepted are lost with them; they are counted apart.
func TestFDStoreKeepsSocketsAcrossAMasterCrash(t *testing.T) {
	sd := newFakeSystemd(t)
	args := []string{"--bind", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--workers", "4", "--", self(t), "example-app"}
	cmd := command(t, args...)
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+sd.addr, "FDSTORE=8")
	p := startCmd(t, cmd)
	socks := storedSockets(t, sd.until(t, "READY=1"))
	addr := p.ready()
	metricsAddr, _ := p.waitLog("metrics listening", time.Second)["address"].(string)
	if len(socks) != 2 || socks[0].name != "metrics_127.0.0.1_0" || socks[1].name != "listener_127.0.0.1_0" {
		t.Fatalf("stored %v, want metrics_127.0.0.1_0 then listener_127.0.0.1_0", socks)
	}
	for i, want := range []string{metricsAddr, addr} {
		sa, err := unix.Getsockname(socks[i].fd)
		if err != nil {
			t.Fatal(err)
		}
		if got := sockaddrString(sa); got != want {
			t.Errorf("stored %s is bound to %s, want the master's %s", socks[i].name, got, want)
		}
	}
	flags := getfl(t, socks[1].fd)

	old := children(p.cmd.Process.Pid)
	l := startCrashLoad(addr, 8, old)
	defer l.stop()
	testkit.WaitFor(t, 30*time.Second, "100 requests served before the crash", func() bool { return l.count(okResult) >= 100 })

	l.kill()
	p.signal(syscall.SIGKILL)
	p.wait(5 * time.Second)
	// Once the killed workers are gone, a request in flight can only be
	// waiting in the socket's queue (refused or reset, it would end at
	// once): wait until every client has one.
	testkit.WaitFor(t, 10*time.Second, "a request of every client waiting with no master nor worker", func() bool {
		return !slices.ContainsFunc(old, testkit.Alive) && l.inFlight.Load() == 8
	})
	l.workersGone()
	// systemd waits RestartSec= before it starts the service again (1s in
	// the example unit); connections keep arriving meanwhile.
	<-time.After(restartSec)
	noMasterFor := time.Since(l.killedAt)

	p2 := startCmd(t, restartCommand(t, sd, socks, args...))
	again := storedSockets(t, sd.until(t, "READY=1"))
	if addr2 := p2.ready(); addr2 != addr {
		t.Errorf("restarted master listens on %s, want %s again", addr2, addr)
	}
	if m, _ := p2.waitLog("metrics listening", time.Second)["address"].(string); m != metricsAddr {
		t.Errorf("restarted master's metrics on %s, want %s again", m, metricsAddr)
	}
	adopted := map[string]string{}
	for _, line := range p2.logs("adopted from systemd's fd store") {
		adopted[fmt.Sprint(line["fdname"])] = fmt.Sprint(line["address"])
	}
	if want := map[string]string{"metrics_127.0.0.1_0": metricsAddr, "listener_127.0.0.1_0": addr}; fmt.Sprint(adopted) != fmt.Sprint(want) {
		t.Errorf("adopted (log) %v, want %v", adopted, want)
	}
	if len(again) != 2 {
		t.Errorf("restarted master stored %d sockets, want both again (systemd keeps one copy)", len(again))
	}

	testkit.WaitFor(t, 30*time.Second, "200 requests served by the new workers", func() bool { return l.newOK.Load() >= 200 })
	l.stop()
	for i := range 20 {
		if _, err := get("http://" + addr + "/"); err != nil {
			t.Fatalf("request %d after the restart: %v", i, err)
		}
	}
	if got := getfl(t, socks[1].fd); got != flags {
		t.Errorf("the bind's F_GETFL %#x after the crash and restart, want %#x unchanged", got, flags)
	}

	r := l.report()
	t.Logf("no master for %s (SIGKILL to restart); SIGKILL to the first answer of a new worker: %s", noMasterFor.Round(time.Millisecond), r.gap.Round(time.Millisecond))
	t.Logf("requests: %d in all, %d answered (%d by the new workers, %d of them sent before the first new answer: they waited in the queue), %d reset or cut off by the killed workers, %d refused, %d other errors",
		r.total, r.ok, r.okAfter, r.queued, r.reset, r.refused, r.other)
	if r.refused != 0 || r.other != 0 {
		t.Errorf("%d requests refused, %d other errors (first: %v); want none", r.refused, r.other, r.firstErr)
	}
	if r.queued < 8 {
		t.Errorf("%d requests waited in the queue and were answered, want every client's (8)", r.queued)
	}
	p2.signal(syscall.SIGTERM)
	p2.wait(30 * time.Second)
}

// A bind removed from the config while no master ran is released: the new
// master shuts its stored socket down, closes it and tells systemd to
// forget its name (FDSTOREREMOVE=1); the bind it keeps it adopts.
func TestFDStoreReleasesARemovedBind(t *testing.T) {
	sd := newFakeSystemd(t)
	app := []string{"--workers", "1", "--", self(t), "example-app"}
	cmd := command(t, append([]string{"--bind", "127.0.0.1:0", "--bind", "127.0.0.1:0"}, app...)...)
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+sd.addr, "FDSTORE=8")
	p := startCmd(t, cmd)
	socks := storedSockets(t, sd.until(t, "READY=1"))
	p.ready()
	if len(socks) != 2 || socks[0].name != "listener_127.0.0.1_0" || socks[1].name != "listener_127.0.0.1_0#1" {
		t.Fatalf("stored %v, want listener_127.0.0.1_0 and listener_127.0.0.1_0#1", socks)
	}
	var addrs, inodes [2]string
	for i, s := range socks {
		sa, err := unix.Getsockname(s.fd)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(s.fd, &st); err != nil {
			t.Fatal(err)
		}
		addrs[i], inodes[i] = sockaddrString(sa), fmt.Sprintf("socket:[%d]", st.Ino)
	}
	p.signal(syscall.SIGKILL)
	p.wait(5 * time.Second)

	p2 := startCmd(t, restartCommand(t, sd, socks, append([]string{"--bind", "127.0.0.1:0"}, app...)...))
	ds := sd.until(t, "READY=1")
	if addr := p2.ready(); addr != addrs[0] {
		t.Errorf("kept bind on %s, want %s", addr, addrs[0])
	}
	var removes []string
	for _, d := range ds {
		if name, ok := strings.CutPrefix(d.text, "FDSTOREREMOVE=1\nFDNAME="); ok {
			removes = append(removes, name)
		}
	}
	if !slices.Equal(removes, []string{"listener_127.0.0.1_0#1"}) {
		t.Errorf("FDSTOREREMOVE of %q, want listener_127.0.0.1_0#1 alone", removes)
	}
	if line := p2.findLog("released a socket from systemd's fd store: no bind of the config claims it"); line == nil || line["fdname"] != "listener_127.0.0.1_0#1" {
		t.Errorf("release log line %v, want one for listener_127.0.0.1_0#1", line)
	}
	fds := openFDs(t, p2.cmd.Process.Pid)
	held := map[string]bool{}
	for _, target := range fds {
		held[target] = true
	}
	if !held[inodes[0]] || held[inodes[1]] {
		t.Errorf("restarted master holds kept %s: %v, removed %s: %v; want only the kept one", inodes[0], held[inodes[0]], inodes[1], held[inodes[1]])
	}
	// Shut down, not only closed: the test's own copy no longer queues.
	if c, err := net.DialTimeout("tcp", addrs[1], 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Errorf("dial the removed bind %s: %v, want connection refused", addrs[1], err)
	}
	p2.signal(syscall.SIGTERM)
	p2.wait(30 * time.Second)
}

// crashLoad tells a refused connection from the others, or the crash test
// could not fail on one.
func TestCrashLoadCountsRefusals(t *testing.T) {
	ln := listenTCP(t)
	addr := ln.Addr().String()
	ln.Close()
	l := &crashLoad{old: map[int]bool{}}
	l.one(addr)
	if r := l.report(); r.refused != 1 || r.total != 1 {
		t.Errorf("a request to a closed port: %+v, want it counted as refused", r)
	}
}

func sockaddrString(sa unix.Sockaddr) string {
	if in, ok := sa.(*unix.SockaddrInet4); ok {
		return fmt.Sprintf("%d.%d.%d.%d:%d", in.Addr[0], in.Addr[1], in.Addr[2], in.Addr[3], in.Port)
	}
	return fmt.Sprint(sa)
}

// Outcomes of one request of crashLoad.
const (
	okResult = iota
	refusedResult
	resetResult
	otherResult
)

// crashLoad is load that tells apart how requests end around a master
// crash: answered, refused (what the fd store must prevent), reset or cut
// off by a worker that died with them, anything else.
type crashLoad struct {
	old      map[int]bool // the pids of the workers that will be killed
	killedAt time.Time    // set by kill, before the master is signalled
	goneAt   time.Time    // set by workersGone: no killed worker left
	inFlight atomic.Int64 // requests sent and not ended yet
	newOK    atomic.Int64 // requests answered by a worker not in old

	mu      sync.Mutex
	records []record
	quit    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

type record struct {
	start, end time.Time
	result     int
	byNew      bool // answered by a worker not in old
	err        error
}

// startCrashLoad sends requests from n clients, a new connection each,
// until stop (100000 a client at most).
func startCrashLoad(addr string, n int, old []int) *crashLoad {
	l := &crashLoad{old: map[int]bool{}, quit: make(chan struct{})}
	for _, pid := range old {
		l.old[pid] = true
	}
	for range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for range 100000 {
				select {
				case <-l.quit:
					return
				default:
				}
				l.one(addr)
			}
		}()
	}
	return l
}

func (l *crashLoad) one(addr string) {
	l.inFlight.Add(1)
	defer l.inFlight.Add(-1)
	rec := record{start: time.Now()}
	body, err := get("http://" + addr + "/")
	rec.end, rec.err = time.Now(), err
	switch {
	case err == nil:
		rec.result = okResult
		var pid int
		if _, serr := fmt.Sscanf(body, "hello from pid %d", &pid); serr == nil && !l.old[pid] {
			rec.byNew = true
			l.newOK.Add(1)
		}
	case errors.Is(err, syscall.ECONNREFUSED):
		rec.result = refusedResult
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		// net/http's word for EOF before the first byte of a response: a
		// worker that accepted the connection died before it read it.
		strings.Contains(err.Error(), "server closed idle connection"):
		rec.result = resetResult
	default:
		rec.result = otherResult
	}
	l.mu.Lock()
	l.records = append(l.records, rec)
	l.mu.Unlock()
}

// workersGone marks the instant the killed workers were seen gone: a
// request sent after it that is reset was not theirs.
func (l *crashLoad) workersGone() {
	l.mu.Lock()
	l.goneAt = time.Now()
	l.mu.Unlock()
}

// kill marks the instant the master is killed.
func (l *crashLoad) kill() {
	l.mu.Lock()
	l.killedAt = time.Now()
	l.mu.Unlock()
}

func (l *crashLoad) count(result int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.records {
		if r.result == result {
			n++
		}
	}
	return n
}

func (l *crashLoad) stop() {
	l.once.Do(func() { close(l.quit); l.wg.Wait() })
}

type crashReport struct {
	total, ok, okAfter, queued, reset, refused, other int
	gap                                               time.Duration // SIGKILL to the first answer of a new worker
	firstErr                                          error         // of the refused or other ones
}

// report sums up the records, after stop. okAfter counts the answers of
// new workers; of those, a request "waited in the queue" when it was sent
// before the first of them came (while no master ran, or just before the
// kill but not yet accepted by the killed workers).
func (l *crashLoad) report() crashReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	var r crashReport
	var first time.Time
	for _, rec := range l.records {
		r.total++
		switch rec.result {
		case okResult:
			r.ok++
			if rec.byNew {
				r.okAfter++
				if first.IsZero() || rec.end.Before(first) {
					first = rec.end
				}
			}
		case resetResult:
			if !l.goneAt.IsZero() && rec.start.After(l.goneAt) {
				r.other++ // no killed worker could have taken it
				if r.firstErr == nil {
					r.firstErr = rec.err
				}
			} else {
				r.reset++
			}
		case refusedResult:
			r.refused++
		default:
			r.other++
		}
		if rec.result != okResult && rec.result != resetResult && r.firstErr == nil {
			r.firstErr = rec.err
		}
	}
	for _, rec := range l.records {
		if rec.byNew && rec.start.Before(first) {
			r.queued++
		}
	}
	r.gap = first.Sub(l.killedAt)
	return r
}
