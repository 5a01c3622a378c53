package listener

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeSystemd is the receiving end of NOTIFY_SOCKET, as systemd's manager
// is: a unixgram socket that takes SCM_RIGHTS.
type fakeSystemd struct {
	conn *net.UnixConn
	addr string
}

func newFakeSystemd(t *testing.T, addr string) *fakeSystemd {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &fakeSystemd{conn: conn, addr: addr}
}

// next returns the next datagram and the descriptors it carried (closed
// when the test ends), waiting 5s at most.
func (f *fakeSystemd) next(t *testing.T) (string, []int) {
	t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4*16))
	_ = f.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, oobn, _, _, err := f.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("fake systemd: waiting for a datagram: %v", err)
	}
	var fds []int
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatalf("fake systemd: control message: %v", err)
	}
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			t.Fatalf("fake systemd: SCM_RIGHTS: %v", err)
		}
		fds = append(fds, got...)
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	return string(buf[:n]), fds
}

func sameFile(t *testing.T, a, b int) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func TestFDStoreFromEnv(t *testing.T) {
	for _, tc := range []struct {
		notify, fdstore string
		on              bool
	}{
		{"@sd", "8", true},
		{"/run/systemd/notify", "1", true},
		{"", "8", false},
		{"@sd", "", false},
		{"@sd", "0", false},
		{"@sd", "-1", false},
		{"@sd", "eight", false},
		{"@sd", "8 ", false},
	} {
		env := map[string]string{"NOTIFY_SOCKET": tc.notify, "FDSTORE": tc.fdstore}
		st := FDStoreFromEnv(func(k string) string { return env[k] })
		if got := st != nil; got != tc.on || (st != nil && st.addr != tc.notify) {
			t.Errorf("NOTIFY_SOCKET=%q FDSTORE=%q: store %+v, want on=%v at %q", tc.notify, tc.fdstore, st, tc.on, tc.notify)
		}
	}
}

