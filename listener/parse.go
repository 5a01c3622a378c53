package listener

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

const forms = "HOST:PORT, [::1]:PORT, :PORT, unix:/path[?mode=0660], fd://N, systemd or systemd:NAME"

// MaxUnixPath is the longest unix socket path, in bytes, that Linux's
// sockaddr_un holds: sun_path is 108 bytes, the terminating NUL included.
// --bind unix: paths and --control are checked against it.
const MaxUnixPath = 107

// parseError is a value Parse rejects; it names --bind and its forms
// unless ParseOwn renders it for its own flag.
type parseError struct {
	flag, value, why, forms string
}

func (e *parseError) Error() string {
	if e.why == "" {
		return fmt.Sprintf("bad %s %q: want %s", e.flag, e.value, e.forms)
	}
	return fmt.Sprintf("bad %s %q: %s; want %s", e.flag, e.value, e.why, e.forms)
}

func bad(s, why string) error { return &parseError{flag: "--bind", value: s, why: why, forms: forms} }

// ParseOwn parses the address of a socket the master serves itself (role
// "metrics": --metrics), which takes HOST:PORT or unix:/path only and must
// not be one of the binds (the workers would share it). Addr.Role is role.
// Errors are one line naming --role, the value and the fix.
func ParseOwn(role, s string, binds []Addr) (Addr, error) {
	a, err := Parse(s)
	var pe *parseError
	if errors.As(err, &pe) {
		pe.flag, pe.forms = "--"+role, "HOST:PORT or unix:/path, e.g. 127.0.0.1:9100"
		return a, pe
	}
	if err != nil {
		return a, err
	}
	if a.Kind != KindTCP && a.Kind != KindUnix {
		return a, &parseError{flag: "--" + role, value: s, why: "the master binds this socket itself", forms: "HOST:PORT or unix:/path, e.g. 127.0.0.1:9100"}
	}
	a.Role = role
	for _, b := range binds {
		switch {
		case a.Kind == KindUnix && identity(b) == identity(a):
			return a, fmt.Errorf("--%s %s: the same socket as --bind %s: give the %s endpoint an address of its own, or the workers would serve it", role, s, b.Raw, role)
		case a.Kind == KindTCP && b.Kind == KindTCP && samePort(a.Address, b.Address):
			return a, fmt.Errorf("--%s %s: the same port as --bind %s: give the %s endpoint a port of its own, or the workers would serve it", role, s, b.Raw, role)
		}
	}
	return a, nil
}

// samePort reports whether two TCP addresses (HOST:PORT) would share a
// port: the same non-zero port, and the same host or a wildcard one
// ("", 0.0.0.0, ::), which covers every host. Names are not resolved.
func samePort(x, y string) bool {
	hx, px, _ := net.SplitHostPort(x)
	hy, py, _ := net.SplitHostPort(y)
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return px == py && px != "0" && (hx == hy || wild(hx) || wild(hy))
}

// Parse parses one --bind value. Errors are one line naming the value and
// the accepted forms.
//
// HOST may be an IP literal (IPv6 in brackets), a host name (resolved when
// Open binds it) or empty for every interface; PORT is a number 0-65535, 0
// asking the kernel for a free port. A unix path may be relative, must fit
// a sockaddr_un, and may not be abstract ("@name"); ?mode= takes octal
// permissions 0001-0777 and is the only option. fd://N needs N >= 3.
// systemd:NAME takes a LISTEN_FDNAMES name (no ':' or control characters).
func Parse(s string) (Addr, error) {
	a := Addr{Raw: s}
	switch {
	case s == "":
		return a, bad(s, "empty address")
	case s == "systemd":
		a.Kind = KindSystemd
	case strings.HasPrefix(s, "systemd:"):
		a.Kind, a.Name = KindSystemd, s[len("systemd:"):]
		if a.Name == "" || len(a.Name) > 255 || strings.ContainsFunc(a.Name, func(r rune) bool {
			return r == ':' || r < 0x20 || r >= 0x7f
		}) {
			return a, bad(s, "NAME must be 1-255 printable ASCII characters without ':'")
		}
	case strings.HasPrefix(s, "fd://"):
		n, err := strconv.Atoi(s[len("fd://"):])
		if err != nil || !digits(s[len("fd://"):]) || n < 3 {
			return a, bad(s, "N must be a descriptor number >= 3 (0-2 are stdio)")
		}
		a.Kind, a.FD = KindFD, n
	case strings.HasPrefix(s, "unix:"):
		return parseUnix(a)
	default:
		return parseTCP(a)
	}
	return a, nil
}

