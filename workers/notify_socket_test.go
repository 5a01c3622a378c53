package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"golang.org/x/sys/unix"
)

const notifyWait = 5 * time.Second

func listenTestNotify(t *testing.T) *NotifySocket {
	t.Helper()
	addr := fmt.Sprintf("@supervisor-test-%d-%x", os.Getpid(), rand.Uint64())
	s, err := ListenNotify(addr)
	if err != nil {
		t.Fatalf("ListenNotify(%q): %v", addr, err)
	}
	t.Cleanup(func() { s.Close() })
	if got := s.Addr(); got != addr {
		t.Fatalf("Addr() = %q, want %q", got, addr)
	}
	return s
}

type notifyReadResult struct {
	n   Notification
	err error
}

// readNotifyWithin calls Read once and fails the test if it does not return a
// notification within d. On a timeout the test's cleanup closes the socket,
// which ends the reading goroutine.
func readNotifyWithin(t *testing.T, s *NotifySocket, d time.Duration) Notification {
	t.Helper()
	ch := make(chan notifyReadResult, 1)
	go func() {
		n, err := s.Read()
		ch <- notifyReadResult{n, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Read: %v", r.err)
		}
		return r.n
	case <-time.After(d):
		t.Fatalf("Read: no notification within %v", d)
		return Notification{}
	}
}

func TestNotifySocketReceivesFromNotify(t *testing.T) {
	s := listenTestNotify(t)
	if err := Notify(s.Addr(), "READY=1\nSTATUS=up\nX_REQUESTS=5\n"); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	got := readNotifyWithin(t, s, notifyWait)
	want := Notification{
		PID:  os.Getpid(),
		PGID: unix.Getpgrp(),
		Msg:  Message{Ready: true, Status: "up", HasStatus: true, Requests: 5, HasRequests: true},
	}
	if got != want {
		t.Errorf("Read\n got %+v\nwant %+v", got, want)
	}
	if d := s.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}
}

func TestNotifyEmptyAddrIsNoop(t *testing.T) {
	if err := Notify("", "READY=1"); err != nil {
		t.Errorf("Notify(\"\") = %v, want nil", err)
	}
}

func TestNotifyNobodyListening(t *testing.T) {
	addr := fmt.Sprintf("@supervisor-test-none-%x", rand.Uint64())
	if err := Notify(addr, "READY=1"); err == nil {
		t.Errorf("Notify(%q) with no listener = nil, want an error", addr)
	}
}

func TestNotifySocketDropsBadDatagrams(t *testing.T) {
	s := listenTestNotify(t)
	for _, bad := range []string{
		"not a message",
		"STATUS=" + strings.Repeat("x", MaxMessageSize), // MaxMessageSize+7 bytes
		"READY=1\x00",
		"X_REQUESTS=-3",
	} {
		if err := Notify(s.Addr(), bad); err != nil {
			t.Fatalf("Notify(%.20q): %v", bad, err)
		}
	}
	if err := Notify(s.Addr(), "WATCHDOG=1"); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	got := readNotifyWithin(t, s, notifyWait)
	if want := (Message{Watchdog: true}); got.Msg != want {
		t.Errorf("Read().Msg = %+v, want %+v", got.Msg, want)
	}
	if got, want := s.Dropped(), uint64(4); got != want {
		t.Errorf("Dropped() = %d, want %d", got, want)
	}
}

func TestNotifySocketClosesReceivedFDs(t *testing.T) {
	s := listenTestNotify(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	to := &unix.SockaddrUnix{Name: s.Addr()}
	creds := unix.UnixCredentials(&unix.Ucred{Pid: int32(os.Getpid()), Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())})
	wfd := int(w.Fd())
	many := make([]int, 20) // more fds than Read's control buffer holds: MSG_CTRUNC
	for i := range many {
		many[i] = wfd
	}
	sends := []struct {
		payload string
		fds     []int
	}{
		{"malformed", []int{wfd}},                             // dropped: parse error
		{strings.Repeat("x", MaxMessageSize+100), []int{wfd}}, // dropped: truncated
		{"READY=1", many},                                     // dropped: control data truncated
		{"BARRIER=1", []int{wfd, wfd}},                        // accepted
	}
	for _, snd := range sends {
		oob := append(append([]byte{}, creds...), unix.UnixRights(snd.fds...)...)
		if err := unix.Sendmsg(sock, []byte(snd.payload), oob, to, 0); err != nil {
			t.Fatalf("sendmsg %.20q with %d fds: %v", snd.payload, len(snd.fds), err)
		}
	}
	got := readNotifyWithin(t, s, notifyWait)
	if want := (Notification{PID: os.Getpid(), PGID: unix.Getpgrp(), Msg: Message{Barrier: true}}); got != want {
		t.Errorf("Read\n got %+v\nwant %+v", got, want)
	}
	if got, want := s.Dropped(), uint64(3); got != want {
		t.Errorf("Dropped() = %d, want %d", got, want)
	}

	// Our copy is the last write end unless the receiver kept one.
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.SetReadDeadline(time.Now().Add(notifyWait)); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read end of the pipe: (%d, %v), want EOF: the receiver kept a passed fd open", n, err)
	}
}

