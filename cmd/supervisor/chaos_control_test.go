package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/supervisor"
	"golang.org/x/sys/unix"
)

// The chaos suite, control socket abuse: a real master with two workers
// under light load, while clients misuse its control socket. The server's
// limits (supervisor/control_server.go; unit-tested in
// supervisor/control_test.go against a fake loop) hold here against the
// real binary and its loop:
//   - idle clients, a thousand at once: each is timed out, answered "no
//     request within 5s" no earlier than 5 s after it connected;
//   - slow clients that send a byte every 300 ms: timed out the same, as
//     the deadline runs from the accept, not from the last byte;
//   - a request of 10 MB: refused at once ("larger than 64 KiB"), the
//     master reading little more than that;
//   - a client of another uid (nobody): refused by connect(2) itself
//     (EACCES: the socket's directory is 0700 and the socket 0600), and,
//     with the modes opened up, by the server's SO_PEERCRED check.
//
// Meanwhile a legitimate status is answered within abuseStatusBound every
// time, and a reload --wait succeeds with no failed request. Afterwards
// the master holds exactly the descriptors it held before.

const (
	// abuseStatusBound is how long a status may take during the abuse. A
	// status is one turn of the loop plus reading two workers' RSS from
	// /proc: a few milliseconds, tens under -race on a busy machine; the
	// abusers park in the master's netpoller and cost the loop nothing.
	// 1 s is far above that and far below the abusers' 5 s read deadline:
	// a server or loop that served abusers before a legitimate client
	// (the accept loop blocked on one, the loop waiting on a read) would
	// take 5 s.
	abuseStatusBound = time.Second
	// controlRead is the server's read deadline (controlReadTimeout).
	controlRead = 5 * time.Second
)

// abuseOutcome is what one abusive client saw.
type abuseOutcome struct {
	resp      supervisor.Response
	err       error
	connected time.Duration // when it began to connect, since the abuse began
	answered  time.Duration // since it began to connect
	written   int           // bytes it managed to send
}

// abuseFloodSize is how many idle clients connect at once: 1000, fewer
// only when this process may not open that many descriptors (the master
// inherits the same limit).
func abuseFloodSize(t *testing.T) int {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	n := min(1000, int(lim.Cur)-256)
	if n < 1000 {
		t.Logf("RLIMIT_NOFILE %d: %d idle clients instead of 1000", lim.Cur, n)
	}
	if n < 100 {
		t.Skipf("RLIMIT_NOFILE %d leaves room for %d clients only", lim.Cur, n)
	}
	return n
}

// abuseDial connects to path and returns the connection and when it began
// to connect, relative to began: the server cannot have accepted it
// earlier (a time taken after the dial returned could be later than the
// accept, by however long this goroutine waited to run again).
func abuseDial(path string, began time.Time) (*net.UnixConn, time.Duration, error) {
	at := time.Since(began)
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, 0, err
	}
	conn := c.(*net.UnixConn)
	// Bounds the client's own wait for the answer.
	_ = conn.SetDeadline(time.Now().Add(6 * controlRead))
	return conn, at, nil
}

// abuseAnswer reads the one answer on conn.
func abuseAnswer(conn *net.UnixConn, out *abuseOutcome, began time.Time) {
	out.err = json.NewDecoder(conn).Decode(&out.resp)
	out.answered = time.Since(began) - out.connected
}

// abuseIdle connects and sends nothing.
func abuseIdle(path string, began time.Time, start <-chan struct{}) (out abuseOutcome) {
	<-start
	conn, at, err := abuseDial(path, began)
	if err != nil {
		return abuseOutcome{err: err}
	}
	defer conn.Close()
	out.connected = at
	abuseAnswer(conn, &out, began)
	return out
}

// abuseSlow sends a valid request one byte every 300 ms (6 s for the
// whole of it) and reads the answer meanwhile.
func abuseSlow(path string, began time.Time) (out abuseOutcome) {
	conn, at, err := abuseDial(path, began)
	if err != nil {
		return abuseOutcome{err: err}
	}
	defer conn.Close()
	out.connected = at
	req := []byte(`{"command":"status"}`)
	done := make(chan struct{})
	wrote := make(chan int, 1)
	go func() {
		sent := 0
		tick := time.NewTicker(300 * time.Millisecond) // the client's pace, not a wait for a condition
		defer tick.Stop()
		defer func() { wrote <- sent }()
		for sent < len(req) {
			if _, err := conn.Write(req[sent : sent+1]); err != nil {
				return
			}
			sent++
			select {
			case <-tick.C:
			case <-done:
				return
			}
		}
	}()
	abuseAnswer(conn, &out, began)
	close(done)
	out.written = <-wrote
	return out
}

