package listener

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"golang.org/x/sys/unix"
)

func TestFromEnv(t *testing.T) {
	const pid = 4242
	tests := []struct {
		env     map[string]string
		want    Systemd
		wantErr string
	}{
		{env: nil},
		{env: map[string]string{"LISTEN_FDS": "2"}}, // no LISTEN_PID
		{env: map[string]string{"LISTEN_PID": "4243", "LISTEN_FDS": "2"}},
		{env: map[string]string{"LISTEN_PID": "4242"}},
		{env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1"},
			want: Systemd{FDs: []int{3}, Names: []string{"unknown"}}},
		{env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin"},
			want: Systemd{FDs: []int{3, 4}, Names: []string{"web", "admin"}}},
		{env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:admin"},
			want: Systemd{FDs: []int{3, 4, 5}, Names: []string{"unknown", "unknown", "unknown"}}},
		{env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b:c"},
			want: Systemd{FDs: []int{3, 4}, Names: []string{"unknown", "unknown"}}},
		{env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a::c"},
			want: Systemd{FDs: []int{3, 4, 5}, Names: []string{"a", "unknown", "c"}}},
		{env: map[string]string{"LISTEN_PID": "x"}, wantErr: `LISTEN_PID="x" is not a process id`},
		{env: map[string]string{"LISTEN_PID": "-1"}, wantErr: `LISTEN_PID="-1" is not a process id`},
		{env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, wantErr: `LISTEN_FDS="0" is not a count of descriptors 1-65536`},
		{env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, wantErr: `LISTEN_FDS="two" is not a count`},
		{env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "99999999"}, wantErr: `LISTEN_FDS="99999999" is not a count`},
	}
	for _, tc := range tests {
		got, err := FromEnv(func(k string) string { return tc.env[k] }, pid)
		if tc.wantErr != "" {
			if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Errorf("FromEnv(%v) error = %v; want %q", tc.env, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("FromEnv(%v) = %+v, %v; want %+v, nil", tc.env, got, err, tc.want)
		}
	}
}

func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

func cloexec(fd int) bool {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil && fl&unix.FD_CLOEXEC != 0
}