// notify-stopping is the sender TestNotifySocketSenderGone runs as a child
// process: it sends STOPPING=1 to $SUPERVISOR_TEST_NOTIFY_HELPER and exits.
func init() {
	testkit.Register("notify-stopping", func() int {
		if err := Notify(os.Getenv("SUPERVISOR_TEST_NOTIFY_HELPER"), "STOPPING=1"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	})
}

func TestNotifySocketSenderGone(t *testing.T) {
	s := listenTestNotify(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := testkit.Command(t, ctx, "notify-stopping", "SUPERVISOR_TEST_NOTIFY_HELPER="+s.Addr(),
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0")) // a -race child otherwise sleeps 1 s at exit
	cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, "NOTIFY_SOCKET=") })
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	got := readNotifyWithin(t, s, notifyWait)
	want := Notification{PID: cmd.Process.Pid, PGID: 0, Msg: Message{Stopping: true}}
	if got != want {
		t.Errorf("Read from an exited sender\n got %+v\nwant %+v", got, want)
	}
}

func environWithout(key string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, key+"=") {
			env = append(env, kv)
		}
	}
	return env
}

// TestNotifySocketSystemdNotify talks to the real systemd-notify. Debian's
// (systemd 252) sends with its parent's pid and then, unless --no-block,
// sends BARRIER=1 with a pipe fd and waits up to 5 s for it to be closed; it
// has no --barrier option, so the default mode exercises the barrier.
func TestNotifySocketSystemdNotify(t *testing.T) {
	const bin = "/usr/bin/systemd-notify"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s is not installed: %v", bin, err)
	}
	s := listenTestNotify(t)
	notes := make(chan Notification, 8)
	readErr := make(chan error, 1)
	go func() {
		for {
			n, err := s.Read()
			if err != nil {
				readErr <- err
				return
			}
			notes <- n
		}
	}()

	cmd := exec.Command(bin, "--ready", "--status=hello")
	cmd.Env = append(environWithout("NOTIFY_SOCKET"), "NOTIFY_SOCKET="+s.Addr())
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	reaped := false
	defer func() {
		if !reaped {
			cmd.Process.Kill()
			<-exited
		}
	}()

	select {
	case n := <-notes:
		if want := (Message{Ready: true, Status: "hello", HasStatus: true}); n.Msg != want {
			t.Errorf("first message = %+v, want %+v", n.Msg, want)
		}
		if n.PID != os.Getpid() && !(os.Geteuid() != 0 && n.PID == cmd.Process.Pid) {
			t.Errorf("PID = %d, want the test process %d (systemd-notify sends its parent's pid)", n.PID, os.Getpid())
		}
		if n.PGID != unix.Getpgrp() {
			t.Errorf("PGID = %d, want %d", n.PGID, unix.Getpgrp())
		}
	case err := <-readErr:
		t.Fatalf("Read: %v", err)
	case <-time.After(notifyWait):
		t.Fatalf("no notification from systemd-notify within %v; its output: %s", notifyWait, out.String())
	}

	const prompt = 2 * time.Second
	select {
	case err := <-exited:
		reaped = true
		if err != nil {
			t.Fatalf("systemd-notify: %v; output: %s", err, out.String())
		}
		if el := time.Since(start); el > prompt {
			t.Errorf("systemd-notify took %v, want < %v: the barrier fd was not closed at once", el, prompt)
		}
	case <-time.After(time.Until(start.Add(prompt))):
		t.Fatalf("systemd-notify still running after %v: the barrier fd was not closed at once", prompt)
	}

	// Its barrier datagram was read before it could exit.
	s.Close()
	if err := <-readErr; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v, want net.ErrClosed", err)
	}
	barrier := false
	for len(notes) > 0 {
		barrier = barrier || (<-notes).Msg.Barrier
	}
	if !barrier {
		t.Errorf("no BARRIER=1 from systemd-notify; systemd 246 and later send one unless --no-block")
	}
}

func TestNotifySocketCloseUnblocksRead(t *testing.T) {
	s := listenTestNotify(t)
	done := make(chan error, 1)
	go func() {
		_, err := s.Read()
		done <- err
	}()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read during Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(notifyWait):
		t.Fatalf("Read still blocked %v after Close", notifyWait)
	}
	if _, err := s.Read(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v, want net.ErrClosed", err)
	}
	if err := s.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
}

func TestNotifySocketPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")

	// A stale socket file (bound, then its owner closed without unlinking).
	stale, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	stale.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket file: %v", err)
	}

	s, err := ListenNotify(path)
	if err != nil {
		t.Fatalf("ListenNotify over a stale socket: %v", err)
	}
	defer s.Close()
	if s.Addr() != path {
		t.Errorf("Addr() = %q, want %q", s.Addr(), path)
	}
	if _, err := ListenNotify(path); err == nil {
		t.Errorf("second ListenNotify(%q) while the first is live = nil error, want an error", path)
	}
	if err := Notify(path, "READY=1"); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if got := readNotifyWithin(t, s, notifyWait); !got.Msg.Ready || got.PID != os.Getpid() {
		t.Errorf("Read = %+v, want READY from pid %d", got, os.Getpid())
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Close: %v, want it removed", err)
	}
}

func TestListenNotifyEmptyAddr(t *testing.T) {
	for _, addr := range []string{"", "@"} {
		if s, err := ListenNotify(addr); err == nil {
			s.Close()
			t.Errorf("ListenNotify(%q) = nil error, want an error", addr)
		}
	}
}
