package supervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/controltest"
	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// controlPathEnv tells the control-client helper where to connect.
const controlPathEnv = "SUPERVISOR_TEST_CONTROL"

// control-client makes one status call on the control socket in
// controlPathEnv and prints the outcome as JSON on stdout.
func init() { testkit.Register("control-client", controlClientHelper) }

func controlClientHelper() int {
	resp, err := supervisor.CallControl(os.Getenv(controlPathEnv), supervisor.Request{Command: "status"}, 5*time.Second)
	out := struct {
		Response supervisor.Response `json:"response"`
		Err      string              `json:"err,omitempty"`
	}{Response: resp}
	if err != nil {
		out.Err = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

// echo answers OK with the request in Message.
func echo(req supervisor.Request) (supervisor.Response, bool) {
	b, _ := json.Marshal(req)
	return supervisor.Response{OK: true, Message: string(b)}, true
}

// rawExchange writes payload on a fresh connection and returns the answer.
func rawExchange(t *testing.T, path string, payload []byte) supervisor.Response {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	written := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		if err == nil {
			err = conn.(*net.UnixConn).CloseWrite()
		}
		written <- err
	}()
	var resp supervisor.Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		t.Fatalf("read answer: %v", err)
	}
	conn.Close()
	<-written // the write may fail once the server gave up reading: fine
	return resp
}

func noCall(t *testing.T, seen <-chan supervisor.Request) {
	t.Helper()
	select {
	case r := <-seen:
		t.Fatalf("the loop got %+v, want no call", r)
	default:
	}
}

func TestControlRoundTrip(t *testing.T) {
	status := &supervisor.Status{Pid: 42, Phase: "running", Generation: 3, Target: 3, Workers: 2, Ready: 2,
		Started: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Pool:    []supervisor.WorkerInfo{{Pid: 100, Slot: 0, Generation: 3, State: "ready", Requests: 7, Status: "serving"}}}
	s, seen := controltest.Serve(t, func(req supervisor.Request) (supervisor.Response, bool) {
		if req.Command == "status" {
			return supervisor.Response{OK: true, Status: status}, true
		}
		return echo(req)
	})
	for _, req := range []supervisor.Request{
		{Command: "reload"},
		{Command: "reload", Wait: true, Timeout: "5m0s"},
		{Command: "scale", Scale: "3"},
		{Command: "scale", Scale: "+2"},
		{Command: "scale", Scale: "-1"},
		{Command: "stop"},
		{Command: "stop", Fast: true},
	} {
		resp, err := supervisor.CallControl(s.Path(), req, 5*time.Second)
		if err != nil {
			t.Fatalf("%+v: %v", req, err)
		}
		want, _ := echo(req)
		if !reflect.DeepEqual(resp, want) {
			t.Errorf("%+v: got %+v, want %+v", req, resp, want)
		}
		select {
		case got := <-seen:
			if got != req {
				t.Errorf("loop got %+v, want %+v", got, req)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%+v: the loop got nothing", req)
		}
	}
	resp, err := supervisor.CallControl(s.Path(), supervisor.Request{Command: "status"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.OK || !reflect.DeepEqual(resp.Status, status) {
		t.Fatalf("status: got %+v, want OK and %+v", resp, status)
	}
}

// A failed command comes back as OK false with the loop's reason, not as an
// error of the exchange.
func TestControlFailureIsAnAnswer(t *testing.T) {
	why := "reload rolled back: worker 0 (pid 123) exited with status 3 before it was ready"
	s, _ := controltest.Serve(t, func(supervisor.Request) (supervisor.Response, bool) { return supervisor.Response{Error: why}, true })
	resp, err := supervisor.CallControl(s.Path(), supervisor.Request{Command: "reload", Wait: true}, 5*time.Second)
	if err != nil || resp.OK || resp.Error != why {
		t.Fatalf("got %+v, %v; want OK false with %q", resp, err, why)
	}
}

func TestControlSocketMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "sub") // missing: created
	path := filepath.Join(dir, "control.sock")
	old := syscall.Umask(0) // the mode must not depend on the umask
	s, err := supervisor.ListenControl(path)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("created directory mode %v, want 0700", di.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %v, want only control.sock (no temporary left)", entries)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close: %v, want the socket removed", err)
	}
}

func TestControlStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	dead.Close() // a master that died: the file stays, nobody listens
	if _, err := supervisor.CallControl(path, supervisor.Request{Command: "status"}, time.Second); err == nil ||
		err.Error() != "no master running at "+path+" (stale socket)" {
		t.Fatalf("CallControl on a stale socket: %v", err)
	}
	s, err := supervisor.ListenControl(path)
	if err != nil {
		t.Fatalf("ListenControl over a stale socket: %v", err)
	}
	defer s.Close()
	calls, _ := controltest.FakeLoop(t, echo)
	s.Serve(calls)
	if resp, err := supervisor.CallControl(path, supervisor.Request{Command: "stop"}, 5*time.Second); err != nil || !resp.OK {
		t.Fatalf("after replacing the stale socket: %+v, %v", resp, err)
	}
}

func TestControlLiveSocketRefused(t *testing.T) {
	s, _ := controltest.Serve(t, echo)
	_, err := supervisor.ListenControl(s.Path())
	want := fmt.Sprintf("control socket %s: another master is running (pid %d): give each master its own --control (or --pid)", s.Path(), os.Getpid())
	if err == nil || err.Error() != want {
		t.Fatalf("second ListenControl: %v, want %q", err, want)
	}
	if resp, err := supervisor.CallControl(s.Path(), supervisor.Request{Command: "status"}, 5*time.Second); err != nil || !resp.OK {
		t.Fatalf("the first server after the refusal: %+v, %v", resp, err)
	}
}

func TestControlNotASocketKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := supervisor.ListenControl(path)
	if err == nil || !strings.Contains(err.Error(), "exists and is not a socket") {
		t.Fatalf("ListenControl over a regular file: %v, want 'exists and is not a socket'", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Fatalf("the file is now %q, %v; want it untouched", b, err)
	}
	if _, err := supervisor.CallControl(path, supervisor.Request{Command: "status"}, time.Second); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("CallControl on a regular file: %v, want 'not a socket'", err)
	}
}

func TestControlForeignDirectoryRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a directory owned by nobody")
	}
	dir := filepath.Join(t.TempDir(), "theirs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := supervisor.ListenControl(filepath.Join(dir, "control.sock"))
	if err == nil || !strings.Contains(err.Error(), "is owned by uid 65534") {
		t.Fatalf("ListenControl in nobody's directory: %v, want 'is owned by uid 65534'", err)
	}
}

func TestControlBadRequests(t *testing.T) {
	s, seen := controltest.Serve(t, echo)
	cases := []struct {
		name, payload, want string
	}{
		{"not JSON", "{nope", "bad request: not a JSON request"},
		{"empty", "", "bad request: empty request"},
		{"unknown command", `{"command":"explode"}`, `bad request: unknown command "explode"`},
		{"no command", `{}`, `bad request: unknown command ""`},
		{"bad scale", `{"command":"scale","scale":"lots"}`, `bad request: want N, +N or -N, got "lots"`},
		{"zero scale", `{"command":"scale","scale":"0"}`, "bad request: 0: the pool needs at least 1 worker"},
		{"bad timeout", `{"command":"reload","wait":true,"timeout":"soon"}`, `bad request: timeout "soon"`},
		{"wrong type", `{"command":"stop","fast":"yes"}`, "bad request: not a JSON request"},
		{"oversized", `{"command":"status","message":"` + strings.Repeat("x", 70<<10) + `"}`, "bad request: larger than 64 KiB"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := rawExchange(t, s.Path(), []byte(tc.payload))
			if resp.OK || !strings.HasPrefix(resp.Error, tc.want) {
				t.Fatalf("got %+v, want OK false and an error starting %q", resp, tc.want)
			}
			noCall(t, seen)
		})
	}
}

