package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serveHelper is a Go app that uses the helper: Listeners, then Serve.
func serveHelper() int {
	lns, err := Listeners()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := Serve(&http.Server{Handler: helloHandler(), ReadHeaderTimeout: 10 * time.Second}, lns); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// plainShutdownHelper is the same app written the usual Go way: Serve, and
// Shutdown on SIGTERM (the trap of DESIGN §5).
func plainShutdownHelper() int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	lns, err := Listeners()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	srv := &http.Server{Handler: helloHandler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { served <- srv.Serve(ln) }()
	}
	_ = Ready()
	<-term
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return 1
	}
	for range lns {
		<-served
	}
	return 0
}

// listenersHelper writes what Listeners returned to the file $OUT as JSON.
func listenersHelper() int {
	lns, err := Listeners()
	res := map[string]any{"n": len(lns), "listen_fds_after": os.Getenv("LISTEN_FDS")}
	if err != nil {
		res["err"] = err.Error()
	}
	if len(lns) > 0 {
		res["addr"] = lns[0].Addr().String()
	}
	b, _ := json.Marshal(res)
	if os.WriteFile(os.Getenv("OUT"), b, 0o600) != nil {
		return 2
	}
	return 0
}

func helloHandler() http.Handler {
	pid := os.Getpid()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pid %d\n", pid)
	})
}

// get sends n requests to url and wants each answered by pid.
func get(t *testing.T, url string, n, pid int) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	want := fmt.Sprintf("hello from pid %d\n", pid)
	for range n {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != want {
			t.Fatalf("GET %s: %q %v, want %q", url, b, err, want)
		}
	}
}

// Serve speaks the whole protocol: READY=1; WATCHDOG=1 at half of
// WATCHDOG_USEC; X_REQUESTS=N batched, only when changed; and on SIGTERM
// STOPPING=1, then the final X_REQUESTS, then exit 0.
func TestServeSpeaksTheProtocol(t *testing.T) {
	m := newTinyMaster(t)
	w := m.startHelper("serve", "WATCHDOG_USEC=200000")
	w.await(10*time.Second, "READY=1", func(m Message) bool { return m.Ready })

	beats := 0
	for _, msg := range w.collect(time.Second) {
		if msg.HasRequests {
			t.Errorf("X_REQUESTS=%d before any request", msg.Requests)
		}
		if msg.Watchdog {
			beats++
		}
	}
	if beats < 4 || beats > 12 {
		t.Errorf("%d WATCHDOG=1 in 1s with WATCHDOG_USEC=200000, want about 10 (every 100ms)", beats)
	}

	// 60 requests paced over about 1.2s: reports follow within 250ms, at
	// most about 4 a second.
	const n = 60
	start := time.Now()
	for range n {
		get(t, m.url, 1, w.p.Pid)
		time.Sleep(20 * time.Millisecond) // pacing the load, not waiting for a condition
	}
	reports, last := 0, int64(0)
	deadline := time.After(time.Second)
	for last < n {
		select {
		case nt := <-m.msgs:
			if !w.from(nt) || !nt.Msg.HasRequests {
				continue
			}
			if nt.Msg.Requests < last {
				t.Errorf("X_REQUESTS went down: %d after %d", nt.Msg.Requests, last)
			}
			reports, last = reports+1, nt.Msg.Requests
		case <-deadline:
			t.Fatalf("X_REQUESTS=%d 1s after %d requests, want %d", last, n, n)
		}
	}
	took := time.Since(start)
	if limit := int(took/reportInterval) + 2; reports > limit {
		t.Errorf("%d X_REQUESTS reports in %s, want at most %d (one per %s)", reports, took, limit, reportInterval)
	}
	if last != n {
		t.Errorf("X_REQUESTS=%d, want %d", last, n)
	}
	for _, msg := range w.collect(3 * reportInterval) {
		if msg.HasRequests {
			t.Errorf("X_REQUESTS=%d again with no new request, want reports only on change", msg.Requests)
		}
	}

	if err := w.p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	w.await(5*time.Second, "STOPPING=1", func(m Message) bool { return m.Stopping })
	if got := w.await(5*time.Second, "final X_REQUESTS", func(m Message) bool { return m.HasRequests }); got.Requests != n {
		t.Errorf("final X_REQUESTS=%d, want %d", got.Requests, n)
	}
	if ex := w.wait(5 * time.Second); !ex.Status.Exited() || ex.Status.ExitStatus() != 0 {
		t.Errorf("worker %s on SIGTERM, want exit status 0", Describe(ex.Status))
	}
}

