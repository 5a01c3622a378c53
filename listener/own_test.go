package listener

import (
	"net/http"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseOwn(t *testing.T) {
	binds := mustParseAll(t, "127.0.0.1:8080", "unix:/run/app.sock", "127.0.0.1:0", "[::]:9000")
	for _, tc := range []struct {
		in, err string
	}{
		{"127.0.0.1:9100", ""},
		{"unix:/run/metrics.sock", ""},
		{"[::1]:9000", "--metrics [::1]:9000: the same port as --bind [::]:9000: give the metrics endpoint a port of its own, or the workers would serve it"},
		{"127.0.0.1:0", ""}, // port 0 is a port of its own, even beside a bind of the same text
		{"nonsense:port", `bad --metrics "nonsense:port": port "port" is not a number; want HOST:PORT or unix:/path, e.g. 127.0.0.1:9100`},
		{"fd://3", `bad --metrics "fd://3": the master binds this socket itself; want HOST:PORT or unix:/path, e.g. 127.0.0.1:9100`},
		{"systemd", `bad --metrics "systemd": the master binds this socket itself; want HOST:PORT or unix:/path, e.g. 127.0.0.1:9100`},
		{"127.0.0.1:08080", "--metrics 127.0.0.1:08080: the same port as --bind 127.0.0.1:8080: give the metrics endpoint a port of its own, or the workers would serve it"},
		{":8080", "--metrics :8080: the same port as --bind 127.0.0.1:8080: give the metrics endpoint a port of its own, or the workers would serve it"},
		{"127.0.0.2:8080", ""}, // another host, the same port: two sockets
		{"unix:/run/app.sock?mode=0600", "--metrics unix:/run/app.sock?mode=0600: the same socket as --bind unix:/run/app.sock: give the metrics endpoint an address of its own, or the workers would serve it"},
	} {
		a, err := ParseOwn("metrics", tc.in, binds)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ParseOwn(%q): %v", tc.in, err)
		case tc.err == "" && a.Role != "metrics":
			t.Errorf("ParseOwn(%q).Role = %q", tc.in, a.Role)
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("ParseOwn(%q) = %v\nwant %s", tc.in, err, tc.err)
		}
	}
}

// The metrics socket is kept under a key of its own, so a bind of the same
// text (127.0.0.1:0 in both) is another socket across an upgrade too; and
// serving it through Listener leaves the Socket's descriptor blocking.
func TestOwnSocketKeyAndListener(t *testing.T) {
	bind := mustParseAll(t, "127.0.0.1:0")
	own, err := ParseOwn("metrics", "127.0.0.1:0", bind)
	if err != nil {
		t.Fatal(err)
	}
	store := newMemStore()
	defer store.close()
	ss, err := Open(append(bind, own), store, Systemd{})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(ss)
	if got, want := store.keys(), []string{"listener:127.0.0.1:0", "metrics:127.0.0.1:0"}; !slices.Equal(got, want) {
		t.Errorf("store keys %q, want %q", got, want)
	}
	if ss[0].Addr == ss[1].Addr {
		t.Fatalf("bind and metrics share %s", ss[0].Addr)
	}
	ln, err := ss[1].Listener()
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	resp, err := http.Get("http://" + ss[1].Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	_ = srv.Close()
	<-done
	if ss[1].RawFD() < 0 {
		t.Error("closing the Listener closed the Socket")
	}
	if fl, err := unix.FcntlInt(uintptr(ss[0].RawFD()), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Errorf("the bind's socket flags %#x (%v): serving the metrics socket made a worker's socket non-blocking", fl, err)
	}
}