// A client that connects and sends nothing is answered after the read
// timeout at the latest; Close does not wait for it.
func TestControlCloseEndsEverything(t *testing.T) {
	s, seen := controltest.Serve(t, func(supervisor.Request) (supervisor.Response, bool) { return supervisor.Response{}, false }) // never answers
	path := s.Path()

	idle, err := net.Dial("unix", path) // sends nothing
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	waiting := make(chan error, 1) // a reload --wait the loop never answers
	go func() {
		resp, err := supervisor.CallControl(path, supervisor.Request{Command: "reload", Wait: true}, 0)
		if err == nil && !strings.Contains(resp.Error, "shutting down") {
			err = fmt.Errorf("got %+v, want an answer saying the master is shutting down", resp)
		}
		waiting <- err
	}()
	select {
	case <-seen:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop never got the reload")
	}

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Close still blocked after 3s")
	}
	select {
	case err := <-waiting:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting client got nothing after Close")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after Close: %v, want the socket removed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := supervisor.CallControl(path, supervisor.Request{Command: "status"}, time.Second); err == nil ||
		!strings.HasPrefix(err.Error(), "no master running: control socket "+path+" not found") {
		t.Fatalf("CallControl after Close: %v", err)
	}
	// goleak in TestMain checks that no goroutine outlived Close.
}

