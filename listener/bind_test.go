package listener

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"golang.org/x/sys/unix"
)

func fcntlGetfl(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0) }

func mustGetfl(t *testing.T, fd int) int {
	t.Helper()
	fl, err := fcntlGetfl(fd)
	if err != nil {
		t.Fatalf("F_GETFL on fd %d: %v", fd, err)
	}
	return fl
}

func mustParseAll(t *testing.T, values ...string) []Addr {
	t.Helper()
	addrs, err := ParseAll(values)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

func mustOpen(t *testing.T, store Store, sd Systemd, values ...string) []*Socket {
	t.Helper()
	socks, err := Open(mustParseAll(t, values...), store, sd)
	if err != nil {
		t.Fatalf("Open(%q): %v", values, err)
	}
	t.Cleanup(func() { closeAll(socks) })
	return socks
}

func closeAll(socks []*Socket) {
	for _, s := range socks {
		s.Close()
	}
}

// acceptOne accepts one queued connection with unix.Accept on the raw
// descriptor (after waiting at most 5s for it) and returns its peer address.
func acceptOne(t *testing.T, fd int) unix.Sockaddr {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); err != nil || n != 1 {
		t.Fatalf("poll fd %d = %d, %v; want a queued connection within 5s", fd, n, err)
	}
	nfd, peer, err := unix.Accept(fd)
	if err != nil {
		t.Fatalf("accept on fd %d: %v", fd, err)
	}
	unix.Close(nfd)
	return peer
}

func TestOpenTCP(t *testing.T) {
	s := mustOpen(t, nil, Systemd{}, "127.0.0.1:0")[0]
	host, port, err := net.SplitHostPort(s.Addr)
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("Addr = %q; want 127.0.0.1 and the real port", s.Addr)
	}
	if s.Name != "127.0.0.1:0" {
		t.Errorf("Name = %q; want the --bind value %q", s.Name, "127.0.0.1:0")
	}
	fd := s.RawFD()
	if got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || got != unix.IPPROTO_TCP {
		t.Errorf("SO_PROTOCOL = %d, %v; want %d (plain TCP, not MPTCP)", got, err, unix.IPPROTO_TCP)
	}
	if got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || got != unix.AF_INET {
		t.Errorf("SO_DOMAIN = %d, %v; want AF_INET", got, err)
	}
	flags := mustGetfl(t, fd)
	if flags&unix.O_NONBLOCK != 0 {
		t.Errorf("F_GETFL = %#x: O_NONBLOCK set; want blocking", flags)
	}
	if fdfl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); fdfl&unix.FD_CLOEXEC == 0 {
		t.Errorf("F_GETFD = %#x; want FD_CLOEXEC", fdfl)
	}
	for range 100 {
		if s.RawFD() != fd {
			t.Fatalf("RawFD changed")
		}
	}
	if got := mustGetfl(t, fd); got != flags {
		t.Errorf("F_GETFL after RawFD calls = %#x; want %#x", got, flags)
	}

	c, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer, ok := acceptOne(t, fd).(*unix.SockaddrInet4)
	if want := c.LocalAddr().(*net.TCPAddr); !ok || peer.Port != want.Port {
		t.Errorf("accepted peer %+v; want the client %v", peer, want)
	}
	if got := mustGetfl(t, fd); got != flags {
		t.Errorf("F_GETFL after accept = %#x; want %#x", got, flags)
	}

	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil || s.RawFD() != -1 {
		t.Errorf("second Close = %v, RawFD = %d; want nil, -1", err, s.RawFD())
	}
}