func TestOpenFD(t *testing.T) {
	fd, addr := rawListen(t)
	flags := mustGetfl(t, fd)
	bind := fmt.Sprintf("fd://%d", fd)
	s := mustOpen(t, nil, Systemd{}, bind)[0]
	if s.Name != bind || s.Addr != addr || s.RawFD() != fd {
		t.Errorf("Socket = %q, %q, fd %d; want %q, %q, fd %d (used as it is)", s.Name, s.Addr, s.RawFD(), bind, addr, fd)
	}
	if !cloexec(fd) {
		t.Errorf("fd %d is not close-on-exec", fd)
	}
	if got := mustGetfl(t, fd); got != flags {
		t.Errorf("F_GETFL = %#x; want %#x unchanged", got, flags)
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	acceptOne(t, fd)

	a, _ := Parse(bind)
	_, err = Open([]Addr{a, a}, nil, Systemd{})
	if want := bind + " is already used by --bind " + bind; err == nil || err.Error() != want {
		t.Errorf("fd used twice: error = %v; want %q", err, want)
	}
	if !isOpen(fd) {
		t.Fatalf("a failed Open closed inherited fd %d", fd)
	}
	s.Close()
	if isOpen(fd) {
		t.Errorf("fd %d still open after Close", fd)
	}

	notListening, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(notListening)
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	for _, tc := range []struct {
		fd   int
		want string
	}{
		{notListening, fmt.Sprintf("fd://%d is not a listening socket", notListening)},
		{pipe[0], fmt.Sprintf("fd://%d is not a listening socket: socket operation on non-socket", pipe[0])},
		{1000, "fd://1000 is not open: bad file descriptor"},
	} {
		_, err := Open(mustParseAll(t, fmt.Sprintf("fd://%d", tc.fd)), nil, Systemd{})
		if err == nil || err.Error() != tc.want {
			t.Errorf("fd://%d: error = %v; want %q", tc.fd, err, tc.want)
		}
	}
	if !isOpen(notListening) || !isOpen(pipe[0]) {
		t.Error("a rejected fd was closed")
	}
}

func TestOpenSystemd(t *testing.T) {
	web, webAddr := rawListen(t)
	admin, adminAddr := rawListen(t)
	sd := Systemd{FDs: []int{web, admin}, Names: []string{"web", "admin"}}
	flags := mustGetfl(t, web)

	errs := []struct {
		binds []string
		sd    Systemd
		want  string
	}{
		{[]string{"systemd:nope"}, sd, `--bind systemd:nope: systemd passed no socket named "nope" (passed: web, admin)`},
		{[]string{"systemd"}, Systemd{}, "--bind systemd: no sockets passed by systemd (LISTEN_FDS unset or LISTEN_PID is not this process): start under a .socket unit or systemd-socket-activate"},
		{[]string{"systemd:web"}, Systemd{}, "--bind systemd:web: no sockets passed by systemd ("},
		{[]string{"systemd", "systemd:web"}, sd, fmt.Sprintf(`--bind systemd:web: systemd socket "web" (fd %d) is already used by --bind systemd`, web)},
		{[]string{fmt.Sprintf("fd://%d", admin), "systemd"}, sd, fmt.Sprintf(`--bind systemd: systemd socket "admin" (fd %d) is already used by --bind fd://%d`, admin, admin)},
	}
	for _, tc := range errs {
		_, err := Open(mustParseAll(t, tc.binds...), nil, tc.sd)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Open(%q) error = %v; want %q", tc.binds, err, tc.want)
		}
	}
	if !isOpen(web) || !isOpen(admin) {
		t.Fatal("a failed Open closed a systemd descriptor")
	}

	socks := mustOpen(t, nil, sd, "systemd:admin", "systemd:web")
	got := fmt.Sprintf("%s %s %d, %s %s %d", socks[0].Name, socks[0].Addr, socks[0].RawFD(), socks[1].Name, socks[1].Addr, socks[1].RawFD())
	if want := fmt.Sprintf("admin %s %d, web %s %d", adminAddr, admin, webAddr, web); got != want {
		t.Errorf("sockets = %s; want %s", got, want)
	}
	if !cloexec(web) || !cloexec(admin) || mustGetfl(t, web) != flags {
		t.Errorf("systemd fds: cloexec %v %v, flags %#x; want close-on-exec, flags %#x", cloexec(web), cloexec(admin), mustGetfl(t, web), flags)
	}
	closeAll(socks)

	var pipe [2]int
	if err := unix.Pipe2(pipe[:], 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	_, err := Open(mustParseAll(t, "systemd"), nil, Systemd{FDs: []int{pipe[0]}, Names: []string{"fifo"}})
	if want := fmt.Sprintf(`--bind systemd: systemd socket "fifo" (fd %d) is not a listening socket: socket operation on non-socket`, pipe[0]); err == nil || err.Error() != want {
		t.Errorf("non-socket from systemd: error = %v; want %q", err, want)
	}
	if !cloexec(pipe[0]) {
		t.Errorf("Open did not mark systemd's fd %d close-on-exec", pipe[0])
	}
}

// passListeners makes n TCP listeners on 127.0.0.1 and returns files to
// pass to a helper as fds 3.. (ExtraFiles: fine in a test, never in the
// master) and their addresses.
func passListeners(t *testing.T, n int) ([]*os.File, []string) {
	t.Helper()
	var files []*os.File
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, err := ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		files, addrs = append(files, f), append(addrs, ln.Addr().String())
	}
	return files, addrs
}

