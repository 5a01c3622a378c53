package supervisor

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The canary probe (canary_probe, DESIGN §8). In a steered reload, a canary
// that says it is ready (READY=1, or seen listening) is not marked ready
// yet: its generation has no weight, so no live connection reaches it.
// The master connects to it from a source port that the group's program
// sends to the canary's socket alone, and asks what canary_probe says: an
// HTTP GET of its path, which must answer 200 (as a Kubernetes
// readinessProbe would call it, Host set), or, for tcp, a connection the
// app accepts. Attempts last probeTimeout at most, probeEvery apart, until
// the canary's ready_timeout: a probe that passes marks the canary ready
// (its generation then takes its share); one that never does fails it as
// a missed ready timeout does, which rolls the reload back. What it proves
// is that the new generation answers on its own socket before any client
// depends on it; the workers started after the canary are judged by their
// readiness alone.

const (
	probeTimeout = time.Second            // one attempt, connect to answer
	probeEvery   = 100 * time.Millisecond // from the end of an attempt to the next
)

// probing is the canary being probed.
type probing struct {
	w        *worker
	key      string         // the steered bind it is probed on
	to       netip.AddrPort // where the attempts connect
	fd       int            // the next attempt's socket, bound, not connected; -1: none
	port     uint16         // its source port: in the program while non-zero
	busy     bool           // an attempt is under way
	nextAt   time.Time      // the next attempt, when none is under way
	attempts int
	last     string // what the last attempt got
}

// probeAttempt is one attempt, run off the loop.
type probeAttempt struct {
	fd       int            // bound, not connected; the attempt closes it
	to       netip.AddrPort // the canary's address
	spec     *Probe
	listener int // tcp: the canary's listening socket, whose queue says it accepted
}

// probeResult is how an attempt for w ended: nil, or why it failed.
type probeResult struct {
	w   *worker
	err error
}

// mustProbe reports whether w, starting and saying it is ready, is a
// steered reload's canary to probe before it counts as ready.
func (m *master) mustProbe(w *worker) bool {
	r := m.rollout
	return w.state == wStarting && w.cfg.Probe != nil && r != nil && !r.rollback && !r.handover &&
		w.gen == m.target && !m.probed[w.gen] && m.probeBind(w.cfg) != "" && m.ownsSteering()
}

// probeBind is the first bind of cfg that steers, the one probes go to;
// "" when none does.
func (m *master) probeBind(cfg *Resolved) string {
	for _, a := range cfg.Addrs {
		if m.steer[a.Key()] != nil {
			return a.Key()
		}
	}
	return ""
}

// startProbe begins probing w (once; a canary of an abandoned target
// being probed gives way).
func (m *master) startProbe(w *worker) {
	if m.probe != nil && m.probe.w == w {
		return
	}
	m.endProbe()
	key := m.probeBind(w.cfg)
	to, err := probeAddr(m.steer[key].group.Socket(0).Addr)
	if err != nil {
		m.log.Warn("canary probe: no address to probe; the canary counts as ready unprobed", append(w.fields(), zap.Error(err))...)
		m.probed[w.gen] = true
		m.markReady(w)
		return
	}
	m.probe = &probing{w: w, key: key, to: to, fd: -1, nextAt: m.env.now()}
	m.log.Info("canary says it is ready; probing it before it gets live connections",
		append(w.fields(), zap.String("probe", w.cfg.Probe.String()), zap.String("address", to.String()))...)
}

// probeAddr is where a probe of a socket bound to addr connects: addr, or
// the loopback address of its family for a wildcard one.
func probeAddr(addr string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ip := ap.Addr()
	switch {
	case ip == netip.IPv4Unspecified():
		ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case ip == netip.IPv6Unspecified():
		ip = netip.IPv6Loopback()
	}
	return netip.AddrPortFrom(ip, ap.Port()), nil
}

// advanceProbe prepares the next attempt when it is due: a socket bound
// to a port of its own, which the program, attached next (applyWeights),
// sends to the canary's socket. A canary gone, or no longer the target's,
// ends the probe.
func (m *master) advanceProbe(now time.Time) {
	p := m.probe
	if p == nil {
		return
	}
	if m.workers[p.w.proc.Pid] != p.w || p.w.state != wStarting || p.w.gen != m.target || !m.ownsSteering() {
		m.endProbe()
		return
	}
	if p.busy || p.fd >= 0 || now.Before(p.nextAt) {
		return
	}
	fd, port, err := m.env.probeSocket(p.to)
	if err != nil {
		p.last, p.nextAt = err.Error(), now.Add(probeEvery)
		return
	}
	p.fd, p.port = fd, port
}

// launchProbe starts the prepared attempt once the program that sends
// its port to the canary is attached.
func (m *master) launchProbe() {
	p := m.probe
	if p == nil || p.fd < 0 || p.busy {
		return
	}
	st := m.steer[p.key]
	if st == nil || st.attachedProbe != p.port {
		return
	}
	i := slices.Index(st.gens, p.w.gen)
	a := probeAttempt{fd: p.fd, to: p.to, spec: p.w.cfg.Probe, listener: st.group.Socket(i).RawFD()}
	p.fd, p.busy = -1, true
	p.attempts++
	w, e, out := p.w, m.env, m.probeResults
	m.env.async(func() { out <- probeResult{w: w, err: e.probe(a)} })
}