// An answer the loop gave just before Close still reaches the client.
func TestControlAnswerBeforeCloseWins(t *testing.T) {
	s, err := supervisor.ListenControl(filepath.Join(t.TempDir(), "control.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	calls := make(chan supervisor.Call)
	s.Serve(calls)
	got := make(chan supervisor.Response, 1)
	go func() {
		resp, _ := supervisor.CallControl(s.Path(), supervisor.Request{Command: "stop"}, 5*time.Second)
		got <- resp
	}()
	select {
	case c := <-calls:
		c.Reply <- supervisor.Response{OK: true, Message: "stopping"}
	case <-time.After(5 * time.Second):
		t.Fatal("the loop got no call")
	}
	s.Close() // as the master does right after answering a stop
	select {
	case resp := <-got:
		if !resp.OK || resp.Message != "stopping" {
			t.Fatalf("got %+v, want the loop's answer", resp)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer")
	}
}

// Close leaves a file that replaced the socket alone, and so does a server
// whose socket was handed on (SetUnlinkOnClose(false)).
func TestControlCloseRemovesOnlyItsOwn(t *testing.T) {
	s, _ := controltest.Serve(t, echo)
	if err := os.Remove(s.Path()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path(), []byte("other"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Path()); err != nil {
		t.Fatalf("Close removed a file that was not its socket: %v", err)
	}

	s2, _ := controltest.Serve(t, echo)
	s2.SetUnlinkOnClose(false)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(s2.Path()); err != nil {
		t.Fatalf("Close with SetUnlinkOnClose(false) removed the socket: %v", err)
	}
}

func TestCallControlErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	_, err := supervisor.CallControl(missing, supervisor.Request{Command: "status"}, time.Second)
	if want := "no master running: control socket " + missing + " not found (start one, or give --control)"; err == nil || err.Error() != want {
		t.Errorf("missing socket: %v, want %q", err, want)
	}

	s, _ := controltest.Serve(t, func(supervisor.Request) (supervisor.Response, bool) { return supervisor.Response{}, false })
	start := time.Now()
	_, err = supervisor.CallControl(s.Path(), supervisor.Request{Command: "reload", Wait: true}, 200*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) || err.Error() != "control socket "+s.Path()+": no answer within 200ms" {
		t.Errorf("no answer: %v, want 'no answer within 200ms' matching os.ErrDeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("CallControl took %s with a 200ms timeout", d)
	}
}

// As root: the socket's mode keeps other users out, and SO_PEERCRED does
// too where the mode would not (here: chmod 0666).
func TestControlPeerCredentials(t *testing.T) {
	testkit.MaySkip("control-client")
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as nobody")
	}
	// A directory nobody may enter, for the socket (t.TempDir's are 0700).
	dir, err := os.MkdirTemp("", "control-cred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "control.sock")
	s, err := supervisor.ListenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	calls, seen := controltest.FakeLoop(t, echo)
	s.Serve(calls)

	asNobody := func() (supervisor.Response, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		bin := testkit.PublicBinary(t) // the test binary's own directory is closed to nobody
		cmd := testkit.Command(t, ctx, "control-client", controlPathEnv+"="+path)
		cmd.Path, cmd.Args = bin, []string{bin}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		var got struct {
			Response supervisor.Response `json:"response"`
			Err      string              `json:"err"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("helper output %q: %v", out, err)
		}
		return got.Response, got.Err
	}

	// 0600: connect itself fails.
	if _, errText := asNobody(); errText != "control socket "+path+": permission denied: run as root or as the master's user" {
		t.Errorf("as nobody on the 0600 socket: error %q", errText)
	}
	// 0666: the server refuses by peer credentials.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	resp, errText := asNobody()
	if errText != "" || resp.OK || resp.Error != "permission denied: uid 65534 is neither root nor the master's user" {
		t.Errorf("as nobody on a 0666 socket: %+v, error %q; want the server's permission denied", resp, errText)
	}
	noCall(t, seen)
	// Root still gets through.
	if resp, err := supervisor.CallControl(path, supervisor.Request{Command: "status"}, 5*time.Second); err != nil || !resp.OK {
		t.Errorf("as root: %+v, %v", resp, err)
	}
}

func TestDefaultControlPath(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if got, want := supervisor.DefaultControlPath("/run/app.pid"), "/run/user/1000/supervisor/control.sock"; got != want {
		t.Errorf("with XDG_RUNTIME_DIR: %q, want %q", got, want)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	for pid, want := range map[string]string{
		"/run/app.pid":   "/run/app.sock",
		"/var/run/myapp": "/var/run/myapp.sock",
		"app.pid":        "app.sock",
		"/run/x.sock":    "/run/x.sock.sock",
		"/run/.pid":      "/run/.pid.sock",
	} {
		if got := supervisor.DefaultControlPath(pid); got != want {
			t.Errorf("pid file %q: %q, want %q", pid, got, want)
		}
	}
	want := "/run/supervisor/control.sock"
	if uid := os.Geteuid(); uid != 0 {
		want = filepath.Join(os.TempDir(), "supervisor-"+strconv.Itoa(uid), "control.sock")
	}
	if got := supervisor.DefaultControlPath(""); got != want {
		t.Errorf("neither: %q, want %q", got, want)
	}
}

func TestParseScale(t *testing.T) {
	cases := []struct {
		in       string
		n        int
		relative bool
		err      string
	}{
		{"3", 3, false, ""},
		{"+2", 2, true, ""},
		{"-1", -1, true, ""},
		{"0", 0, false, "0: the pool needs at least 1 worker"},
		{"+0", 0, false, "+0: nothing to change"},
		{"-0", 0, false, "-0: nothing to change"},
		{"", 0, false, `want N, +N or -N, got ""`},
		{"x", 0, false, `want N, +N or -N, got "x"`},
		{"++2", 0, false, `want N, +N or -N, got "++2"`},
		{"+-2", 0, false, `want N, +N or -N, got "+-2"`},
		{"1.5", 0, false, `want N, +N or -N, got "1.5"`},
		{" 2", 0, false, `want N, +N or -N, got " 2"`},
	}
	for _, tc := range cases {
		n, rel, err := supervisor.ParseScale(tc.in)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if n != tc.n || rel != tc.relative || got != tc.err {
			t.Errorf("ParseScale(%q) = %d, %v, %q; want %d, %v, %q", tc.in, n, rel, got, tc.n, tc.relative, tc.err)
		}
	}
}