// TestSystemdEnv passes sockets as systemd does (fds 3.., LISTEN_FDS,
// LISTEN_FDNAMES; LISTEN_PID set by the helper itself, as the exec shim
// does) and opens them in the helper.
func TestSystemdEnv(t *testing.T) {
	files, addrs := passListeners(t, 2)
	tests := []struct {
		binds, names, want string
	}{
		{"systemd", "web:admin", fmt.Sprintf("web|%s|3|false\nadmin|%s|4|false", addrs[0], addrs[1])},
		{"systemd:admin", "web:admin", fmt.Sprintf("admin|%s|4|false", addrs[1])},
		{"systemd", "", fmt.Sprintf("unknown|%s|3|false\nunknown|%s|4|false", addrs[0], addrs[1])},
		{"fd://4\nsystemd:web", "web:admin", fmt.Sprintf("fd://4|%s|4|false\nweb|%s|3|false", addrs[1], addrs[0])},
		{"systemd:nope", "web:admin", `error: --bind systemd:nope: systemd passed no socket named "nope" (passed: web, admin)`},
	}
	for _, tc := range tests {
		cmd := testkit.Command(t, helperContext(t), "open", "LISTENER_TEST_BINDS="+tc.binds, "LISTEN_FDS=2", "LISTEN_FDNAMES="+tc.names)
		cmd.ExtraFiles = files
		if got := strings.TrimSpace(runHelper(t, cmd)); got != tc.want {
			t.Errorf("binds %q, names %q: helper printed\n%s\nwant\n%s", tc.binds, tc.names, got, tc.want)
		}
	}

	// Without LISTEN_FDS nothing was passed, whatever fds are open.
	cmd := testkit.Command(t, helperContext(t), "open", "LISTENER_TEST_BINDS=systemd")
	cmd.ExtraFiles = files
	if got, want := strings.TrimSpace(runHelper(t, cmd)), "error: --bind systemd: no sockets passed by systemd"; !strings.HasPrefix(got, want) {
		t.Errorf("without LISTEN_FDS: helper printed %q; want %q...", got, want)
	}
}

// TestInherited runs Inherited in a helper: connections queued before the
// helper starts are accepted through the listeners it returns.
func TestInherited(t *testing.T) {
	files, addrs := passListeners(t, 1)
	unixPath := filepath.Join(t.TempDir(), "app.sock")
	ul, err := net.Listen("unix", unixPath)
	if err != nil {
		t.Fatal(err)
	}
	ul.(*net.UnixListener).SetUnlinkOnClose(false)
	uf, err := ul.(*net.UnixListener).File()
	ul.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer uf.Close()
	files, addrs = append(files, uf), append(addrs, unixPath)

	var conns []net.Conn
	for i, network := range []string{"tcp", "unix"} {
		c, err := net.DialTimeout(network, addrs[i], 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	cmd := testkit.Command(t, helperContext(t), "inherited", "LISTEN_FDS=2", "LISTEN_FDNAMES=web:admin")
	cmd.ExtraFiles = files
	got := strings.TrimSpace(runHelper(t, cmd))
	want := fmt.Sprintf("names web,admin\nenv left []\nweb %s\nadmin %s", addrs[0], addrs[1])
	if got != want {
		t.Errorf("helper printed\n%s\nwant\n%s", got, want)
	}
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if want := []string{"web", "admin"}[i]; string(b) != want || err != nil {
			t.Errorf("connection %d read %q, %v; want %q from the helper", i, b, err, want)
		}
	}

	// A descriptor that is not a listening socket is an error.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	cmd = testkit.Command(t, helperContext(t), "inherited", "LISTEN_FDS=1")
	cmd.ExtraFiles = []*os.File{r}
	if got, want := strings.TrimSpace(runHelper(t, cmd)), "error: inherited fd 3 (unknown) is not a listening socket: socket operation on non-socket"; got != want {
		t.Errorf("helper printed %q; want %q", got, want)
	}
}

// helperInherited calls Inherited, prints the names, the LISTEN_ variables
// left, each listener's address, then accepts one connection on each and
// writes the listener's name to it.
func helperInherited() int {
	pretendShim()
	lns, names, err := Inherited()
	if err != nil {
		fmt.Println("error:", err)
		return 0
	}
	var left []string
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if v, ok := os.LookupEnv(k); ok {
			left = append(left, k+"="+v)
		}
	}
	fmt.Printf("names %s\nenv left %v\n", strings.Join(names, ","), left)
	for i, ln := range lns {
		fmt.Println(names[i], ln.Addr())
	}
	for i, ln := range lns {
		ln.(interface{ SetDeadline(time.Time) error }).SetDeadline(time.Now().Add(10 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		io.WriteString(c, names[i])
		c.Close()
		ln.Close()
	}
	return 0
}
