package listener

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSibling: a sibling of a reuseport listener is on the same address
// with the same options, blocking, and in the same group: a program that
// gives the first socket no weight sends every connection to it. For a
// dual-stack [::] socket the sibling is dual-stack too (an IPv4 client
// reaches it).
func TestSibling(t *testing.T) {
	for _, bind := range []string{"127.0.0.1:0", ":0"} {
		t.Run(bind, func(t *testing.T) {
			orig := bindFor(t, bind, true)
			sib, err := orig.Sibling()
			if err != nil {
				t.Fatal(err)
			}
			defer sib.Close()
			ofd, sfd := orig.RawFD(), sib.RawFD()
			if sib.Addr != orig.Addr || sockname(sfd) != orig.Addr {
				t.Errorf("sibling at %q (%q), want %q", sib.Addr, sockname(sfd), orig.Addr)
			}
			for _, o := range []struct {
				name       string
				level, opt int
			}{{"SO_REUSEPORT", unix.SOL_SOCKET, unix.SO_REUSEPORT}, {"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY}, {"SO_REUSEADDR", unix.SOL_SOCKET, unix.SO_REUSEADDR}} {
				ov, _ := unix.GetsockoptInt(ofd, o.level, o.opt)
				sv, err := unix.GetsockoptInt(sfd, o.level, o.opt)
				if err != nil || sv != ov || (o.name != "SO_REUSEADDR" && sv != 1) {
					t.Errorf("%s: sibling %d (%v), original %d", o.name, sv, err, ov)
				}
			}
			oti, _ := unix.GetsockoptTCPInfo(ofd, unix.IPPROTO_TCP, unix.TCP_INFO)
			sti, _ := unix.GetsockoptTCPInfo(sfd, unix.IPPROTO_TCP, unix.TCP_INFO)
			if sti.Sacked != oti.Sacked {
				t.Errorf("backlog: sibling %d, original %d", sti.Sacked, oti.Sacked)
			}
			if fl, _ := unix.FcntlInt(uintptr(sfd), unix.F_GETFL, 0); fl&unix.O_NONBLOCK != 0 {
				t.Error("the sibling is non-blocking")
			}
			prog, err := Steer{Weights: []uint32{0, 1}}.Program()
			if err != nil {
				t.Fatal(err)
			}
			if err := Attach(ofd, prog); err != nil {
				t.Fatal(err)
			}
			port := netip.MustParseAddrPort(orig.Addr).Port()
			for range 20 {
				if got := connectOnce(t, []int{ofd, sfd}, netip.MustParseAddr("127.0.0.1"), int(port), 0); got != 1 {
					t.Fatalf("a connection landed on socket %d, want the sibling (1)", got)
				}
			}
		})
	}
}

// bindFor binds the --bind value bind with bindTCP, closed when the test ends.
func bindFor(t *testing.T, bind string, reuseport bool) *Socket {
	t.Helper()
	a, err := Parse(bind)
	if err != nil {
		t.Fatal(err)
	}
	s, err := bindTCP(a, reuseport)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSiblingRefused(t *testing.T) {
	plain := bindFor(t, "127.0.0.1:0", false)
	if _, err := plain.Sibling(); err == nil || !strings.Contains(err.Error(), "without SO_REUSEPORT") {
		t.Errorf("sibling of a socket without SO_REUSEPORT: %v, want an error saying so", err)
	}
	plain.Close()
	if _, err := plain.Sibling(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("sibling of a closed socket: %v", err)
	}
}
