package listener

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/supervisor-dev/supervisor/internal/testkit"
	"golang.org/x/sys/unix"
)

var _ Store = (*tableflip.Fds)(nil)

// memStore behaves like *tableflip.Fds: File hands out, once, a duplicate
// of what the previous master kept, and keeps it for the next one; AddFile
// keeps a duplicate for the next master.
type memStore struct {
	inherited map[string]*os.File // from the previous master, not yet taken
	added     map[string]*os.File // for the next master
}

func newMemStore() *memStore {
	return &memStore{inherited: map[string]*os.File{}, added: map[string]*os.File{}}
}

func (m *memStore) File(name string) (*os.File, error) {
	f := m.inherited[name]
	if f == nil {
		return nil, nil
	}
	delete(m.inherited, name)
	m.added[name] = f
	return dupFile(f)
}

func (m *memStore) AddFile(name string, f *os.File) error {
	d, err := dupFile(f)
	if err != nil {
		return err
	}
	if old := m.added[name]; old != nil {
		old.Close()
	}
	m.added[name] = d
	return nil
}

// upgrade hands everything kept to the store of a new master.
func (m *memStore) upgrade() *memStore {
	next := newMemStore()
	next.inherited, m.added = m.added, map[string]*os.File{}
	return next
}

func (m *memStore) keys() []string {
	var keys []string
	for k := range m.added {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (m *memStore) close() {
	for _, f := range m.inherited {
		f.Close()
	}
	for _, f := range m.added {
		f.Close()
	}
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := dupFD(f)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// rawListen makes a listening TCP socket on 127.0.0.1 with plain syscalls,
// without close-on-exec, as a descriptor a process inherits. The caller
// owns it.
func rawListen(t *testing.T) (int, string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	return fd, sockname(fd)
}

// describe is what must not change about a socket across an upgrade: the
// same inode is the same socket.
func describe(s *Socket) string {
	var st unix.Stat_t
	if err := unix.Fstat(s.RawFD(), &st); err != nil {
		return fmt.Sprintf("%s: fstat: %v", s.Name, err)
	}
	flags, err := fcntlGetfl(s.RawFD())
	if err != nil {
		return fmt.Sprintf("%s: F_GETFL: %v", s.Name, err)
	}
	proto, _ := unix.GetsockoptInt(s.RawFD(), unix.SOL_SOCKET, unix.SO_PROTOCOL)
	return fmt.Sprintf("%s|%s|inode %d|flags %#x|proto %d", s.Name, s.Addr, st.Ino, flags, proto)
}

func TestStoreRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	web, _ := rawListen(t)
	admin, _ := rawListen(t)
	inheritedFD, _ := rawListen(t)
	sd := Systemd{FDs: []int{web, admin}, Names: []string{"web", "admin"}}
	binds := []string{"127.0.0.1:0", "127.0.0.1:0", "unix:" + path + "?mode=0640", "systemd", fmt.Sprintf("fd://%d", inheritedFD)}

	old := newMemStore()
	defer old.close()
	first := mustOpen(t, old, sd, binds...)
	var want []string
	for _, s := range first {
		want = append(want, describe(s))
	}
	wantKeys := []string{
		"listener:127.0.0.1:0", "listener:127.0.0.1:0#1", "listener:fd://" + fmt.Sprint(inheritedFD),
		"listener:systemd/0", "listener:systemd/1", "listener:systemd/names", "listener:unix:" + path + "?mode=0640",
	}
	if got := old.keys(); !slices.Equal(got, wantKeys) {
		t.Errorf("store keys = %q; want %q", got, wantKeys)
	}
	// Whoever changes the mode later, the next master must not reset it.
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}

	// The next master has no systemd variables and no fd 5; only the store.
	next := old.upgrade()
	defer next.close()
	second := mustOpen(t, next, Systemd{}, binds...)
	var got []string
	for i, s := range second {
		got = append(got, describe(s))
		if s.RawFD() == first[i].RawFD() {
			t.Errorf("socket %d: both masters hold fd %d; want a duplicate", i, s.RawFD())
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("after the store round trip:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("unix socket mode after the round trip: %v, %v; want 0600 untouched", fi.Mode(), err)
	}
	if len(next.inherited) != 0 || !slices.Equal(next.keys(), wantKeys) {
		t.Errorf("next store: %d not taken, keys %q; want all taken and kept", len(next.inherited), next.keys())
	}

	// The old master exits: the path stays, served by the new master.
	closeAll(first)
	for i, s := range second {
		if d := describe(s); d != want[i] {
			t.Errorf("after the old master closed: %s; want %s", d, want[i])
		}
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("the unix path went with the old master: %v", err)
	}
	c.Close()
	acceptOne(t, second[2].RawFD())
	c, err = net.DialTimeout("tcp", second[1].Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	acceptOne(t, second[1].RawFD())

	// The last master closes its store first (with tableflip: Stop, then
	// wait for Exit), or the store's copy keeps the path served.
	next.close()
	closeAll(second)
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after the last master closed, Lstat(%s) = %v; want it removed", path, err)
	}
}

// TestTableflipUpgrade runs a real master upgrade through *tableflip.Fds:
// the test process is the old master, the test binary re-run by tableflip
// the new one (helperTableflipChild).
func TestTableflipUpgrade(t *testing.T) {
	upg, err := tableflip.New(tableflip.Options{UpgradeTimeout: 30 * time.Second})
	if err != nil {
		t.Skipf("tableflip.New: %v (it works once per process)", err)
	}
	defer upg.Stop()
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sock")
	binds := []string{"127.0.0.1:0", "unix:" + path + "?mode=0640"}
	socks := mustOpen(t, upg.Fds, Systemd{}, binds...)
	var want []string
	for _, s := range socks {
		want = append(want, describe(s))
	}
	if err := upg.Ready(); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(dir, "child.out")
	// tableflip starts this binary again with this process's environment.
	name, value, _ := strings.Cut(testkit.Use("tableflip-child"), "=")
	t.Setenv(name, value)
	t.Setenv("LISTENER_TEST_BINDS", strings.Join(binds, "\n"))
	t.Setenv("LISTENER_TEST_OUT", out)
	// Upgrade returns once the child is ready, or exited, or after 30s. Just
	// after Ready, tableflip's loop may not have seen Ready yet ("process is
	// not ready yet"): ask again, for at most 5s.
	for deadline := time.Now().Add(5 * time.Second); ; {
		err = upg.Upgrade()
		if err == nil || !strings.Contains(err.Error(), "not ready yet") || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	b, _ := os.ReadFile(out)
	if err != nil {
		t.Fatalf("Upgrade: %v; the new master wrote %q", err, b)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var pid int
	if _, err := fmt.Sscanf(lines[0], "pid %d", &pid); err != nil {
		t.Fatalf("new master wrote %q", b)
	}
	if got := lines[1:]; !slices.Equal(got, want) {
		t.Errorf("new master sees:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i, s := range socks {
		if d := describe(s); d != want[i] {
			t.Errorf("old master after the upgrade: %s; want %s", d, want[i])
		}
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("unix socket after the upgrade: %v, %v; want mode 0640", fi.Mode(), err)
	}

	// Wait for the new master to exit and tableflip to close its copies;
	// then the old master's Close removes the unix path nobody serves.
	waitExit(t, pid)
	select {
	case <-upg.Exit():
	case <-time.After(10 * time.Second):
		t.Fatal("tableflip did not finish the upgrade within 10s")
	}
	closeAll(socks)
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after both masters left, Lstat(%s) = %v; want it removed", path, err)
	}
}

// waitExit waits at most 10s for process pid to end.
func waitExit(t *testing.T, pid int) {
	t.Helper()
	pfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	} else if err != nil {
		t.Logf("pidfd_open: %v; not waiting for pid %d", err, pid)
		return
	}
	defer unix.Close(pfd)
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(pfd), Events: unix.POLLIN}}, 10000); n != 1 || err != nil {
		t.Fatalf("pid %d still running after 10s (poll %d, %v)", pid, n, err)
	}
}

// helperTableflipChild is the new master of TestTableflipUpgrade: it opens
// the same --bind values from tableflip's Fds, writes what it sees to
// LISTENER_TEST_OUT, signals ready and exits.
func helperTableflipChild() int {
	var b strings.Builder
	fmt.Fprintf(&b, "pid %d\n", os.Getpid())
	err := func() error {
		upg, err := tableflip.New(tableflip.Options{})
		if err != nil {
			return err
		}
		if !upg.HasParent() {
			return errors.New("no parent master")
		}
		addrs, err := ParseAll(strings.Split(os.Getenv("LISTENER_TEST_BINDS"), "\n"))
		if err != nil {
			return err
		}
		socks, err := Open(addrs, upg.Fds, Systemd{})
		if err != nil {
			return err
		}
		for _, s := range socks {
			fmt.Fprintln(&b, describe(s))
		}
		if err := os.WriteFile(os.Getenv("LISTENER_TEST_OUT"), []byte(b.String()), 0o600); err != nil {
			return err
		}
		return upg.Ready()
	}()
	if err != nil {
		fmt.Fprintln(&b, "error:", err)
		os.WriteFile(os.Getenv("LISTENER_TEST_OUT"), []byte(b.String()), 0o600)
		return 1
	}
	return 0
}

// The master opens its binds one at a time (one Open per address, so a
// reload reopens only new ones): a repeated HOST:0 must still get its own
// store key, or the next master gets one socket twice and a new port.
func TestStoreRepeatOpenedAlone(t *testing.T) {
	addrs := mustParseAll(t, "127.0.0.1:0", "127.0.0.1:0")
	old := newMemStore()
	defer old.close()
	var first []*Socket
	for i := range addrs {
		ss, err := Open(addrs[i:i+1], old, Systemd{})
		if err != nil {
			t.Fatal(err)
		}
		first = append(first, ss...)
	}
	defer closeAll(first)
	if first[0].Addr == first[1].Addr {
		t.Fatalf("both binds on %s; want two ports", first[0].Addr)
	}
	wantKeys := []string{"listener:127.0.0.1:0", "listener:127.0.0.1:0#1"}
	if got := old.keys(); !slices.Equal(got, wantKeys) {
		t.Errorf("store keys = %q; want %q", got, wantKeys)
	}
	next := old.upgrade()
	defer next.close()
	for i := range addrs {
		ss, err := Open(addrs[i:i+1], next, Systemd{})
		if err != nil {
			t.Fatal(err)
		}
		defer closeAll(ss)
		if ss[0].Addr != first[i].Addr {
			t.Errorf("next master's bind %d on %s; want %s, kept from the old master", i, ss[0].Addr, first[i].Addr)
		}
	}
}

// Two addresses with one key in one Open would share a store entry: refused.
func TestOpenRepeatWithoutNumber(t *testing.T) {
	a, err := Parse("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	store := newMemStore()
	defer store.close()
	socks, err := Open([]Addr{a, a}, store, Systemd{})
	if want := "--bind 127.0.0.1:0: repeated without its repeat number (parse the list with ParseAll)"; err == nil || err.Error() != want {
		closeAll(socks)
		t.Fatalf("Open(the same Addr twice) = %v; want %q", err, want)
	}
	if keys := store.keys(); len(keys) != 0 {
		t.Errorf("store keys after the failed Open = %q; want none", keys)
	}
}
