package workers

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"golang.org/x/sys/unix"
)

// notify-send-as tries to reach $SUPERVISOR_TEST_NOTIFY_ADDR both ways a
// sender can, connect then send, and sendto on an unconnected socket, each
// with READY=1, and prints what each said ("" for success) as JSON.
func init() {
	testkit.Register("notify-send-as", func() int {
		addr := &unix.SockaddrUnix{Name: os.Getenv("SUPERVISOR_TEST_NOTIFY_ADDR")}
		res := map[string]string{}
		errText := func(err error) string {
			if err == nil {
				return ""
			}
			return err.Error()
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			res["connect"] = "socket: " + err.Error()
		} else {
			err := unix.Connect(fd, addr)
			if err == nil {
				_, err = unix.Write(fd, []byte("READY=1"))
			}
			res["connect"] = errText(err)
			unix.Close(fd)
		}
		if fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			res["sendto"] = "socket: " + err.Error()
		} else {
			res["sendto"] = errText(unix.Sendto(fd, []byte("READY=1"), 0, addr))
			unix.Close(fd)
		}
		_ = json.NewEncoder(os.Stdout).Encode(res)
		return 0
	})
}

// sendAs runs notify-send-as as uid:gid and returns what its connect and
// its sendto said ("" for success), and its pid.
func sendAs(t *testing.T, addr string, uid, gid uint32) (connect, sendto string, pid int) {
	t.Helper()
	bin := testkit.PublicBinary(t) // the test binary's own directory is closed to other users
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := testkit.Command(t, ctx, "notify-send-as", "SUPERVISOR_TEST_NOTIFY_ADDR="+addr,
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.Path, cmd.Args, cmd.Dir = bin, []string{bin}, filepath.Dir(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("notify-send-as as %d:%d: %v", uid, gid, err)
	}
	var res map[string]string
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("notify-send-as said %q: %v", out, err)
	}
	return res["connect"], res["sendto"], cmd.Process.Pid
}

// publicDir is a fresh directory anyone may enter (0755, in os.TempDir()),
// removed when the test ends: a base for ListenPrivateNotify in which only
// its own directory and socket keep other users out.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "notify-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkMode fails t unless path has this type, permission bits and owner.
func checkMode(t *testing.T, path string, typ, perm fs.FileMode, uid, gid int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Type() != typ || fi.Mode().Perm() != perm || int(st.Uid) != uid || (gid >= 0 && int(st.Gid) != gid) {
		t.Errorf("%s: mode %v owner %d:%d, want type %v, %04o, owner %d:%d", path, fi.Mode(), st.Uid, st.Gid, typ, perm, uid, gid)
	}
}

// readMarker fails t if Read returns a notification before it returns the
// one marker the test sends last: what came before it was dropped.
func readMarker(t *testing.T, s *NotifySocket, marker string) {
	t.Helper()
	if err := Notify(s.Addr(), "STATUS="+marker); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if got := readNotifyWithin(t, s, notifyWait); got.Msg.Status != marker || got.PID != os.Getpid() {
		t.Errorf("Read = %+v, want only our STATUS=%s: something before it got through", got, marker)
	}
}

// Workers of the master's own user: the socket is in a 0700 directory of
// the master's under $XDG_RUNTIME_DIR, mode 0600; the master's user
// reaches it, nobody else does (EACCES both ways), and Close removes it.
func TestPrivateNotifyOwnUser(t *testing.T) {
	testkit.MaySkip("notify-send-as")
	base := publicDir(t)
	t.Setenv("XDG_RUNTIME_DIR", base)
	s, err := ListenPrivateNotify(os.Geteuid(), os.Getegid())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dir := filepath.Dir(s.Addr())
	if filepath.Dir(dir) != base || !strings.HasPrefix(filepath.Base(dir), NotifyDirPrefix) || filepath.Base(s.Addr()) != NotifySocketName {
		t.Errorf("Addr() = %s, want %s/%s*/%s", s.Addr(), base, NotifyDirPrefix, NotifySocketName)
	}
	checkMode(t, dir, fs.ModeDir, 0o700, os.Geteuid(), -1)
	checkMode(t, s.Addr(), fs.ModeSocket, 0o600, os.Geteuid(), -1)

	if err := Notify(s.Addr(), "READY=1"); err != nil {
		t.Fatalf("Notify as the master's user: %v", err)
	}
	if got := readNotifyWithin(t, s, notifyWait); !got.Msg.Ready || got.PID != os.Getpid() {
		t.Errorf("Read = %+v, want READY=1 from pid %d", got, os.Getpid())
	}

	if os.Geteuid() == 0 {
		connect, sendto, _ := sendAs(t, s.Addr(), 65534, 65534)
		if want := syscall.EACCES.Error(); !strings.HasSuffix(connect, want) || !strings.HasSuffix(sendto, want) {
			t.Errorf("as nobody: connect %q, sendto %q; want both %q", connect, sendto, want)
		}
		readMarker(t, s, "after-nobody")
	} else {
		t.Log("not root: cannot try the socket as another user")
	}
	if d := s.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Close, %s: %v; want it removed", dir, err)
	}
}

