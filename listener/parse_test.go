package listener

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want Addr
	}{
		{"127.0.0.1:8080", Addr{Kind: KindTCP, Network: "tcp", Address: "127.0.0.1:8080"}},
		{"127.0.0.1:0", Addr{Kind: KindTCP, Network: "tcp", Address: "127.0.0.1:0"}},
		{"0.0.0.0:80", Addr{Kind: KindTCP, Network: "tcp", Address: "0.0.0.0:80"}},
		{":8080", Addr{Kind: KindTCP, Network: "tcp", Address: ":8080"}},
		{":0", Addr{Kind: KindTCP, Network: "tcp", Address: ":0"}},
		{"[::1]:8080", Addr{Kind: KindTCP, Network: "tcp", Address: "[::1]:8080"}},
		{"[0:0::1]:8080", Addr{Kind: KindTCP, Network: "tcp", Address: "[::1]:8080"}},
		{"[fe80::1%eth0]:80", Addr{Kind: KindTCP, Network: "tcp", Address: "[fe80::1%eth0]:80"}},
		{"localhost:8080", Addr{Kind: KindTCP, Network: "tcp", Address: "localhost:8080"}},
		{"web-1.example.com:08080", Addr{Kind: KindTCP, Network: "tcp", Address: "web-1.example.com:8080"}},
		{"127.0.0.1:65535", Addr{Kind: KindTCP, Network: "tcp", Address: "127.0.0.1:65535"}},
		{"unix:/run/app.sock", Addr{Kind: KindUnix, Network: "unix", Address: "/run/app.sock"}},
		{"unix:app.sock", Addr{Kind: KindUnix, Network: "unix", Address: "app.sock"}},
		{"unix:/run/app.sock?mode=0660", Addr{Kind: KindUnix, Network: "unix", Address: "/run/app.sock", Mode: 0o660}},
		{"unix:/run/app.sock?mode=600", Addr{Kind: KindUnix, Network: "unix", Address: "/run/app.sock", Mode: 0o600}},
		{"fd://3", Addr{Kind: KindFD, FD: 3}},
		{"fd://17", Addr{Kind: KindFD, FD: 17}},
		{"systemd", Addr{Kind: KindSystemd}},
		{"systemd:web", Addr{Kind: KindSystemd, Name: "web"}},
		{"systemd:my-app.socket", Addr{Kind: KindSystemd, Name: "my-app.socket"}},
	}
	for _, tc := range good {
		tc.want.Raw = tc.in
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v, nil", tc.in, got, err, tc.want)
		}
	}

	bad := []struct{ in, want string }{
		{"foo", `bad --bind "foo": want HOST:PORT, [::1]:PORT, :PORT, unix:/path[?mode=0660], fd://N, systemd or systemd:NAME`},
		{"", `bad --bind "": empty address; want HOST:PORT`},
		{"8080", `bad --bind "8080": want HOST:PORT`},
		{"127.0.0.1:", `bad --bind "127.0.0.1:": missing port; want`},
		{"127.0.0.1:65536", `bad --bind "127.0.0.1:65536": port 65536 out of range 0-65535; want`},
		{"127.0.0.1:99999999999999999999", `port 99999999999999999999 out of range 0-65535`},
		{"127.0.0.1:-1", `port "-1" is not a number`},
		{"127.0.0.1:http", `port "http" is not a number`},
		{"::1:8080", `bad --bind "::1:8080": too many colons in address; want`},
		{"[::1:8080", `missing ']' in address`},
		{"http://example.com:80", `too many colons in address`},
		{"example.com/x:80", `bad host "example.com/x"`},
		{"-x:80", `bad host "-x"`},
		{"bad host:80", `bad host "bad host"`},
		{"unix:", `bad --bind "unix:": missing socket path; want`},
		{"unix:?mode=0660", `missing socket path`},
		{"unix:@abstract", `abstract unix sockets are not supported`},
		{"unix:/" + strings.Repeat("a", 107), `socket path longer than 107 bytes`},
		{"unix:/x?mode=0999", `bad --bind "unix:/x?mode=0999": mode "0999" is not octal permissions 0001-0777; want`},
		{"unix:/x?mode=1777", `mode "1777" is not octal permissions 0001-0777`},
		{"unix:/x?mode=0", `mode "0" is not octal permissions`},
		{"unix:/x?mode=", `mode "" is not octal permissions`},
		{"unix:/x?mode=+660", `mode "+660" is not octal permissions`},
		{"unix:/x?owner=www", `unknown option "owner=www" (only one mode= is accepted)`},
		{"unix:/x?mode=0660&mode=0600", `unknown option "mode=0600"`},
		{"unix:/x?", `unknown option ""`},
		{"fd://2", `bad --bind "fd://2": N must be a descriptor number >= 3 (0-2 are stdio); want`},
		{"fd://", `N must be a descriptor number >= 3`},
		{"fd://+4", `N must be a descriptor number >= 3`},
		{"fd://x", `N must be a descriptor number >= 3`},
		{"systemd:", `bad --bind "systemd:": NAME must be 1-255 printable ASCII characters without ':'; want`},
		{"systemd:a:b", `NAME must be`},
		{"systemd:a\tb", `NAME must be`},
	}
	for _, tc := range bad {
		_, err := Parse(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) error = %v; want one containing %q", tc.in, err, tc.want)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "\n") || !strings.HasSuffix(msg, forms) {
			t.Errorf("Parse(%q) error %q: want one line ending with the accepted forms", tc.in, msg)
		}
	}
}