// Under the supervisor Listeners returns the inherited socket, whatever
// PORT says, and unsets LISTEN_FDS.
func TestListenersInherited(t *testing.T) {
	m := newTinyMaster(t)
	out := filepath.Join(t.TempDir(), "out.json")
	w := m.startHelper("listeners", "OUT="+out, "PORT=1")
	if ex := w.wait(10 * time.Second); !ex.Status.Exited() || ex.Status.ExitStatus() != 0 {
		t.Fatalf("helper %s", Describe(ex.Status))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		N              int
		Addr, Err      string
		ListenFdsAfter string `json:"listen_fds_after"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if want := m.url[len("http://"):]; got.N != 1 || got.Addr != want || got.Err != "" || got.ListenFdsAfter != "" {
		t.Errorf("Listeners() = %d listeners on %q, err %q, LISTEN_FDS after %q; want 1 on %q (the inherited one), LISTEN_FDS unset",
			got.N, got.Addr, got.Err, got.ListenFdsAfter, want)
	}
}

// Standalone (nothing inherited) Listeners listens on :$PORT, plain TCP.
func TestListenersStandalone(t *testing.T) {
	t.Setenv("LISTEN_PID", "")
	t.Setenv("LISTEN_FDS", "")
	t.Setenv("PORT", "0")
	lns, err := Listeners()
	if err != nil {
		t.Fatal(err)
	}
	for _, ln := range lns {
		defer ln.Close()
	}
	if len(lns) != 1 {
		t.Fatalf("got %d listeners, want 1", len(lns))
	}
	a, ok := lns[0].Addr().(*net.TCPAddr)
	if !ok || !a.IP.IsUnspecified() || a.Port == 0 {
		t.Errorf("listening on %v, want every address, a real port", lns[0].Addr())
	}
	raw, err := lns[0].(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	proto := 0
	_ = raw.Control(func(fd uintptr) { proto, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) })
	if proto != unix.IPPROTO_TCP {
		t.Errorf("SO_PROTOCOL = %d, want %d (plain TCP, not MPTCP)", proto, unix.IPPROTO_TCP)
	}
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(a.Port))
	if err != nil {
		t.Fatalf("dial the standalone listener: %v", err)
	}
	c.Close()
}

func TestStandaloneAddr(t *testing.T) {
	for port, want := range map[string]string{"": ":8080", "9000": ":9000", "0": ":0"} {
		if got := standaloneAddr(func(string) string { return port }); got != want {
			t.Errorf("PORT=%q: %q, want %q", port, got, want)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	const pid = 42
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
	}{
		{"", "", 0},
		{"2000000", "", time.Second},
		{"2000000", "42", time.Second},
		{"2000000", "43", 0}, // meant for another process
		{"200000", "", 100 * time.Millisecond},
		{"1", "", time.Millisecond},
		{"0", "", 0},
		{"-5", "", 0},
		{"1s", "", 0},
		{"99999999999999999999", "", 0},
	} {
		env := map[string]string{"WATCHDOG_USEC": tc.usec, "WATCHDOG_PID": tc.pid}
		if got := watchdogInterval(func(k string) string { return env[k] }, pid); got != tc.want {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %s, want %s", tc.usec, tc.pid, got, tc.want)
		}
	}
}