// Workers of another user (a root master with --user nobody): the socket is
// nobody's, mode 0600, in a 0711 directory of root's under os.TempDir()
// ($XDG_RUNTIME_DIR is root's alone); nobody reaches it and is heard by its
// pid, a third user gets EACCES, and, should nobody open the socket up (it
// owns it), a third user's datagrams are dropped and counted all the same.
func TestPrivateNotifyOtherUser(t *testing.T) {
	testkit.MaySkip("notify-send-as")
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workers as another user")
	}
	t.Setenv("XDG_RUNTIME_DIR", publicDir(t))
	s, err := ListenPrivateNotify(65534, 65534)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dir := filepath.Dir(s.Addr())
	if filepath.Dir(dir) != filepath.Clean(os.TempDir()) {
		t.Errorf("Addr() = %s, want it under os.TempDir() %s", s.Addr(), os.TempDir())
	}
	checkMode(t, dir, fs.ModeDir, 0o711, 0, -1)
	checkMode(t, s.Addr(), fs.ModeSocket, 0o600, 65534, 65534)

	connect, sendto, pid := sendAs(t, s.Addr(), 65534, 65534)
	if connect != "" || sendto != "" {
		t.Fatalf("as nobody, the workers' user: connect %q, sendto %q; want both to succeed", connect, sendto)
	}
	for i := range 2 {
		if got := readNotifyWithin(t, s, notifyWait); !got.Msg.Ready || got.PID != pid {
			t.Errorf("Read %d = %+v, want READY=1 from nobody's pid %d", i, got, pid)
		}
	}

	const other = 12345 // a uid that is neither the master's nor the workers'
	connect, sendto, _ = sendAs(t, s.Addr(), other, other)
	if want := syscall.EACCES.Error(); !strings.HasSuffix(connect, want) || !strings.HasSuffix(sendto, want) {
		t.Errorf("as uid %d: connect %q, sendto %q; want both %q", other, connect, sendto, want)
	}
	readMarker(t, s, "after-other")

	// What the workers' user may do to the socket it owns.
	if err := os.Chmod(s.Addr(), 0o666); err != nil {
		t.Fatal(err)
	}
	connect, sendto, _ = sendAs(t, s.Addr(), other, other)
	if connect != "" || sendto != "" {
		t.Fatalf("as uid %d on a 0666 socket: connect %q, sendto %q; want the kernel to let both through", other, connect, sendto)
	}
	readMarker(t, s, "after-opened")
	if got := s.Dropped(); got != 2 {
		t.Errorf("Dropped() = %d, want 2: uid %d's datagrams", got, other)
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Close, %s: %v; want it removed", dir, err)
	}
}

// A base directory whose socket path would not fit sun_path gives way to
// os.TempDir() and then /tmp; the error for it says what to change.
func TestPrivateNotifyLongDir(t *testing.T) {
	long := "/" + strings.Repeat("d", 90)
	t.Setenv("XDG_RUNTIME_DIR", long)
	t.Setenv("TMPDIR", long)
	s, err := ListenPrivateNotify(os.Geteuid(), os.Getegid())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.HasPrefix(s.Addr(), "/tmp/"+NotifyDirPrefix) {
		t.Errorf("Addr() = %s, want the /tmp fallback", s.Addr())
	}
	if err := Notify(s.Addr(), "WATCHDOG=1"); err != nil {
		t.Fatal(err)
	}
	if got := readNotifyWithin(t, s, notifyWait); !got.Msg.Watchdog {
		t.Errorf("Read = %+v, want WATCHDOG=1", got)
	}
	_, err = listenPrivateIn(long, os.Geteuid(), os.Getegid(), true)
	if err == nil || !strings.Contains(err.Error(), "107") || !strings.Contains(err.Error(), "TMPDIR") {
		t.Errorf("listenPrivateIn(%d-byte dir) = %v, want an error naming the 107-byte limit and TMPDIR", len(long), err)
	}
}

// A base directory that workers of another user cannot pass through is
// refused with an error that says so; another candidate is taken.
func TestPrivateNotifyUnreachableDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workers as another user")
	}
	closed := t.TempDir() // 0700
	_, err := listenPrivateIn(closed, 65534, 65534, false)
	if err == nil || !strings.Contains(err.Error(), "may not pass through") {
		t.Errorf("listenPrivateIn(a 0700 dir, nobody) = %v, want an error saying nobody may not pass through it", err)
	}
	t.Setenv("TMPDIR", closed)
	s, err := ListenPrivateNotify(65534, 65534)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.HasPrefix(s.Addr(), "/tmp/"+NotifyDirPrefix) {
		t.Errorf("Addr() = %s, want the /tmp fallback", s.Addr())
	}
}

