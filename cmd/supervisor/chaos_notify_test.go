package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/supervisor"
	"github.com/supervisor-dev/supervisor/workers"
	"golang.org/x/sys/unix"
)

// chaos-notify-as-other tries $CHAOS_NOTIFY_ADDR as whatever user it runs
// as: one connect, then $CHAOS_NOTIFY_COUNT sendto's of READY=1 from an
// unconnected socket, as fast as it can. It prints the connect's error and
// how many sends failed with each error, as JSON.
func init() {
	testkit.Register("chaos-notify-as-other", func() int {
		addr := &unix.SockaddrUnix{Name: os.Getenv("CHAOS_NOTIFY_ADDR")}
		n, _ := strconv.Atoi(os.Getenv("CHAOS_NOTIFY_COUNT"))
		res := struct {
			Connect string         `json:"connect"`
			Sends   map[string]int `json:"sends"`
		}{Sends: map[string]int{}}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, addr); err != nil {
			res.Connect = err.Error()
		}
		fd2, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer unix.Close(fd2)
		for range n {
			err := unix.Sendto(fd2, []byte("READY=1\nSTOPPING=1"), 0, addr)
			if err == nil {
				res.Sends["ok"]++
			} else {
				res.Sends[err.Error()]++
			}
		}
		_ = json.NewEncoder(os.Stdout).Encode(res)
		return 0
	})
}