// abuseHuge sends a 10 MB request and reads the answer meanwhile.
func abuseHuge(path string, began time.Time) (out abuseOutcome) {
	conn, at, err := abuseDial(path, began)
	if err != nil {
		return abuseOutcome{err: err}
	}
	defer conn.Close()
	out.connected = at
	wrote := make(chan int, 1)
	go func() {
		chunk := []byte(`{"command":"status","message":"` + strings.Repeat("x", 64<<10-32))
		n := 0
		for n < 10<<20 {
			m, err := conn.Write(chunk[:min(len(chunk), 10<<20-n)])
			n += m
			if err != nil {
				break
			}
			chunk = []byte(strings.Repeat("x", 64<<10))
		}
		wrote <- n
	}()
	abuseAnswer(conn, &out, began)
	conn.Close() // ends a write still blocked
	out.written = <-wrote
	return out
}

// abuseAsNobody runs `supervisor status --control path` as nobody; its output.
func abuseAsNobody(t *testing.T, path string) (string, int) {
	t.Helper()
	cmd := quick(command(t, "status", "--control", path))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, code := runToEnd(t, cmd)
	return strings.TrimSpace(out), code
}

func TestChaosControlAbuse(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as nobody")
	}
	t.Parallel()
	n := abuseFloodSize(t)
	slow := chaosCount(5, 50)
	p := startCmd(t, quick(command(t, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app")))
	addr := p.ready()
	pid := p.cmd.Process.Pid
	before := limQuietFDs(t, pid)
	// The long form repeats the abuse: a leak of one descriptor or
	// process per round would show.
	for round := 1; round <= chaosCount(1, 5); round++ {
		abuseRound(t, p, addr, n, slow, before, round)
	}
}

// abuseRound is one round of the abuse against p: every abuser at once, a
// nobody client, a reload (to generation round+1), and the checks.
func abuseRound(t *testing.T, p *proc, addr string, n, slow int, before map[int]string, round int) {
	pid := p.cmd.Process.Pid
	path := controlPath(p.cmd)
	stopLoad := load(t, addr, 2)
	defer stopLoad()

	// The abusers, all at once.
	began := time.Now()
	start := make(chan struct{})
	idle := make(chan abuseOutcome, n)
	var dialing sync.WaitGroup
	for range n {
		dialing.Add(1)
		go func() {
			dialing.Done()
			idle <- abuseIdle(path, began, start)
		}()
	}
	dialing.Wait()
	close(start)
	slowc := make(chan abuseOutcome, slow)
	for range slow {
		go func() { slowc <- abuseSlow(path, began) }()
	}
	huge := make(chan abuseOutcome, 1)
	go func() { huge <- abuseHuge(path, began) }()

	// A legitimate status every 100 ms for as long as the abusers are
	// connected, each one timed.
	stopPoll := make(chan struct{})
	polled := make(chan []time.Duration, 1)
	pollErrs := make(chan error, 100)
	go func() {
		var lat []time.Duration
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			t0 := time.Now()
			if _, err := limStatus(p, 10*time.Second); err != nil {
				select {
				case pollErrs <- err:
				default:
				}
			}
			lat = append(lat, time.Since(t0))
			select {
			case <-stopPoll:
				polled <- lat
				return
			case <-tick.C:
			}
		}
	}()

	// The master holds every idle client at once.
	var peak int
	testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("the master to hold %d connections", n), func() bool {
		peak = len(openFDs(t, pid))
		return peak >= len(before)+n
	})
	heldAt := time.Since(began)

	// Another uid, as deployed: connect(2) fails with EACCES on the
	// 0700 directory (the 0600 socket would refuse it too).
	wantDenied := "supervisor: control socket " + path + ": permission denied: run as root or as the master's user"
	if out, code := abuseAsNobody(t, path); code != 1 || out != wantDenied {
		t.Errorf("status as nobody: exit %d, %q; want 1 and %q", code, out, wantDenied)
	}
	// With the directories and the socket opened to everyone, the
	// server's SO_PEERCRED check refuses it.
	xdg := filepath.Dir(filepath.Dir(path))
	modes := []struct {
		path       string
		open, shut os.FileMode
	}{{xdg, 0o711, 0o700}, {filepath.Dir(path), 0o711, 0o700}, {path, 0o666, 0o600}}
	for _, m := range modes {
		if err := os.Chmod(m.path, m.open); err != nil {
			t.Fatal(err)
		}
	}
	wantCred := "supervisor: permission denied: uid 65534 is neither root nor the master's user"
	if out, code := abuseAsNobody(t, path); code != 1 || out != wantCred {
		t.Errorf("status as nobody on a 0666 socket: exit %d, %q; want 1 and %q", code, out, wantCred)
	}
	for _, m := range modes {
		if err := os.Chmod(m.path, m.shut); err != nil {
			t.Fatal(err)
		}
	}

	// A reload under load, while the idle clients are still held.
	t0 := time.Now()
	resp, err := supervisor.CallControl(path, supervisor.Request{Command: "reload", Wait: true, Timeout: "60s"}, 70*time.Second)
	if err != nil || !resp.OK {
		t.Fatalf("reload --wait during the abuse: %+v, %v", resp, err)
	}
	reloadTook := time.Since(t0)
	reloadDone := time.Since(began)

	// Every abuser's outcome.
	check := func(what string, o abuseOutcome, wantErr string, atLeast, atMost time.Duration) {
		t.Helper()
		switch {
		case o.err != nil:
			t.Errorf("%s: %v, want the answer %q", what, o.err, wantErr)
		case o.resp.OK || o.resp.Error != wantErr:
			t.Errorf("%s: answer %+v, want %q", what, o.resp, wantErr)
		case o.answered < atLeast || o.answered > atMost:
			t.Errorf("%s: answered %s after it began to connect, want between %s and %s", what, o.answered, atLeast, atMost)
		}
	}
	timedOut := "bad request: no request within 5s"
	var idleMax time.Duration
	for i := range n {
		o := testkit.Recv(t, idle, 30*time.Second, fmt.Sprintf("idle client %d of %d", i+1, n))
		// Timed out by the server: not before its read deadline, which
		// runs from the accept.
		check("idle client", o, timedOut, controlRead, 3*controlRead)
		idleMax = max(idleMax, o.answered)
	}
	var slowMax time.Duration
	for range slow {
		o := testkit.Recv(t, slowc, 30*time.Second, "slow client")
		check("slow client", o, timedOut, controlRead, 3*controlRead)
		if o.written >= len(`{"command":"status"}`) {
			t.Errorf("slow client sent all %d bytes: the server should have cut it off first", o.written)
		}
		slowMax = max(slowMax, o.answered)
	}
	h := testkit.Recv(t, huge, 30*time.Second, "10 MB client")
	// Refused for its size as soon as 64 KiB are read, long before the
	// read deadline.
	check("10 MB client", h, "bad request: larger than 64 KiB", 0, controlRead/2)
	if h.written >= 10<<20 {
		t.Errorf("10 MB client wrote all %d bytes: the master read them all", h.written)
	}
	close(stopPoll)
	lat := testkit.Recv(t, polled, 20*time.Second, "the status poller")
	var errs []error
	for len(pollErrs) > 0 {
		errs = append(errs, <-pollErrs)
	}
	slices.Sort(lat)
	if len(errs) > 0 || len(lat) == 0 || lat[len(lat)-1] > abuseStatusBound {
		t.Errorf("status during the abuse: errors %v, slowest of %d %s; want every one within %s", errs, len(lat), lat[len(lat)-1], abuseStatusBound)
	}
	ok, failed := stopLoad()
	if failed != 0 || ok == 0 {
		t.Errorf("load during the abuse and the reload: %d ok, %d failed; want 0 failed", ok, failed)
	}
	t.Logf("round %d: %d idle clients held %s after the abuse began (peak %d descriptors, %d before); reload --wait took %s, done at %s",
		round, n, heldAt.Round(time.Millisecond), peak, len(before), reloadTook.Round(time.Millisecond), reloadDone.Round(time.Millisecond))
	t.Logf("timed out: idle clients answered at most %s after they began to connect, slow ones %s; 10 MB client refused after %s, having sent %d bytes",
		idleMax.Round(time.Millisecond), slowMax.Round(time.Millisecond), h.answered.Round(time.Millisecond), h.written)
	t.Logf("status during the abuse: %d calls, median %s, slowest %s; load %d ok, %d failed",
		len(lat), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond), ok, failed)

	// The master is up, serves, and holds what it held before.
	if st, err := limStatus(p, 5*time.Second); err != nil || st.Ready != 2 || st.Generation != round+1 {
		t.Fatalf("status after round %d of the abuse: %+v, %v; want generation %d with 2 ready", round, st, err, round+1)
	}
	after := limSettledFDs(t, pid, before)
	testkit.WaitFor(t, 10*time.Second, "2 workers and no zombie", func() bool {
		return len(children(pid)) == 2 && len(limZombies(pid)) == 0
	})
	t.Logf("master descriptors: %d before, %d at the peak, %d after", len(before), peak, len(after))
	select {
	case <-p.done:
		t.Fatalf("the master exited: %v", p.status)
	default:
	}
}