// RemoveStaleNotifyDirs removes exactly the directories a dead master left:
// this user's, named so, holding a socket nobody is bound to and nothing
// else. ListenPrivateNotify does it where it makes its own.
func TestRemoveStaleNotifyDirs(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, sock string, extra bool) string {
		t.Helper()
		dir := filepath.Join(base, name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, NotifySocketName)
		switch sock {
		case "stale", "live":
			c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			if sock == "stale" {
				c.Close() // a datagram socket's file stays: as after a SIGKILL
			} else {
				t.Cleanup(func() { c.Close() })
			}
		case "file":
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if extra {
			if err := os.WriteFile(filepath.Join(dir, "keep"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	stale := mk(NotifyDirPrefix+"1", "stale", false)
	keep := []string{
		mk(NotifyDirPrefix+"2", "live", false),  // a running master's
		mk(NotifyDirPrefix+"3", "none", false),  // a master between MkdirTemp and bind
		mk(NotifyDirPrefix+"4", "stale", true),  // something else is in it
		mk(NotifyDirPrefix+"5", "file", false),  // not a socket
		mk("other-notify-6", "stale", false),    // not named so
		mk(NotifyDirPrefix+"7", "stale", false), // another user's (below)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(keep[len(keep)-1], 65534, 65534); err != nil {
			t.Fatal(err)
		}
	} else {
		keep = keep[:len(keep)-1]
	}
	if n := RemoveStaleNotifyDirs(base); n != 1 {
		t.Errorf("RemoveStaleNotifyDirs = %d, want 1", n)
	}
	if _, err := os.Lstat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: %v; want the stale directory removed", stale, err)
	}
	for _, dir := range keep {
		if _, err := os.Lstat(dir); err != nil {
			t.Errorf("%s: %v; want it kept", dir, err)
		}
	}

	stale = mk(NotifyDirPrefix+"8", "stale", false)
	t.Setenv("XDG_RUNTIME_DIR", base)
	s, err := ListenPrivateNotify(os.Geteuid(), os.Getegid())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Lstat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s after ListenPrivateNotify in %s: %v; want it removed", stale, base, err)
	}
	if n := RemoveStaleNotifyDirs(base); n != 0 {
		t.Errorf("RemoveStaleNotifyDirs with a live socket's directory = %d, want 0", n)
	}
}

// ReadBatch returns every datagram already queued in one call, at most max
// received per call, and drops the bad ones as Read does; a good datagram
// behind more than max bad ones still comes back.
func TestNotifySocketReadBatch(t *testing.T) {
	s := listenTestNotify(t)
	send := func(msgs ...string) {
		t.Helper()
		for _, m := range msgs {
			if err := Notify(s.Addr(), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	read := func(max int) []Notification {
		t.Helper()
		type result struct {
			b   []Notification
			err error
		}
		ch := make(chan result, 1)
		go func() {
			b, err := s.ReadBatch(nil, max)
			ch <- result{b, err}
		}()
		r := testkit.Recv(t, ch, notifyWait, "ReadBatch")
		if r.err != nil {
			t.Fatalf("ReadBatch: %v", r.err)
		}
		return r.b
	}
	statuses := func(b []Notification) string {
		var s []string
		for _, n := range b {
			s = append(s, n.Msg.Status)
		}
		return strings.Join(s, ",")
	}

	send("STATUS=1", "bad", "STATUS=2", "STATUS=3", "X_REQUESTS=-1", "STATUS=4")
	if got := statuses(read(64)); got != "1,2,3,4" {
		t.Errorf("one batch of what was queued = %q, want 1,2,3,4", got)
	}
	if got := s.Dropped(); got != 2 {
		t.Errorf("Dropped() = %d, want 2", got)
	}

	send("STATUS=5", "STATUS=6", "STATUS=7")
	if got := statuses(read(2)); got != "5,6" {
		t.Errorf("batch of at most 2 = %q, want 5,6", got)
	}
	if got := statuses(read(2)); got != "7" {
		t.Errorf("the rest = %q, want 7", got)
	}

	send("bad", "bad", "bad", "bad", "bad", "STATUS=8")
	if got := statuses(read(2)); got != "8" {
		t.Errorf("after 5 bad ones with max 2 = %q, want 8", got)
	}
	if got := s.Dropped(); got != 7 {
		t.Errorf("Dropped() = %d, want 7", got)
	}
}
