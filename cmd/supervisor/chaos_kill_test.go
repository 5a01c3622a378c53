package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// chaosDeadline bounds each request of chaosLoad, dial to last byte. A
// connection waits in the shared accept queue while no worker accepts,
// and after repeated SIGKILLs that lasts as long as a slot's crash backoff
// (at most 10 s, DESIGN §4 "Crash") plus a worker's boot on a busy
// machine. A request still unanswered after this is a hang.
const chaosDeadline = 30 * time.Second

// chaosLoad is n clients on loopback, each opening a new connection per
// request (so every request goes through the shared accept queue), each
// stopping at stop or after chaosMaxRequests. It sorts failures by where
// they happened:
//   - dial: the connection was refused or not made (the listening socket
//     closed or its queue overflowed: invariant 1 forbids it);
//   - timeout: connected, but no full answer within chaosDeadline;
//   - reset: connected, then reset or closed before the full answer, which
//     is what becomes of a request a killed worker had accepted;
//   - bad: an answer other than 200, or not HTTP.
type chaosLoad struct {
	ok, dial, timeout, reset, bad atomic.Int64
	slowest                       atomic.Int64 // nanoseconds of the slowest answered request

	mu    sync.Mutex
	first map[string][]string // a few errors of each class

	quit chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

const chaosMaxRequests = 200000

func startChaosLoad(addr string, n int) *chaosLoad {
	l := &chaosLoad{first: map[string][]string{}, quit: make(chan struct{})}
	for range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for range chaosMaxRequests {
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

// one makes one request on a connection of its own.
func (l *chaosLoad) one(addr string) {
	t0 := time.Now()
	deadline := t0.Add(chaosDeadline)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := testkit.DialLoopback(ctx, "tcp", addr)
	if err != nil {
		l.fail(&l.dial, "dial", err)
		return
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n"); err != nil {
		l.failAfterConnect(err)
		return
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		l.failAfterConnect(err)
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		l.failAfterConnect(err)
	case resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "hello from pid "):
		l.fail(&l.bad, "bad", fmt.Errorf("status %s: %.100q", resp.Status, body))
	default:
		l.ok.Add(1)
		took := int64(time.Since(t0))
		for {
			s := l.slowest.Load()
			if took <= s || l.slowest.CompareAndSwap(s, took) {
				break
			}
		}
	}
}

func (l *chaosLoad) failAfterConnect(err error) {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		l.fail(&l.timeout, "timeout", err)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		l.fail(&l.reset, "reset", err)
	default:
		l.fail(&l.bad, "bad", err)
	}
}

func (l *chaosLoad) fail(n *atomic.Int64, class string, err error) {
	n.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.first[class]) < 3 {
		l.first[class] = append(l.first[class], err.Error())
	}
}

// stop ends the load and waits for the requests in flight.
func (l *chaosLoad) stop() {
	l.once.Do(func() { close(l.quit); l.wg.Wait() })
}

func (l *chaosLoad) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := fmt.Sprintf("%d ok (slowest %s); failed: %d dial, %d timeout, %d reset, %d bad", l.ok.Load(),
		time.Duration(l.slowest.Load()).Round(time.Millisecond), l.dial.Load(), l.timeout.Load(), l.reset.Load(), l.bad.Load())
	for _, class := range []string{"dial", "timeout", "reset", "bad"} {
		if errs := l.first[class]; len(errs) > 0 {
			s += fmt.Sprintf("\n  first %s errors: %s", class, strings.Join(errs, "; "))
		}
	}
	return s
}

// killChild sends SIGKILL to pid if, and only if, it is a child of
// master: the pidfd pins the process, so a pid reused after the listing is
// never signalled.
func killChild(master, pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if ppid, err := parentOf(pid); err != nil || ppid != master {
		return fmt.Errorf("pid %d is not a child of %d any more (parent %d, %v)", pid, master, ppid, err)
	}
	return unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
}

// parentOf is the parent pid in /proc/PID/stat.
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:]) // state, ppid, ...
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return strconv.Atoi(f[1])
}

// Under load, a random worker of the master gets SIGKILL every 400 ms
// (3 s; 20 s in the long form). No request is refused, times out or gets
// a wrong answer: the listening socket never closes (invariant 1). Only
// requests a killed worker had accepted fail, reset or cut short, at most
// one per client per kill. Afterwards the pool is back to its 2 ready
// workers (waiting out the crash backoff), no child of the master is a
// zombie (invariant 4), and the master holds as many descriptors as before.
func TestChaosKilledWorkers(t *testing.T) {
	const workers, clients = 2, 4
	seed := chaosSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	p := startQuick(t, "--bind", "127.0.0.1:0", "--workers", strconv.Itoa(workers), "--", self(t), "example-app")
	addr := p.ready()
	pid := p.cmd.Process.Pid
	settled(t, p, workers, 10*time.Second)
	fdsBefore := steadyCount(t, func() (int, error) { return openFDCount(pid) })

	load := startChaosLoad(addr, clients)
	defer load.stop()
	span := chaosSpan(3*time.Second, 20*time.Second)
	tick := time.NewTicker(400 * time.Millisecond)
	defer tick.Stop()
	kills, idle := 0, 0
	began := time.Now()
	for time.Since(began) < span {
		<-tick.C
		if !p.alive() {
			t.Fatalf("the master died after %d kills", kills)
		}
		var live []int
		for _, c := range children(pid) {
			if !isZombie(c) {
				live = append(live, c)
			}
		}
		if len(live) == 0 {
			idle++ // every slot waits out its crash backoff
			continue
		}
		victim := live[rng.IntN(len(live))]
		if err := killChild(pid, victim); err != nil {
			t.Logf("kill %d: %v", victim, err) // it exited meanwhile: not counted
			continue
		}
		kills++
	}
	// The last kill may not be reaped yet: until it is, status still
	// shows its worker ready and the pool looks settled.
	p.waitLogCount("worker exited unexpectedly; replacing it", kills, 10*time.Second)
	settle := settled(t, p, workers, 30*time.Second)
	load.stop()
	t.Logf("%d SIGKILLs in %s (%d ticks found no worker to kill), seed %d; pool of %d ready again %s after the kills ended",
		kills, span, idle, seed, workers, settle.Round(time.Millisecond))
	t.Logf("load, %d clients: %s", clients, load)

	if kills == 0 {
		t.Fatal("no worker was killed")
	}
	if load.ok.Load() == 0 {
		t.Error("no request succeeded")
	}
	if n := load.dial.Load() + load.timeout.Load() + load.bad.Load(); n > 0 {
		t.Errorf("%d requests refused, timed out or answered wrong, want none (invariant 1): %s", n, load)
	}
	if n := load.reset.Load(); n > int64(kills*clients) {
		t.Errorf("%d requests reset after connecting, more than %d kills x %d clients could cause", n, kills, clients)
	}
	crashes := p.countLogs("worker exited unexpectedly; replacing it")
	if crashes != kills {
		t.Errorf("%d crashes logged for %d kills, want one each", crashes, kills)
	}
	fdsAfter := waitCount(t, "the master's open descriptors back to the count before the kills", 10*time.Second,
		func() (int, error) { return openFDCount(pid) }, func(n int) bool { return n == fdsBefore })
	t.Logf("master's open descriptors: %d before the kills, %d after", fdsBefore, fdsAfter)
}