func TestOpenTCPFamilies(t *testing.T) {
	s := mustOpen(t, nil, Systemd{}, "0.0.0.0:0")[0]
	if d, _ := unix.GetsockoptInt(s.RawFD(), unix.SOL_SOCKET, unix.SO_DOMAIN); d != unix.AF_INET || !strings.HasPrefix(s.Addr, "0.0.0.0:") {
		t.Errorf("0.0.0.0:0: domain %d, Addr %q; want AF_INET (IPv4 only), 0.0.0.0:PORT", d, s.Addr)
	}
	s = mustOpen(t, nil, Systemd{}, "localhost:0")[0]
	if d, _ := unix.GetsockoptInt(s.RawFD(), unix.SOL_SOCKET, unix.SO_PROTOCOL); d != unix.IPPROTO_TCP || strings.HasSuffix(s.Addr, ":0") {
		t.Errorf("localhost:0: protocol %d, Addr %q; want plain TCP on a real port", d, s.Addr)
	}
	socks, err := Open(mustParseAll(t, "[::1]:0"), nil, Systemd{})
	if errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT) {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	defer closeAll(socks)
	s = socks[0]
	if !strings.HasPrefix(s.Addr, "[::1]:") || strings.HasSuffix(s.Addr, ":0") {
		t.Errorf("Addr = %q; want [::1]:PORT", s.Addr)
	}
	if d, _ := unix.GetsockoptInt(s.RawFD(), unix.SOL_SOCKET, unix.SO_DOMAIN); d != unix.AF_INET6 {
		t.Errorf("SO_DOMAIN = %d; want AF_INET6", d)
	}
	if p, _ := unix.GetsockoptInt(s.RawFD(), unix.SOL_SOCKET, unix.SO_PROTOCOL); p != unix.IPPROTO_TCP {
		t.Errorf("SO_PROTOCOL = %d; want plain TCP", p)
	}
	c, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	acceptOne(t, s.RawFD())
}

func TestOpenTCPRepeatedPortZero(t *testing.T) {
	socks := mustOpen(t, nil, Systemd{}, "127.0.0.1:0", "127.0.0.1:0")
	if socks[0].Addr == socks[1].Addr {
		t.Errorf("two 127.0.0.1:0 binds share %s; want two ports", socks[0].Addr)
	}
}

func TestOpenErrors(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	used := ln.Addr().String()
	_, err = Open(mustParseAll(t, used), nil, Systemd{})
	if want := "bind " + used + ": address already in use: stop the other process or choose another port"; err == nil || err.Error() != want {
		t.Errorf("Open(%s) error = %v; want %q", used, err, want)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %v does not wrap EADDRINUSE", err)
	}

	_, err = Open(mustParseAll(t, "nosuchhost.invalid:80"), nil, Systemd{})
	if want := `bind nosuchhost.invalid:80: cannot resolve host "nosuchhost.invalid"`; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("unresolvable host: error = %v; want %q...", err, want)
	}

	socks, err := Open(mustParseAll(t, "192.0.2.1:0"), nil, Systemd{})
	closeAll(socks)
	if want := "bind 192.0.2.1:0: cannot assign requested address: no interface of this host has that address"; err != nil && err.Error() != want {
		t.Errorf("foreign IP: error = %v; want %q", err, want)
	} else if err == nil {
		t.Log("this host binds foreign addresses (ip_nonlocal_bind?): not checking that error")
	}

	// A failed Open closes what it opened, and removes unix paths it bound.
	path := filepath.Join(t.TempDir(), "s.sock")
	store := newMemStore()
	_, err = Open(mustParseAll(t, "unix:"+path, "127.0.0.1:0", used), store, Systemd{})
	if err == nil {
		t.Fatal("Open with a used port succeeded")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a failed Open, %s: %v; want it removed", path, err)
	}
	if len(store.added) != 0 {
		t.Errorf("after a failed Open the store holds %v; want nothing", store.keys())
	}
}

// TestPermissionDenied binds port 80 as an unprivileged user: as the current
// user when it is not root, else as nobody in a helper process.
func TestPermissionDenied(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n <= 80 {
			t.Skipf("ip_unprivileged_port_start = %d: anyone may bind port 80", n)
		}
	}
	const want = "bind 127.0.0.1:80: permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
	if os.Geteuid() != 0 {
		socks, err := Open(mustParseAll(t, "127.0.0.1:80"), nil, Systemd{})
		closeAll(socks)
		if err == nil || errors.Is(err, syscall.EADDRINUSE) {
			t.Skipf("binding port 80 gave %v: this user may bind it", err)
		}
		if err.Error() != want || !errors.Is(err, syscall.EACCES) {
			t.Errorf("error = %v; want %q wrapping EACCES", err, want)
		}
		return
	}
	// The test binary may sit in a directory only root can enter: run a
	// copy anyone may run.
	bin := testkit.PublicBinary(t)
	cmd := testkit.Command(t, helperContext(t), "open", "LISTENER_TEST_BINDS=127.0.0.1:80")
	cmd.Path, cmd.Args, cmd.Dir = bin, []string{bin}, filepath.Dir(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("cannot run the test binary as nobody: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != "error: "+want {
		if strings.HasPrefix(got, "127.0.0.1:80|") {
			t.Skipf("nobody may bind port 80 here: %s", got)
		}
		t.Errorf("helper as nobody printed %q; want %q", got, "error: "+want)
	}
}

func TestOpenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sock")
	s := mustOpen(t, nil, Systemd{}, "unix:"+path+"?mode=0660")[0]
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Fatalf("Lstat(%s) = %v, %v; want a socket with mode 0660", path, fi.Mode(), err)
	}
	if s.Addr != path || s.Name != "unix:"+path+"?mode=0660" {
		t.Errorf("Addr, Name = %q, %q; want %q, the --bind value", s.Addr, s.Name, path)
	}
	if fl := mustGetfl(t, s.RawFD()); fl&unix.O_NONBLOCK != 0 {
		t.Errorf("F_GETFL = %#x: O_NONBLOCK set; want blocking", fl)
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	acceptOne(t, s.RawFD())

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, Lstat(%s) = %v; want it removed", path, err)
	}
}

func TestOpenUnixExistingPath(t *testing.T) {
	dir := t.TempDir()

	// A stale socket file (nobody listens) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	s := mustOpen(t, nil, Systemd{}, "unix:"+stale)[0]
	c, err := net.DialTimeout("unix", stale, 5*time.Second)
	if err != nil {
		t.Fatalf("dial the replaced socket: %v", err)
	}
	c.Close()
	acceptOne(t, s.RawFD())

	// A live socket is refused and left alone.
	live := filepath.Join(dir, "live.sock")
	ln, err = net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Open(mustParseAll(t, "unix:"+live), nil, Systemd{})
	if want := "bind unix:" + live + ": address in use by a running process"; err == nil || err.Error() != want {
		t.Errorf("live socket: error = %v; want %q", err, want)
	}
	if c, err := net.DialTimeout("unix", live, 5*time.Second); err != nil {
		t.Errorf("the live socket no longer answers: %v", err)
	} else {
		c.Close()
	}

	// A regular file is an error and is not removed.
	file := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(mustParseAll(t, "unix:"+file), nil, Systemd{})
	if want := "bind unix:" + file + ": " + file + " exists and is not a socket: remove it or choose another path"; err == nil || err.Error() != want {
		t.Errorf("regular file: error = %v; want %q", err, want)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Errorf("regular file after Open: %q, %v; want it untouched", b, err)
	}

	// A missing directory is a plain error naming the address.
	_, err = Open(mustParseAll(t, "unix:"+filepath.Join(dir, "no", "such.sock")), nil, Systemd{})
	if err == nil || !strings.HasPrefix(err.Error(), "bind unix:"+dir) {
		t.Errorf("missing directory: error = %v; want bind unix:...", err)
	}
}

// TCP listeners have TCP_NODELAY, and accepted sockets inherit it, so an app
// that never sets it (uvicorn --fd) does not wait for delayed ACKs.
func TestOpenTCPNoDelay(t *testing.T) {
	s := mustOpen(t, nil, Systemd{}, "127.0.0.1:0")[0]
	if v, err := unix.GetsockoptInt(s.RawFD(), unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
		t.Fatalf("listener TCP_NODELAY = %d, %v; want set", v, err)
	}
	c, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pfd := []unix.PollFd{{Fd: int32(s.RawFD()), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); err != nil || n != 1 {
		t.Fatalf("no queued connection within 5s: %d, %v", n, err)
	}
	nfd, _, err := unix.Accept(s.RawFD())
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(nfd)
	if v, err := unix.GetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
		t.Errorf("accepted socket TCP_NODELAY = %d, %v; want inherited from the listener", v, err)
	}
}