func parseUnix(a Addr) (Addr, error) {
	path, query, hasQuery := strings.Cut(a.Raw[len("unix:"):], "?")
	switch {
	case path == "":
		return a, bad(a.Raw, "missing socket path")
	case strings.HasPrefix(path, "@"):
		return a, bad(a.Raw, "abstract unix sockets are not supported")
	case len(path) > MaxUnixPath:
		return a, bad(a.Raw, fmt.Sprintf("socket path longer than %d bytes", MaxUnixPath))
	}
	a.Kind, a.Network, a.Address = KindUnix, "unix", path
	if !hasQuery {
		return a, nil
	}
	for _, kv := range strings.Split(query, "&") {
		k, v, _ := strings.Cut(kv, "=")
		if k != "mode" || a.Mode != 0 {
			return a, bad(a.Raw, fmt.Sprintf("unknown option %q (only one mode= is accepted)", kv))
		}
		m, err := strconv.ParseUint(v, 8, 32)
		if err != nil || !digits(v) || m == 0 || m > 0o777 {
			return a, bad(a.Raw, fmt.Sprintf("mode %q is not octal permissions 0001-0777", v))
		}
		a.Mode = os.FileMode(m)
	}
	return a, nil
}

func parseTCP(a Addr) (Addr, error) {
	if !strings.Contains(a.Raw, ":") {
		return a, bad(a.Raw, "")
	}
	host, port, err := net.SplitHostPort(a.Raw)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return a, bad(a.Raw, ae.Err)
		}
		return a, bad(a.Raw, err.Error())
	}
	if port == "" {
		return a, bad(a.Raw, "missing port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if !digits(port) {
		return a, bad(a.Raw, fmt.Sprintf("port %q is not a number", port))
	} else if err != nil {
		return a, bad(a.Raw, fmt.Sprintf("port %s out of range 0-65535", port))
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.String()
	} else if host != "" && !hostname(host) {
		return a, bad(a.Raw, fmt.Sprintf("bad host %q", host))
	}
	a.Kind, a.Network = KindTCP, "tcp"
	a.Address = net.JoinHostPort(host, strconv.FormatUint(n, 10))
	return a, nil
}

// ParseAll parses every --bind value in order and rejects duplicates.
//
// Two values are duplicates when they name the same socket after parsing:
// the same TCP host and port ("127.0.0.1:08080" repeats "127.0.0.1:8080"),
// the same unix path whatever its mode, the same fd://N, the same systemd
// name. Exception: HOST:0 may repeat, because each asks the kernel for its
// own free port, so "127.0.0.1:0" twice means two sockets on two ports.
// "systemd" next to "systemd:NAME" passes here; Open rejects the overlap.
// Each repeat of the same value gets its number in Repeat (see Addr.Key).
func ParseAll(values []string) ([]Addr, error) {
	addrs := make([]Addr, 0, len(values))
	seen := make(map[string]string, len(values))
	repeats := make(map[string]int, len(values))
	for _, v := range values {
		a, err := Parse(v)
		if err != nil {
			return nil, err
		}
		a.Repeat = repeats[v]
		repeats[v]++
		id := identity(a)
		if first, ok := seen[id]; ok {
			if first == v {
				return nil, fmt.Errorf("duplicate --bind %q", v)
			}
			return nil, fmt.Errorf("duplicate --bind %q: same socket as %q", v, first)
		}
		if !(a.Kind == KindTCP && strings.HasSuffix(a.Address, ":0")) {
			seen[id] = v
		}
		addrs = append(addrs, a)
	}
	return addrs, nil
}

func identity(a Addr) string {
	switch a.Kind {
	case KindFD:
		return "fd:" + strconv.Itoa(a.FD)
	case KindSystemd:
		return "systemd:" + a.Name
	}
	return a.Network + ":" + a.Address
}

func digits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

func hostname(s string) bool {
	return len(s) <= 253 && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") == "" &&
		!strings.HasPrefix(s, ".") && !strings.HasPrefix(s, "-")
}