func TestFDStoreName(t *testing.T) {
	long := "unix:/" + strings.Repeat("a_", 100)
	for _, tc := range []struct {
		addr, role, want string
	}{
		{"127.0.0.1:8080", "", "listener_127.0.0.1_8080"},
		{"[::1]:0", "", "listener_[__1]_0"},
		{":8080", "", "listener__8080"},
		{"127.0.0.1:0", "", "listener_127.0.0.1_0"},
		{"127.0.0.1:9100", "metrics", "metrics_127.0.0.1_9100"},
		{"unix:/run/app.sock?mode=0660", "", "listener_unix_/run/app.sock?mode=0660"},
		{"unix:/run/a_b%~.sock", "", "listener_unix_/run/a%5Fb%25%7E.sock"},
		{"unix:/run/a b\x7f", "", "listener_unix_/run/a%20b%7F"},
		{"fd://3", "", ""},
		{"systemd", "", ""},
		{"systemd:web", "", ""},
	} {
		a, err := Parse(tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		a.Role = tc.role
		if got := a.fdStoreName(); got != tc.want {
			t.Errorf("fdStoreName(%q, role %q) = %q, want %q", tc.addr, tc.role, got, tc.want)
		}
	}
	// A repeat of HOST:0 is a socket of its own, so a name of its own.
	addrs := mustParseAll(t, "127.0.0.1:0", "127.0.0.1:0")
	if got, want := addrs[1].fdStoreName(), "listener_127.0.0.1_0#1"; got != want || addrs[0].fdStoreName() == got {
		t.Errorf("repeat: %q and %q, want %q for the second", addrs[0].fdStoreName(), got, want)
	}

	// One-to-one: keys that workers.FDName alone would merge stay apart,
	// and so do long keys that agree on their first 238 bytes.
	seen := map[string]string{}
	for _, key := range []string{
		"listener:unix:/a:b", "listener:unix:/a_b", "listener:unix:/a%3Ab", "listener:unix:/a%5Fb",
		"listener:" + long + "1", "listener:" + long + "2", "listener:unix:/x~0123456789abcdef",
	} {
		name := fdStoreName(key)
		if other, ok := seen[name]; ok {
			t.Errorf("keys %q and %q share the name %q", other, key, name)
		}
		seen[name] = key
		if len(name) == 0 || len(name) > maxFDName || strings.ContainsFunc(name, func(r rune) bool { return r == ':' || r < 0x21 || r > 0x7e }) {
			t.Errorf("name %q of %q is not a valid fd name (1-255 printable ASCII, no ':')", name, key)
		}
		if !fdStoreNamed(name) {
			t.Errorf("name %q of %q has no fd-store prefix", name, key)
		}
	}
	if got := fdStoreName("listener:" + long + "1"); len(got) != maxFDName || !strings.Contains(got, "~") {
		t.Errorf("long key: name %q (%d bytes), want 255 bytes ending in ~ and a hash", got, len(got))
	}
}

// Add sends FDSTORE=1 and the fd-store name with the socket itself as
// SCM_RIGHTS (the same inode, its flags untouched); Remove sends
// FDSTOREREMOVE=1; sockets that are systemd's own are not sent. Both
// kinds of NOTIFY_SOCKET address work.
func TestFDStoreAddRemove(t *testing.T) {
	for name, addr := range map[string]string{
		"abstract": fmt.Sprintf("@supervisor-listener-test/%d/fdstore", os.Getpid()),
		"path":     filepath.Join(t.TempDir(), "notify"),
	} {
		t.Run(name, func(t *testing.T) {
			sd := newFakeSystemd(t, addr)
			st := &FDStore{addr: addr}
			path := filepath.Join(t.TempDir(), "app.sock")
			socks := mustOpen(t, nil, Systemd{}, "127.0.0.1:0", "unix:"+path)
			own, err := ParseOwn("metrics", "127.0.0.1:0", nil)
			if err != nil {
				t.Fatal(err)
			}
			ownSocks, err := Open([]Addr{own}, nil, Systemd{})
			if err != nil {
				t.Fatal(err)
			}
			defer closeAll(ownSocks)
			socks = append(socks, ownSocks...)

			for i, want := range []string{"listener_127.0.0.1_0", "listener_unix_" + path, "metrics_127.0.0.1_0"} {
				s := socks[i]
				flags := mustGetfl(t, s.RawFD())
				if err := st.Add(s); err != nil {
					t.Fatalf("Add(%s): %v", s.Name, err)
				}
				msg, fds := sd.next(t)
				if msg != "FDSTORE=1\nFDNAME="+want || len(fds) != 1 {
					t.Fatalf("Add(%s) sent %q with %d fds, want %q with one", s.Name, msg, len(fds), "FDSTORE=1\nFDNAME="+want)
				}
				if !sameFile(t, fds[0], s.RawFD()) {
					t.Errorf("Add(%s) sent another file than the socket", s.Name)
				}
				if got := mustGetfl(t, s.RawFD()); got != flags {
					t.Errorf("Add(%s): flags %#x, want %#x unchanged", s.Name, got, flags)
				}
				if s.FDStoreName() != want {
					t.Errorf("FDStoreName() = %q, want %q", s.FDStoreName(), want)
				}
			}

			// Not sent: a socket of systemd's own, and one passed as fd://N.
			fd, _ := rawListen(t)
			passed := mustOpen(t, nil, Systemd{FDs: []int{fd}, Names: []string{"web"}}, "systemd")
			if err := st.Add(passed[0]); err != nil {
				t.Fatal(err)
			}
			fd2, _ := rawListen(t)
			byNumber := mustOpen(t, nil, Systemd{}, fmt.Sprintf("fd://%d", fd2))
			if err := st.Add(byNumber[0]); err != nil {
				t.Fatal(err)
			}
			if err := st.Remove(socks[0]); err != nil {
				t.Fatal(err)
			}
			if msg, fds := sd.next(t); msg != "FDSTOREREMOVE=1\nFDNAME=listener_127.0.0.1_0" || len(fds) != 0 {
				t.Errorf("next datagram %q with %d fds, want FDSTOREREMOVE=1 of listener_127.0.0.1_0 alone (nothing for systemd's or fd:// sockets)", msg, len(fds))
			}

			socks[0].Close()
			if err := st.Add(socks[0]); err == nil || !strings.Contains(err.Error(), "closed") {
				t.Errorf("Add of a closed socket: %v, want an error saying it is closed", err)
			}
			var off *FDStore
			if err := off.Add(socks[1]); err != nil {
				t.Errorf("nil store Add: %v", err)
			}
			if err := off.Remove(socks[1]); err != nil {
				t.Errorf("nil store Remove: %v", err)
			}
		})
	}
	st := &FDStore{addr: filepath.Join(t.TempDir(), "nobody")}
	s := mustOpen(t, nil, Systemd{}, "127.0.0.1:0")[0]
	if err := st.Add(s); err == nil || !strings.Contains(err.Error(), "NOTIFY_SOCKET") || strings.Contains(err.Error(), "\n") {
		t.Errorf("Add with nobody at NOTIFY_SOCKET: %v, want a one-line error naming it", err)
	}
}

// unixListen makes a listening unix socket at path with plain syscalls, as
// a descriptor a process inherits; the caller owns it.
func unixListen(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	return fd
}

// A TCP or unix bind adopts the passed socket under its fd-store name as
// it is, and a "systemd" bind takes only the other passed sockets, before
// or after it in the list.
func TestOpenFromFDStore(t *testing.T) {
	tcp, tcpAddr := rawListen(t)
	web, webAddr := rawListen(t)
	path := filepath.Join(t.TempDir(), "app.sock")
	usock := unixListen(t, path)
	sd := Systemd{FDs: []int{tcp, web, usock}, Names: []string{"listener_127.0.0.1_0", "web", "listener_unix_" + path}}
	flags := mustGetfl(t, tcp)

	var last []*Socket
	for _, binds := range [][]string{
		{"127.0.0.1:0", "systemd", "unix:" + path},
		{"systemd", "unix:" + path, "127.0.0.1:0"},
	} {
		socks, err := Open(mustParseAll(t, binds...), nil, sd)
		if err != nil {
			t.Fatalf("Open(%q): %v", binds, err)
		}
		got := map[string]string{}
		for _, s := range socks {
			got[s.Name] = fmt.Sprintf("%s fd %d fdstore %v", s.Addr, s.RawFD(), s.FromFDStore())
		}
		want := map[string]string{
			"127.0.0.1:0":  fmt.Sprintf("%s fd %d fdstore true", tcpAddr, tcp),
			"web":          fmt.Sprintf("%s fd %d fdstore false", webAddr, web),
			"unix:" + path: fmt.Sprintf("%s fd %d fdstore true", path, usock),
		}
		if len(socks) != 3 || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("Open(%q) = %v, want %v", binds, got, want)
		}
		last = socks
	}
	if !cloexec(tcp) || !cloexec(usock) || mustGetfl(t, tcp) != flags {
		t.Errorf("adopted fds: cloexec %v %v, flags %#x; want close-on-exec, flags %#x unchanged", cloexec(tcp), cloexec(usock), mustGetfl(t, tcp), flags)
	}
	c, err := net.DialTimeout("tcp", tcpAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	acceptOne(t, last[2].RawFD())

	// A failed Open leaves the passed sockets open; and "systemd" with only
	// the master's own passed says so.
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	for _, tc := range []struct {
		binds []string
		sd    Systemd
		want  string
	}{
		{[]string{"127.0.0.1:0"}, Systemd{FDs: []int{pipe[0]}, Names: []string{"listener_127.0.0.1_0"}},
			fmt.Sprintf(`--bind 127.0.0.1:0: socket "listener_127.0.0.1_0" from systemd's fd store (fd %d) is not a listening socket: socket operation on non-socket: stop the service and start it again to empty its fd store`, pipe[0])},
		{[]string{"systemd"}, Systemd{FDs: []int{tcp}, Names: []string{"listener_127.0.0.1_0"}},
			"--bind systemd: systemd passed no socket of a .socket unit, only the master's own from its fd store (listener_127.0.0.1_0): give the service a .socket unit, or bind addresses instead"},
		{[]string{"systemd:listener_127.0.0.1_0"}, Systemd{FDs: []int{tcp}, Names: []string{"listener_127.0.0.1_0"}},
			`--bind systemd:listener_127.0.0.1_0: systemd passed no socket named "listener_127.0.0.1_0"`},
	} {
		_, err := Open(mustParseAll(t, tc.binds...), nil, tc.sd)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Open(%q) with %v: error = %v; want %q", tc.binds, tc.sd.Names, err, tc.want)
		}
	}
	if !isOpen(tcp) || !isOpen(pipe[0]) {
		t.Error("a failed Open closed a passed descriptor")
	}

	// Once adopted, a descriptor is forgotten: a later Open binds afresh.
	rest := sd.Forget(last)
	if fmt.Sprint(rest) != fmt.Sprint(Systemd{FDs: []int{web}, Names: []string{"web"}}) {
		t.Errorf("Forget = %v, want only web (fd %d)", rest, web)
	}
	// systemd's copy still listens: closing the master's leaves the path.
	storeCopy, err := unix.Dup(usock)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(storeCopy)
	closeAll(last)
	if _, err := os.Stat(path); err != nil {
		t.Errorf("closing the adopted unix socket while the store keeps it: %v; want the path left", err)
	}
}

