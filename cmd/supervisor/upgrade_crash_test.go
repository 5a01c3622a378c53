package main

import (
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"golang.org/x/sys/unix"
)

// A new master that dies after it took over is a crash: its workers die
// with it, the old master keeps serving with the workers it has left,
// takes the control socket and the pid file back and refills its pool. It
// will not upgrade again (tableflip hands over once per process).
func TestNewMasterCrashAfterTakingOver(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "supervisor.yaml")
	upgradeConfig(t, cfg)
	u := startUpgradable(t, nil, "--config", cfg)
	addr, _ := u.waitLog("listening", 1, time.Second)["address"].(string)
	old := u.pid()
	stopLoad := load(t, addr, 2)
	// The new master's workers take a second to boot: it commits with its
	// canary, then is killed while its second worker boots.
	upgradeConfig(t, cfg, `command: ["`+self(t)+`", "example-app", "--boot-delay", "1s"]`)
	if out, code := u.client("upgrade"); code != 0 {
		t.Fatalf("upgrade: exit %d: %s", code, out)
	}
	line := u.waitLog("upgrade committed: the new master takes over; handing over workers", 1, 30*time.Second)
	newPid := int(line["new_pid"].(float64))
	if got := u.pid(); got != newPid {
		t.Errorf("pid file names %d after the commit, want the new master %d", got, newPid)
	}
	newWorkers := children(newPid)
	if err := syscall.Kill(newPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	u.waitLog("upgrade failed; this master carries on", 1, 10*time.Second)
	testkit.WaitFor(t, 20*time.Second, "the old master serving 2 workers again", func() bool {
		st, err := u.status()
		return err == nil && st.Pid == old && st.Phase == "running" && st.Ready == 2 && st.Upgrade == ""
	})
	ok, failed := stopLoad()
	t.Logf("%d requests ok, %d failed: those the killed new master's canary had accepted", ok, failed)
	if ok == 0 {
		t.Error("no request succeeded")
	}
	if got := u.pid(); got != old {
		t.Errorf("pid file names %d, want the old master %d again", got, old)
	}
	testkit.WaitFor(t, 5*time.Second, "the new master's workers to be gone", func() bool {
		for _, pid := range newWorkers {
			if testkit.Alive(pid) && !isZombie(pid) {
				return false
			}
		}
		return true
	})
	st, _ := u.status()
	if !strings.Contains(st.LastUpgrade, "died after it took over") {
		t.Errorf("last upgrade %q, want the crash", st.LastUpgrade)
	}
	upgradeConfig(t, cfg)
	if out, code := u.client("upgrade"); code == 0 || !strings.Contains(out, "handed over once") {
		t.Errorf("a later upgrade: exit %d: %s; want it refused", code, out)
	}
	distinctWorkers(t, addr, 2)
}

// A fake systemd (the test's own NOTIFY_SOCKET) sees READY=1 from the first
// master, MAINPID=<new> from the old master (sent while it still lives,
// as systemd requires) and then READY=1 from the new master.
func TestUpgradeTellsSystemd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, _ := conn.SyscallConn()
	_ = raw.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	type note struct {
		pid int
		msg string
	}
	read := func(until func(note) bool) []note {
		t.Helper()
		var got []note
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				t.Fatalf("fake systemd: %v after %v", err, got)
			}
			nt := note{msg: string(buf[:n])}
			if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(cms) > 0 {
				if cred, err := unix.ParseUnixCredentials(&cms[0]); err == nil {
					nt.pid = int(cred.Pid)
				}
			}
			got = append(got, nt)
			if until(nt) {
				return got
			}
		}
	}
	u := startUpgradable(t, []string{"NOTIFY_SOCKET=" + path}, "--bind", "127.0.0.1:0", "--workers", "2", "--", self(t), "example-app")
	old := u.pid()
	read(func(n note) bool { return n.pid == old && strings.Contains(n.msg, "READY=1") })
	if out, code := u.upgrade(); code != 0 {
		t.Fatalf("upgrade: exit %d: %s", code, out)
	}
	newPid := u.pid()
	got := read(func(n note) bool { return n.pid == newPid && strings.Contains(n.msg, "READY=1") })
	mainpid := -1
	for i, n := range got {
		if n.pid == newPid && strings.Contains(n.msg, "READY=1") && mainpid < 0 {
			t.Errorf("READY=1 from the new master before MAINPID=: %+v", got)
		}
		if n.pid == old && n.msg == "MAINPID="+strconv.Itoa(newPid) {
			mainpid = i
		}
	}
	if mainpid < 0 {
		t.Errorf("no MAINPID=%d from the old master %d: %+v", newPid, old, got)
	}
	t.Logf("notifications during the upgrade: %+v", got)
}

// As PID 1 (a container's init) the master refuses to upgrade: the new
// master would be its child, and die with it.
func TestUpgradeRefusedAsPID1(t *testing.T) {
	if err := exec.Command("unshare", "--pid", "--fork", "true").Run(); err != nil {
		t.Skipf("cannot make a pid namespace here: unshare: %v", err)
	}
	dir := t.TempDir()
	ctl := filepath.Join(dir, "ctl.sock")
	cmd := exec.Command("unshare", "--pid", "--kill-child", self(t), "--control", ctl, "--bind", "127.0.0.1:0", "--", self(t), "example-app")
	cmd.Env = append(os.Environ(), testkit.Use("supervisor"))
	p := startCmd(t, cmd)
	p.waitLog("ready", 30*time.Second)
	out, code := (&upgraded{t: t, control: ctl}).client("upgrade")
	if code == 0 || !strings.Contains(out, "PID 1") {
		t.Errorf("upgrade as PID 1: exit %d: %s; want it refused, naming PID 1", code, out)
	}
	t.Log(out)
}