// chaosNotifySum is a counter of the master's /metrics summed over the
// series whose labels include labels (name, value pairs).
func chaosNotifySum(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	var sum float64
	if f := fams[name]; f != nil {
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels...) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// Notify abuse against a real master under light load (2 clients): from a
// process that is no worker, datagrams that claim READY=1, STOPPING=1,
// MAINPID=, STATUS=, X_REQUESTS=...; oversized ones; malformed ones; ones
// with fds attached; then a flood of 100,000 (1,000,000 in the long form),
// as fast as the master reads them, with a reload in the middle. The
// master never crashes; no claim reaches a worker (the pool, its states,
// STATUS= and requests are as they were; no worker is started or stopped
// but by the reload); every datagram is counted, exactly, as ignored
// (well-formed, from a stranger) or dropped (bad); every fd passed is
// closed; the loop stays on time: during the flood every status and
// /health/live answers within loopBound, and the reload succeeds. The
// socket is a path in a 0700 directory, and uid nobody gets EACCES from
// it, for one datagram or a flood.
func TestChaosNotifyAbuse(t *testing.T) {
	testkit.MaySkip("chaos-notify-as-other")
	// loopBound is /health/live's own deadline: the loop answers a liveness
	// check within 1 s or the master reports itself dead. A flood must not
	// take it there; twice that for a status, which adds a connection, a
	// JSON round trip and the RSS of the pool read off the loop.
	const loopBound = time.Second
	flood := chaosCount(100_000, 1_000_000)
	floodBound := chaosSpan(60*time.Second, 5*time.Minute)

	p := startQuick(t, "--bind", "127.0.0.1:0", "--workers", "2", "--metrics", "127.0.0.1:0", "--", self(t), "example-app")
	addr := p.ready()
	maddr := p.metricsAddr()
	notifyAddr := getFacts(t, addr).NotifyAddr
	if notifyAddr == "" || notifyAddr[0] == '@' || !filepath.IsAbs(notifyAddr) {
		t.Fatalf("workers' NOTIFY_SOCKET %q, want a path socket", notifyAddr)
	}
	for path, want := range map[string]fs.FileMode{filepath.Dir(notifyAddr): fs.ModeDir | 0o700, notifyAddr: fs.ModeSocket | 0o600} {
		if fi, err := os.Lstat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v %v, want %v", path, fi.Mode(), err, want)
		}
	}
	before := p.controlStatus()
	_, fams := scrape(t, maddr)
	dropped0 := chaosNotifySum(fams, "supervisor_notify_datagrams_dropped_total")
	ignored0 := chaosNotifySum(fams, "supervisor_notify_datagrams_ignored_total")
	starts0 := chaosNotifySum(fams, "supervisor_worker_starts_total")
	stopLoad := load(t, addr, 2)
	loadStopped := false
	defer func() {
		if !loadStopped {
			stopLoad()
		}
	}()

	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	if err := unix.Connect(sock, &unix.SockaddrUnix{Name: notifyAddr}); err != nil {
		t.Fatalf("connect to the notify socket as the master's own user: %v", err)
	}
	send := func(payload string, fds ...int) {
		t.Helper()
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if err := unix.Sendmsg(sock, []byte(payload), oob, nil, 0); err != nil {
			t.Fatalf("send %.30q with %d fds: %v", payload, len(fds), err)
		}
	}
	const requestsClaim = 7_777_777_777
	worker := strconv.Itoa(before.Pool[0].Pid)

	// (a) Claims from a process that is no worker: ignored.
	claims := []string{
		"READY=1", "STOPPING=1", "WATCHDOG=1", "BARRIER=1", "RELOADING=1", "ERRNO=3",
		"MAINPID=" + worker + "\nREADY=1", "MAINPID=" + worker + "\nSTOPPING=1",
		"STATUS=chaos-claim", "X_REQUESTS=" + strconv.Itoa(requestsClaim),
		"FDSTORE=1\nFDNAME=listener_127.0.0.1_0", "READY=1\nSTOPPING=1\nSTATUS=chaos-claim\nX_REQUESTS=" + strconv.Itoa(requestsClaim),
	}
	for _, c := range claims {
		send(c)
	}
	// (b) Oversized, (c) malformed: dropped.
	bad := []string{
		"STATUS=" + strings.Repeat("x", workers.MaxMessageSize), strings.Repeat("READY=1\n", 2048), "STATUS=" + strings.Repeat("y", 64<<10),
		"", "\n\n", "no equals sign", "=1", "READY=1\x00", "STATUS=\xff\xfe", "X_REQUESTS=-3", "X_REQUESTS=1e9", "X_REQUESTS=99999999999999999999",
	}
	for _, b := range bad {
		send(b)
	}
	// (c) With fds: a claim (ignored), a malformed one and one with more
	// fds than the master takes (dropped). The master must close each.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	wfd := int(w.Fd())
	many := make([]int, 40)
	for i := range many {
		many[i] = wfd
	}
	send("READY=1\nSTATUS=chaos-claim", wfd)
	send("garbage", wfd, wfd)
	send("READY=1", many...)
	wantIgnored, wantDropped := ignored0+float64(len(claims)+1), dropped0+float64(len(bad)+2)
	testkit.WaitFor(t, 10*time.Second, "every abusive datagram counted", func() bool {
		_, fams = scrape(t, maddr)
		return chaosNotifySum(fams, "supervisor_notify_datagrams_ignored_total") >= wantIgnored &&
			chaosNotifySum(fams, "supervisor_notify_datagrams_dropped_total") >= wantDropped
	})
	if got, got2 := chaosNotifySum(fams, "supervisor_notify_datagrams_ignored_total"), chaosNotifySum(fams, "supervisor_notify_datagrams_dropped_total"); got != wantIgnored || got2 != wantDropped {
		t.Errorf("ignored %v, dropped %v; want exactly %v and %v", got, got2, wantIgnored, wantDropped)
	}
	w.Close()
	if err := r.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the pipe whose write end was passed 43 times: read (%d, %v), want EOF: the master kept a passed fd open", n, err)
	}
	checkPool := func(st *supervisor.Status, what string) {
		t.Helper()
		for _, wi := range st.Pool {
			if wi.State != "ready" || strings.Contains(wi.Status, "chaos") || wi.Requests >= requestsClaim {
				t.Errorf("%s: worker %+v, want it ready, with none of the claims", what, wi)
			}
		}
		if st.Ready != 2 || len(st.Pool) != 2 {
			t.Errorf("%s: %d ready of %d workers, want 2 of 2", what, st.Ready, len(st.Pool))
		}
	}
	after := p.controlStatus()
	checkPool(after, "after the claims")
	for i := range after.Pool {
		if i >= len(before.Pool) || after.Pool[i].Pid != before.Pool[i].Pid {
			t.Errorf("after the claims: pool %+v, want the same workers as %+v", after.Pool, before.Pool)
			break
		}
	}
	if got := chaosNotifySum(fams, "supervisor_worker_starts_total"); got != starts0 {
		t.Errorf("worker starts %v after the claims, want %v", got, starts0)
	}

	// Uid nobody cannot reach the socket at all: the kernel refuses it, one
	// datagram or a flood, and the master sees nothing.
	if os.Geteuid() == 0 {
		const n = 10_000
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := testkit.Command(t, ctx, "chaos-notify-as-other", "CHAOS_NOTIFY_ADDR="+notifyAddr, "CHAOS_NOTIFY_COUNT="+strconv.Itoa(n),
			"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
		cmd.Path, cmd.Args, cmd.Dir = self(t), []string{self(t)}, filepath.Dir(self(t))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("as nobody: %v", err)
		}
		var res struct {
			Connect string
			Sends   map[string]int
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("as nobody: %q: %v", out, err)
		}
		if eacces := syscall.EACCES.Error(); res.Connect != eacces || res.Sends[eacces] != n {
			t.Errorf("as nobody: connect %q, %d sends %v; want EACCES for every one", res.Connect, n, res.Sends)
		}
	} else {
		t.Log("not root: cannot try the socket as nobody")
	}

	// (d) The flood: two senders, every tenth datagram malformed, the rest
	// claims, as fast as the master takes them (a send blocks while its
	// queue is full), with a reload once a quarter is sent.
	var sentGood, sentBad, sentAll atomic.Int64
	var floodWG sync.WaitGroup
	floodErr := make(chan error, 2)
	floodStart := time.Now()
	for s := range 2 {
		floodWG.Add(1)
		go func() {
			defer floodWG.Done()
			c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: notifyAddr, Net: "unixgram"})
			if err != nil {
				floodErr <- err
				return
			}
			defer c.Close()
			_ = c.SetWriteDeadline(floodStart.Add(floodBound))
			good := []byte("READY=1\nSTOPPING=1\nSTATUS=chaos-flood\nX_REQUESTS=" + strconv.Itoa(requestsClaim) + "\nMAINPID=" + worker)
			malformed := []byte("READY=1\nthis line has no equals sign")
			for i := s; sentAll.Add(1) <= int64(flood); i++ {
				msg, n := good, &sentGood
				if i%10 == 0 {
					msg, n = malformed, &sentBad
				}
				if _, err := c.Write(msg); err != nil {
					floodErr <- fmt.Errorf("after %d datagrams in %s: %w", sentGood.Load()+sentBad.Load(), time.Since(floodStart), err)
					return
				}
				n.Add(1)
			}
		}()
	}
	floodDone := make(chan struct{})
	go func() { floodWG.Wait(); close(floodDone) }()

	// The loop on time, sampled every 50 ms while the flood lasts.
	var probeMu sync.Mutex
	var probeErrs []string
	var worstStatus, worstLive time.Duration
	probes := 0
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		live := &http.Client{Timeout: 2 * loopBound}
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-floodDone:
				return
			case <-tick.C:
			}
			began := time.Now()
			resp, err := supervisor.CallControl(controlPath(p.cmd), supervisor.Request{Command: "status"}, 2*loopBound)
			tookStatus := time.Since(began)
			began = time.Now()
			code, _, lerr := fetch(live, "http://"+maddr+"/health/live")
			tookLive := time.Since(began)
			probeMu.Lock()
			probes++
			worstStatus, worstLive = max(worstStatus, tookStatus), max(worstLive, tookLive)
			switch {
			case err != nil || !resp.OK:
				probeErrs = append(probeErrs, fmt.Sprintf("status: %v %s after %s", err, resp.Error, tookStatus))
			case tookStatus > 2*loopBound:
				probeErrs = append(probeErrs, fmt.Sprintf("status answered in %s", tookStatus))
			}
			switch {
			case lerr != nil || code != http.StatusOK:
				probeErrs = append(probeErrs, fmt.Sprintf("/health/live: %d %v after %s", code, lerr, tookLive))
			case tookLive > loopBound:
				probeErrs = append(probeErrs, fmt.Sprintf("/health/live answered in %s", tookLive))
			}
			probeMu.Unlock()
		}
	}()

	testkit.WaitFor(t, floodBound, "a quarter of the flood sent", func() bool {
		return sentGood.Load()+sentBad.Load() >= int64(flood/4)
	})
	reloadAt := sentGood.Load() + sentBad.Load()
	reloadBegan := time.Now()
	resp, err := supervisor.CallControl(controlPath(p.cmd), supervisor.Request{Command: "reload", Wait: true}, 60*time.Second)
	reloadTook := time.Since(reloadBegan)
	if err != nil || !resp.OK {
		t.Errorf("reload --wait during the flood: %v %+v", err, resp)
	}
	reloadDoneAt := sentGood.Load() + sentBad.Load()
	testkit.Recv(t, floodDone, floodBound, "the flood to end")
	floodTook := time.Since(floodStart)
	<-probeDone
	close(floodErr)
	for err := range floodErr {
		t.Errorf("flood sender: %v", err)
	}
	nGood, nBad := float64(sentGood.Load()), float64(sentBad.Load())
	if nGood+nBad != float64(flood) {
		t.Errorf("flood: sent %v of %d datagrams within %s", nGood+nBad, flood, floodBound)
	}
	t.Logf("flood: %d datagrams in %s (%.0f/s); reload --wait in %s, from datagram %d to %d; %d probes, slowest status %s, /health/live %s",
		int64(nGood+nBad), floodTook.Round(time.Millisecond), (nGood+nBad)/floodTook.Seconds(), reloadTook.Round(time.Millisecond), reloadAt, reloadDoneAt, probes, worstStatus, worstLive)
	probeMu.Lock()
	if probes == 0 {
		t.Error("no probe ran during the flood")
	}
	for _, e := range probeErrs {
		t.Errorf("during the flood: %s", e)
	}
	probeMu.Unlock()

	// Every datagram counted, exactly, once the master has read its queue.
	wantIgnored, wantDropped = wantIgnored+nGood, wantDropped+nBad
	testkit.WaitFor(t, 10*time.Second, "every flood datagram counted", func() bool {
		_, fams = scrape(t, maddr)
		return chaosNotifySum(fams, "supervisor_notify_datagrams_ignored_total") >= wantIgnored &&
			chaosNotifySum(fams, "supervisor_notify_datagrams_dropped_total") >= wantDropped
	})
	// A stopping example-app worker sends STOPPING=1, maybe an X_REQUESTS
	// report, and a last X_REQUESTS before it exits; queued behind the
	// flood, they may be read once it is reaped, from a sender that is no
	// worker any more: ignored too. The reload stops 2 workers.
	const lateFromOld = 2 * 3
	ignored, dropped := chaosNotifySum(fams, "supervisor_notify_datagrams_ignored_total"), chaosNotifySum(fams, "supervisor_notify_datagrams_dropped_total")
	if ignored > wantIgnored+lateFromOld || dropped != wantDropped {
		t.Errorf("after the flood: ignored %v, dropped %v; want %v (+ at most %d from the stopped workers) and exactly %v",
			ignored, dropped, wantIgnored, lateFromOld, wantDropped)
	}
	t.Logf("ignored %v (%v late from the stopped workers), dropped %v", ignored, ignored-wantIgnored, dropped)

	// The reload's workers and nothing else: two new ready workers of
	// generation 2, two reload starts, two stopped exits, no crash, no
	// replacement, none of the claims.
	var final *supervisor.Status
	testkit.WaitFor(t, 30*time.Second, "the old generation gone", func() bool {
		final = p.controlStatus()
		return len(final.Pool) == 2
	})
	checkPool(final, "after the flood")
	for _, wi := range final.Pool {
		if wi.Generation != 2 {
			t.Errorf("after the reload: worker %+v, want generation 2", wi)
		}
	}
	_, fams = scrape(t, maddr)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"supervisor_worker_starts_total", nil, starts0 + 2},
		{"supervisor_worker_starts_total", []string{"reason", "reload"}, 2},
		{"supervisor_worker_exits_total", []string{"how", "stopped"}, 2},
		{"supervisor_worker_exits_total", []string{"how", "crashed"}, 0},
		{"supervisor_reloads_total", []string{"result", "succeeded"}, 1},
	} {
		if got := chaosNotifySum(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := sampleOr0(fams, "supervisor_worker_requests_total"); got >= requestsClaim {
		t.Errorf("supervisor_worker_requests_total = %v: a claimed X_REQUESTS counted", got)
	}
	if l := p.findLog("worker is leaving on its own; replacing it"); l != nil {
		t.Errorf("a claimed STOPPING=1 counted for a worker: %v", l)
	}
	ok, failed := stopLoad()
	loadStopped = true
	if failed != 0 || ok == 0 {
		t.Errorf("light load: %d requests failed, %d succeeded; want none failed", failed, ok)
	}

	select {
	case <-p.done:
		t.Fatalf("the master exited during the abuse: %v", p.status)
	default:
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
	if _, err := os.Lstat(filepath.Dir(notifyAddr)); !os.IsNotExist(err) {
		t.Errorf("notify directory after the master exited: %v, want it removed", err)
	}
}

// sampleOr0 is sample's value, 0 when the metric is missing.
func sampleOr0(fams map[string]*dto.MetricFamily, name string) float64 {
	v, _ := sample(fams, name)
	return v
}