// ReleaseUnclaimed keeps the first passed socket under each fd-store name
// a bind has, and shuts down and closes the others: FDSTOREREMOVE=1 for a
// name no bind has, nothing for a second socket under a claimed name (that
// would drop the first too). Sockets of other names stay as they are.
func TestReleaseUnclaimed(t *testing.T) {
	addr := fmt.Sprintf("@supervisor-listener-test/%d/release", os.Getpid())
	fake := newFakeSystemd(t, addr)
	st := &FDStore{addr: addr}
	claimed, _ := rawListen(t)
	dup, dupAddr := rawListen(t)
	gone, goneAddr := rawListen(t)
	web, _ := rawListen(t)
	sd := Systemd{
		FDs:   []int{claimed, dup, gone, web},
		Names: []string{"listener_127.0.0.1_0", "listener_127.0.0.1_0", "listener_127.0.0.1_9", "web"},
	}
	addrs := mustParseAll(t, "127.0.0.1:0", "systemd")
	rest, released, err := ReleaseUnclaimed(sd, addrs, st)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Systemd{FDs: []int{claimed, web}, Names: []string{"listener_127.0.0.1_0", "web"}}); fmt.Sprint(rest) != fmt.Sprint(want) {
		t.Errorf("rest = %v, want %v", rest, want)
	}
	if want := "[listener_127.0.0.1_0 listener_127.0.0.1_9]"; fmt.Sprint(released) != want {
		t.Errorf("released %v, want %s", released, want)
	}
	if msg, fds := fake.next(t); msg != "FDSTOREREMOVE=1\nFDNAME=listener_127.0.0.1_9" || len(fds) != 0 {
		t.Errorf("sent %q with %d fds, want FDSTOREREMOVE=1 of listener_127.0.0.1_9", msg, len(fds))
	}
	if err := st.remove("end", "end"); err != nil {
		t.Fatal(err)
	}
	if msg, _ := fake.next(t); msg != "FDSTOREREMOVE=1\nFDNAME=end" {
		t.Errorf("then %q, want nothing more before the end marker", msg)
	}
	for _, a := range []string{dupAddr, goneAddr} {
		if c, err := net.DialTimeout("tcp", a, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after its release", a)
		}
	}
	socks := mustOpen(t, nil, rest, "127.0.0.1:0", "systemd")
	if len(socks) != 2 || socks[0].RawFD() != claimed || !socks[0].FromFDStore() || socks[1].RawFD() != web {
		t.Errorf("Open after the release: %v, %v; want fd %d adopted and web (fd %d)", describe(socks[0]), socks[1:], claimed, web)
	}
}