func TestParseAll(t *testing.T) {
	good := [][]string{
		nil,
		{"127.0.0.1:8080", "127.0.0.1:8081", "unix:/a", "unix:/b", "fd://3", "fd://4", "systemd:a", "systemd:b"},
		{"127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"}, // each asks for its own port
		{":0", "[::1]:0", "127.0.0.1:0"},
		{"systemd", "systemd:web"}, // overlap is Open's business
	}
	for _, in := range good {
		got, err := ParseAll(in)
		if err != nil || len(got) != len(in) {
			t.Errorf("ParseAll(%q) = %d addrs, %v; want %d, nil", in, len(got), err, len(in))
			continue
		}
		for i := range in {
			if got[i].Raw != in[i] {
				t.Errorf("ParseAll(%q)[%d].Raw = %q; want %q (order kept)", in, i, got[i].Raw, in[i])
			}
		}
	}

	bad := []struct {
		in   []string
		want string
	}{
		{[]string{"127.0.0.1:8080", "127.0.0.1:8080"}, `duplicate --bind "127.0.0.1:8080"`},
		{[]string{"127.0.0.1:8080", "127.0.0.1:08080"}, `duplicate --bind "127.0.0.1:08080": same socket as "127.0.0.1:8080"`},
		{[]string{"[::1]:80", "[0::1]:80"}, `duplicate --bind "[0::1]:80": same socket as "[::1]:80"`},
		{[]string{"unix:/a", "unix:/a?mode=0600"}, `duplicate --bind "unix:/a?mode=0600": same socket as "unix:/a"`},
		{[]string{"fd://3", "fd://03"}, `duplicate --bind "fd://03": same socket as "fd://3"`},
		{[]string{"systemd", "systemd"}, `duplicate --bind "systemd"`},
		{[]string{"systemd:web", "unix:/a", "systemd:web"}, `duplicate --bind "systemd:web"`},
		{[]string{"127.0.0.1:8080", "nope"}, `bad --bind "nope"`},
	}
	for _, tc := range bad {
		_, err := ParseAll(tc.in)
		if err == nil || err.Error() != tc.want && !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("ParseAll(%q) error = %v; want %q", tc.in, err, tc.want)
		}
	}
}

func TestAddrKey(t *testing.T) {
	addrs, err := ParseAll([]string{"127.0.0.1:0", "unix:/a", "127.0.0.1:0", ":0", "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.1:0", "unix:/a", "127.0.0.1:0#1", ":0", "127.0.0.1:0#2"}
	for i, a := range addrs {
		if got := a.Key(); got != want[i] {
			t.Errorf("ParseAll(...)[%d].Key() = %q; want %q", i, got, want[i])
		}
	}
}