// onProbeResult applies an attempt's outcome: passed, the canary is ready;
// failed, the next attempt comes probeEvery later, until its ready
// timeout fails it (notReady says why).
func (m *master) onProbeResult(r probeResult) {
	p := m.probe
	if p == nil || p.w != r.w {
		return
	}
	p.busy, p.port = false, 0
	if r.err != nil {
		p.last, p.nextAt = r.err.Error(), m.env.now().Add(probeEvery)
		m.log.Debug("canary probe failed; trying again", append(r.w.fields(), zap.Error(r.err))...)
		return
	}
	m.probe = nil
	m.probed[r.w.gen] = true
	m.log.Info("canary probe passed", append(r.w.fields(), zap.Int("attempts", p.attempts))...)
	m.markReady(r.w)
}

// endProbe drops the probe under way, if any (an attempt running off the
// loop ends on its own; its result is ignored).
func (m *master) endProbe() {
	if p := m.probe; p != nil {
		if p.fd >= 0 {
			unix.Close(p.fd)
		}
		m.probe = nil
	}
}

// probeFailure is why a canary that missed its ready timeout while being
// probed failed, with the fix; "" when w was not being probed.
func (m *master) probeFailure(w *worker) string {
	p := m.probe
	if p == nil || p.w != w {
		return ""
	}
	last := p.last
	if last == "" {
		last = "no attempt finished"
	}
	what := "answer 200 to GET " + w.cfg.Probe.Path
	if !w.cfg.Probe.HTTP {
		what = "accept connections"
	}
	return fmt.Sprintf("worker %d (pid %d) said it was ready but failed its canary probe (%d attempts) within %s: %s: %s (--canary-probe %s: make the app %s once it can serve, or raise --ready-timeout)",
		w.slot, w.proc.Pid, p.attempts, w.cfg.ReadyTimeout, commandLine(w.cfg), last, w.cfg.Probe, what)
}

// openProbeSocket is the real env.probeSocket: a TCP socket of to's
// family bound to a port of its own (the kernel's choice), close-on-exec.
func openProbeSocket(to netip.AddrPort) (int, uint16, error) {
	family, sa := unix.AF_INET, unix.Sockaddr(&unix.SockaddrInet4{})
	if to.Addr().Is6() {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, 0, fmt.Errorf("canary probe: socket: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("canary probe: bind: %w", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("canary probe: getsockname: %w", err)
	}
	switch got := got.(type) {
	case *unix.SockaddrInet4:
		return fd, uint16(got.Port), nil
	case *unix.SockaddrInet6:
		return fd, uint16(got.Port), nil
	}
	unix.Close(fd)
	return -1, 0, errors.New("canary probe: getsockname: not an IP socket")
}

// runProbe is the real env.probe: one attempt, probeTimeout at most.
func runProbe(a probeAttempt) error {
	deadline := time.Now().Add(probeTimeout)
	if err := connectBy(a.fd, a.to, deadline); err != nil {
		unix.Close(a.fd)
		return err
	}
	f := os.NewFile(uintptr(a.fd), "canary probe")
	conn, err := net.FileConn(f) // a duplicate; this probe's own socket, shared with nobody
	f.Close()
	if err != nil {
		return fmt.Errorf("canary probe: %w", err)
	}
	defer conn.Close()
	if !a.spec.HTTP {
		return awaitAccept(a.listener, a.to, deadline)
	}
	_ = conn.SetDeadline(deadline)
	url := "http://" + a.to.String() + a.spec.Path
	req := "GET " + a.spec.Path + " HTTP/1.1\r\nHost: " + a.to.String() + "\r\nUser-Agent: " + workers.ProbeUserAgent +
		"\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s, want 200 OK", url, strings.TrimSpace(resp.Status))
	}
	return nil
}

// connectBy connects fd to to, giving up at deadline.
func connectBy(fd int, to netip.AddrPort, deadline time.Time) error {
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	if to.Addr().Is6() {
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	err := unix.Connect(fd, sa)
	for errors.Is(err, unix.EINTR) || errors.Is(err, unix.EINPROGRESS) || errors.Is(err, unix.EALREADY) {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("connect to %s: no answer within %s", to, probeTimeout)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if _, perr := unix.Poll(pfd, int(left.Milliseconds())+1); perr != nil && !errors.Is(perr, unix.EINTR) {
			return perr
		}
		if pfd[0].Revents == 0 {
			continue
		}
		soerr, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if gerr != nil {
			return gerr
		}
		err = nil
		if soerr != 0 {
			err = unix.Errno(soerr)
		}
		break
	}
	if err != nil {
		return fmt.Errorf("connect to %s: %w", to, err)
	}
	return nil
}

// awaitAccept waits until the canary's listening socket has no
// connection waiting: it accepted the probe's (the only one its
// generation gets before it has a weight).
func awaitAccept(listenFD int, to netip.AddrPort, deadline time.Time) error {
	for {
		n, err := listener.QueueLen(listenFD)
		switch {
		case err != nil:
			return fmt.Errorf("canary probe: %w", err)
		case n == 0:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("connected to %s, not accepted within %s", to, probeTimeout)
		}
		time.Sleep(5 * time.Millisecond) // polling the queue: it has no readiness to wait on
	}
}