// Across master upgrades every socket is one the first master held (same
// inode, so queued connections are never lost: the unix bind's one
// socket, and one of the TCP bind's two steered sockets, which
// generations take in turns), its file status flags unchanged (nothing
// called Fd() on it: DESIGN §5, the uvicorn frozen in accept4), and a unix
// socket's file is still there once the old masters are gone. The workers
// are /bin/sleep: none of them changes a flag itself.
func TestSocketsUnchangedAcrossUpgrades(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	u := startUpgradable(t, nil, "--bind", "127.0.0.1:0", "--bind", "unix:"+path, "--workers", "2",
		"--ready", "delay", "--ready-delay", "50ms", "--", "/bin/sleep", "60")
	sockets := func() map[string]string { // socket:[inode] -> flags, of fds 3 and 4 of every worker
		t.Helper()
		got := map[string]string{}
		testkit.WaitFor(t, 10*time.Second, "the workers to exec /bin/sleep", func() bool {
			clear(got)
			kids := children(u.pid())
			for _, kid := range kids {
				b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", kid))
				if argv0, _, _ := strings.Cut(string(b), "\x00"); argv0 != "/bin/sleep" {
					return false
				}
				for _, fd := range []int{3, 4} {
					ino, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", kid, fd))
					info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", kid, fd))
					for l := range strings.Lines(string(info)) {
						if v, ok := strings.CutPrefix(l, "flags:"); ok {
							got[ino] = strings.TrimSpace(v)
						}
					}
				}
			}
			return len(kids) == 2 && len(got) == 2
		})
		return maps.Clone(got)
	}
	before := sockets()
	held := fdSockets(t, u.pid())
	for ino, flags := range before {
		if held[ino] != flags {
			t.Fatalf("a worker's %s (flags %s) is not the master's (%v)", ino, flags, held)
		}
	}
	for i := 1; i <= 3; i++ {
		if out, code := u.upgrade(); code != 0 {
			t.Fatalf("upgrade %d: exit %d: %s", i, code, out)
		}
	}
	after := sockets()
	t.Logf("sockets and flags before %v (the first master's %v), after 3 upgrades %v", before, held, after)
	for ino, flags := range after {
		if f, ok := held[ino]; !ok || f != flags {
			t.Errorf("after 3 upgrades a worker has %s with flags %s; the first master had %v: want one of its sockets, flags unchanged", ino, flags, held)
		}
	}
	for _, flags := range after {
		if v, _ := strconv.ParseInt(flags, 8, 64); v&unix.O_NONBLOCK != 0 {
			t.Errorf("a socket's flags %s: O_NONBLOCK, want blocking as bound", flags)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("the unix socket %s after 3 upgrades: %v, %v", path, fi, err)
	}
}

// fdSockets is every socket process pid holds ("socket:[inode]") with its
// file status flags (octal, as fdinfo has them, without O_CLOEXEC, which
// is the descriptor's own).
func fdSockets(t *testing.T, pid int) map[string]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(link, "socket:") {
			continue
		}
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		for l := range strings.Lines(string(info)) {
			if v, ok := strings.CutPrefix(l, "flags:"); ok {
				f, _ := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				out[link] = fmt.Sprintf("%02o", f&^unix.O_CLOEXEC)
			}
		}
	}
	return out
}

// Unmodified uvicorn workers (--fd 3) through three master upgrades under
// keep-alive load: no request fails, and the workers serving at the end are
// the last master's.
func TestUvicornUpgradesUnderKeepAlive(t *testing.T) {
	const python = "/usr/bin/python3" // Debian's, with python3-uvicorn
	if out, err := exec.Command(python, "-c", "import uvicorn").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import uvicorn (apt-get install python3-uvicorn): %v: %s", python, err, out)
	}
	dir, err := filepath.Abs("../../testdata/uvicorn")
	if err != nil {
		t.Fatal(err)
	}
	u := startUpgradable(t, nil, "--bind", "127.0.0.1:0", "--workers", "2", "--chdir", dir,
		"--", python, "-m", "uvicorn", "--fd", "3", "app:app")
	addr, _ := u.waitLog("listening", 1, time.Second)["address"].(string)
	l := keepAliveLoad(addr, 4)
	defer l.stop()
	for i := 1; i <= 3; i++ {
		served := l.ok.Load()
		if out, code := u.upgrade(); code != 0 {
			t.Fatalf("upgrade %d: exit %d: %s", i, code, out)
		}
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("requests served after upgrade %d", i), func() bool { return l.ok.Load() > served })
	}
	l.stop()
	t.Logf("%d requests from 4 keep-alive clients during 3 upgrades, %d failed", l.ok.Load()+l.failed.Load(), l.failed.Load())
	if n := l.failed.Load(); n > 0 || l.ok.Load() == 0 {
		t.Errorf("%d requests failed (%d ok); first errors:\n%s", n, l.ok.Load(), l.firstErrors())
	}
	kids := children(u.pid())
	for range 10 {
		body, err := get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(kids, func(pid int) bool { return strings.Contains(body, fmt.Sprintf("pid %d\n", pid)) }) {
			t.Fatalf("answer %q is not from the last master's workers %v", body, kids)
		}
	}
}
