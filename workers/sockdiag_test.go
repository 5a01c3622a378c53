package workers

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"golang.org/x/sys/unix"
)

func init() {
	// accept-one accepts one connection on fd 3, says so on stdout, and
	// holds it without reading until its stdin closes (UnreadGroups).
	testkit.Register("accept-one", func() int {
		ln, err := net.FileListener(os.NewFile(3, "listener"))
		if err != nil {
			return 2
		}
		c, err := ln.Accept()
		if err != nil {
			return 3
		}
		defer c.Close()
		os.Stdout.WriteString("accepted\n")
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	})
}

// inodeOf is the socket inode of an accepted connection.
func inodeOf(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = syscall.Fstat(int(fd), &st) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return st.Ino
}

// TestUnread: an accepted connection whose request has arrived but not
// been read is reported, over IPv4 and IPv6, and still is once the client
// has shut down its side (CLOSE_WAIT); once read it is not; a socket
// outside the set never is. The per-family dumps, Unread's fallback, agree
// with the one walk at every step.
func TestUnread(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			host := "127.0.0.1:0"
			if network == "tcp6" {
				host = "[::1]:0"
			}
			ln, err := net.Listen(network, host)
			if err != nil {
				t.Skip(err)
			}
			defer ln.Close()
			client, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			mine := map[uint64]bool{inodeOf(t, server): true}
			count := func() int {
				got, err := Unread(mine)
				if err != nil {
					t.Fatal(err)
				}
				return len(got)
			}
			// agree is called where the count can no longer change.
			agree := func(want int) {
				t.Helper()
				byFamily := map[uint64]bool{}
				for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
					if err := dumpUnread(familyReq(family), mine, byFamily); err != nil {
						t.Fatal(err)
					}
				}
				if len(byFamily) != want {
					t.Errorf("the per-family dumps found %d unread, the one walk %d", len(byFamily), want)
				}
			}
			if n := count(); n != 0 {
				t.Fatalf("before any request: %d unread, want 0", n)
			}
			agree(0)
			if _, err := client.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			testkit.WaitFor(t, 5*time.Second, "the request to show as unread", func() bool { return count() == 1 })
			agree(1)
			if got, err := Unread(map[uint64]bool{inodeOf(t, server) + 1: true}); err != nil || len(got) != 0 {
				t.Errorf("another inode: %v, %v; want none", got, err)
			}
			if err := client.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			testkit.WaitFor(t, 5*time.Second, "the FIN to arrive", func() bool {
				// CLOSE_WAIT: the request is still there to read.
				return count() == 1
			})
			buf := make([]byte, 64)
			if _, err := server.Read(buf); err != nil {
				t.Fatal(err)
			}
			if n := count(); n != 0 {
				t.Fatalf("after reading: %d unread, want 0", n)
			}
			agree(0)
		})
	}
}

// BenchmarkUnread: one call, both families, on this host as it is.
func BenchmarkUnread(b *testing.B) {
	for b.Loop() {
		if _, err := Unread(map[uint64]bool{1: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestUnreadGroups: a process group holding an accepted connection whose
// request it has not read is reported once the request has arrived, and
// not before; another group never is.
func TestUnreadGroups(t *testing.T) {
	testkit.MaySkip("accept-one")
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File() // this test's own listener: nobody shares it
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command(os.Args[0], "worker")
	cmd.Env = append(os.Environ(), testkit.Use("accept-one"))
	cmd.ExtraFiles = []*os.File{lf}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "accepted\n" {
		t.Fatalf("helper: %q, %v", line, err)
	}
	pid := cmd.Process.Pid
	unread := func() map[int]bool {
		got, err := UnreadGroups([]int{pid, os.Getpid()})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := unread(); got[pid] {
		t.Fatalf("before any request: %v, want group %d not there", got, pid)
	}
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the helper's group to hold an unread request", func() bool { return unread()[pid] })
	if got := unread(); got[os.Getpid()] {
		t.Errorf("this test's own group reported: %v", got)
	}
}
