package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
)

// unit is a systemd unit file: its assignments by section, in order.
type unit struct {
	path     string
	sections map[string][]assignment
}

type assignment struct {
	key, value string
	line       int
}

// readUnit parses a unit file as systemd does for what these units use:
// [Section] headers, Key=Value lines, comments (# or ;) and lines continued
// by a trailing backslash.
func readUnit(t *testing.T, path string) unit {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{path: path, sections: map[string][]assignment{}}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line, at := strings.TrimSpace(sc.Text()), n
		for strings.HasSuffix(line, `\`) && sc.Scan() {
			n++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(sc.Text())
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not Key=Value in a section: %q", path, at, line)
			}
			u.sections[section] = append(u.sections[section], assignment{strings.TrimSpace(k), strings.TrimSpace(v), at})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// all returns every assignment of key in section.
func (u unit) all(section, key string) []assignment {
	var out []assignment
	for _, a := range u.sections[section] {
		if a.key == key {
			out = append(out, a)
		}
	}
	return out
}

// value returns the value of key in section as systemd takes it (the last
// assignment wins) and whether it is set.
func (u unit) value(section, key string) (string, bool) {
	all := u.all(section, key)
	if len(all) == 0 {
		return "", false
	}
	return all[len(all)-1].value, true
}

func units(t *testing.T, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("systemd", pattern))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no %s in deploy/systemd", pattern)
	}
	return files
}

// execStart is the service's command line, split as systemd splits it for
// what these units use (no quotes, escapes or variables).
func execStart(t *testing.T, u unit) []string {
	t.Helper()
	all := u.all("Service", "ExecStart")
	if len(all) != 1 || all[0].value == "" {
		t.Fatalf("%s: %d ExecStart= lines, want one", u.path, len(all))
	}
	v := strings.TrimLeft(all[0].value, "-@:+!") // systemd's command prefixes
	if strings.ContainsAny(v, `"'\$%`) {
		t.Fatalf("%s:%d: ExecStart has quotes, escapes, variables or specifiers, which this test does not expand: %s", u.path, all[0].line, v)
	}
	return strings.Fields(v)
}

// servicesMaster reads what the master of a service unit runs: its
// ExecStart, and the config file that --config names, which is the file
// of that name beside the unit in deploy/systemd (the units install it in
// /etc/supervisor/).
func servicesMaster(t *testing.T, u unit) master {
	t.Helper()
	argv := execStart(t, u)
	if argv[0] != installedBinary {
		t.Errorf("%s: ExecStart runs %s; the guide installs the supervisor as %s", u.path, argv[0], installedBinary)
	}
	configArg := configFlag(argv)
	if configArg == "" {
		t.Fatalf("%s: ExecStart has no --config", u.path)
	}
	if filepath.Dir(configArg) != "/etc/supervisor" {
		t.Errorf("%s: --config %s: the guide installs the config in /etc/supervisor/", u.path, configArg)
	}
	local := filepath.Join("systemd", filepath.Base(configArg))
	if _, err := os.Stat(local); err != nil {
		t.Fatalf("%s: --config %s: no %s to install there", u.path, configArg, local)
	}
	return readMaster(t, argv, local)
}

// The services: Type=notify-reload with the master's own reload, KillMode
// mixed, and a stop timeout their config's stop fits in.
func TestSystemdServices(t *testing.T) {
	for _, path := range units(t, "*.service") {
		t.Run(filepath.Base(path), func(t *testing.T) {
			u := readUnit(t, path)
			want := map[string]string{
				// READY=1, RELOADING=1 ... READY=1 and STOPPING=1 from the master.
				"Type": "notify-reload",
				// SIGTERM to the master only: it stops its workers gracefully.
				"KillMode": "mixed",
				// A master that exits non-zero (workers that cannot boot) is
				// started again; a clean stop stays stopped.
				"Restart": "on-failure",
			}
			for _, k := range slices.Sorted(maps.Keys(want)) {
				if v, _ := u.value("Service", k); v != want[k] {
					t.Errorf("%s=%s, want %s=%s", k, v, k, want[k])
				}
			}
			if v, ok := u.value("Service", "NotifyAccess"); ok && v != "main" {
				t.Errorf("NotifyAccess=%s: only the master speaks for the service (main)", v)
			}
			// systemctl reload sends SIGHUP (ReloadSignal's default) and
			// waits for the master's RELOADING=1 ... READY=1; an ExecReload
			// would run as well and end the wait early or signal twice.
			for _, a := range u.all("Service", "ExecReload") {
				t.Errorf("%s:%d: ExecReload=%s: Type=notify-reload sends SIGHUP itself and waits for the master's READY=1", path, a.line, a.value)
			}
			if v, ok := u.value("Service", "ReloadSignal"); ok && v != "SIGHUP" && v != "HUP" {
				t.Errorf("ReloadSignal=%s: the master reloads on SIGHUP", v)
			}

			m := servicesMaster(t, u)
			stop, key := "", ""
			for _, k := range []string{"TimeoutStopSec", "TimeoutSec"} {
				if v, ok := u.value("Service", k); ok && stop == "" {
					stop, key = v, k
				}
			}
			if stop == "" {
				t.Fatalf("no TimeoutStopSec= (the default is 90s): give one longer than shutdown_delay + graceful_timeout = %s", stopTime(m.Config))
			}
			d, err := parseTimespan(stop)
			if err != nil {
				t.Fatalf("%s=%s: %v", key, stop, err)
			}
			if need := stopTime(m.Config); d <= need {
				t.Errorf("%s=%s: not longer than shutdown_delay %s + graceful_timeout %s = %s: systemd would SIGKILL workers still finishing requests",
					key, stop, m.Config.ShutdownDelay, m.Config.GracefulTimeout, need)
			}

			// A service on systemd's sockets has its .socket unit here.
			systemdBinds := 0
			for _, a := range m.Resolved.Addrs {
				if a.Kind == listener.KindSystemd {
					systemdBinds++
				}
			}
			if systemdBinds > 0 && len(socketsOf(t, filepath.Base(path))) == 0 {
				t.Errorf("binds %v: sockets from systemd, but no .socket unit in deploy/systemd activates %s", m.Config.Bind, filepath.Base(path))
			}
			if systemdBinds > 0 && systemdBinds != len(m.Resolved.Addrs) {
				t.Logf("binds %v: some from systemd, some bound by the master", m.Config.Bind)
			}
		})
	}
}

// The socket units: one listening socket shared by every worker, handed to
// a service that takes it with --bind systemd.
func TestSystemdSockets(t *testing.T) {
	for _, path := range units(t, "*.socket") {
		t.Run(filepath.Base(path), func(t *testing.T) {
			u := readUnit(t, path)
			listens := 0
			for _, a := range u.sections["Socket"] {
				if strings.HasPrefix(a.key, "Listen") {
					listens++
				}
			}
			if listens == 0 {
				t.Error("no Listen*= line")
			}
			if v, ok := u.value("Socket", "Accept"); ok && v != "no" && v != "false" {
				t.Errorf("Accept=%s: one socket shared by all workers needs Accept=no", v)
			}
			service := strings.TrimSuffix(filepath.Base(path), ".socket") + ".service"
			if v, ok := u.value("Socket", "Service"); ok {
				service = v
			}
			svc := filepath.Join("systemd", service)
			if _, err := os.Stat(svc); err != nil {
				t.Fatalf("activates %s, which is not in deploy/systemd", service)
			}
			m := servicesMaster(t, readUnit(t, svc))
			i := slices.IndexFunc(m.Resolved.Addrs, func(a listener.Addr) bool { return a.Kind == listener.KindSystemd })
			if i < 0 {
				t.Errorf("%s binds %v: none from systemd, so this socket would never reach a worker: give --bind systemd", service, m.Config.Bind)
			}
			// systemd:NAME takes the sockets called NAME: the
			// FileDescriptorName= of one of the service's socket units
			// (by default, the socket unit's own name).
			var names []string
			for _, p := range socketsOf(t, service) {
				name := filepath.Base(p)
				if v, ok := readUnit(t, p).value("Socket", "FileDescriptorName"); ok {
					name = v
				}
				names = append(names, name)
			}
			for _, a := range m.Resolved.Addrs {
				if a.Kind == listener.KindSystemd && a.Name != "" && !slices.Contains(names, a.Name) {
					t.Errorf("%s binds %s, but its sockets are called %v (FileDescriptorName=)", service, a.Raw, names)
				}
			}
		})
	}
}

// socketsOf lists the .socket units in deploy/systemd that activate service.
func socketsOf(t *testing.T, service string) []string {
	var out []string
	for _, path := range units(t, "*.socket") {
		s := strings.TrimSuffix(filepath.Base(path), ".socket") + ".service"
		if v, ok := readUnit(t, path).value("Socket", "Service"); ok {
			s = v
		}
		if s == service {
			out = append(out, path)
		}
	}
	return out
}

// oldTypeLine is what systemd before 253 says of Type=notify-reload, which
// it does not know: the one line of systemd-analyze verify tolerated there.
var oldTypeLine = regexp.MustCompile(`^\S+\.service:\d+: Failed to parse service type, ignoring: notify-reload$`)

// systemd-analyze verify on the units as installed, with ExecStart
// pointing at a supervisor binary built from this checkout (verify checks
// that it exists and is executable). Any line it prints about the units
// fails the test.
func TestSystemdAnalyzeVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
	}
	version := systemdVersion(t, analyze)
	bin := supervisorBinary(t)
	dir := t.TempDir()
	var files, names []string
	for _, path := range slices.Concat(units(t, "*.service"), units(t, "*.socket")) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if strings.HasSuffix(path, ".service") {
			re := regexp.MustCompile(`(?m)^(ExecStart=[-@:+!]*)` + regexp.QuoteMeta(installedBinary) + `\b`)
			if !re.MatchString(text) {
				t.Fatalf("%s: no ExecStart=%s to point at the binary built here", path, installedBinary)
			}
			text = re.ReplaceAllString(text, "${1}"+bin)
		}
		copied := filepath.Join(dir, filepath.Base(path))
		if err := os.WriteFile(copied, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		files, names = append(files, copied), append(names, filepath.Base(path))
	}
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, files...)...).CombinedOutput()
	t.Logf("systemd %d: systemd-analyze verify %s:\n%s", version, strings.Join(names, " "), out)
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		ours := slices.ContainsFunc(names, func(n string) bool { return strings.Contains(line, n) })
		switch {
		case !ours || line == "":
		case version < 253 && oldTypeLine.MatchString(strings.TrimPrefix(line, dir+"/")):
			t.Logf("tolerated on systemd %d, which predates Type=notify-reload (253): %s", version, line)
		default:
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	if err != nil {
		t.Errorf("systemd-analyze verify: %v", err)
	}
}

// systemdVersion is the version systemd-analyze reports ("systemd 252 (...)").
func systemdVersion(t *testing.T, analyze string) int {
	t.Helper()
	out, err := exec.Command(analyze, "--version").Output()
	if err != nil {
		t.Fatalf("systemd-analyze --version: %v", err)
	}
	m := regexp.MustCompile(`^systemd (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze --version: no version in %q", out)
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

// parseTimespan reads a systemd time span ("45s", "1min 30s", "90", a bare
// number being seconds, or "infinity").
func parseTimespan(s string) (time.Duration, error) {
	if s == "infinity" {
		return math.MaxInt64, nil
	}
	units := map[string]time.Duration{
		"": time.Second, "us": time.Microsecond, "usec": time.Microsecond, "ms": time.Millisecond, "msec": time.Millisecond,
		"s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
		"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
		"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour,
	}
	re := regexp.MustCompile(`^\s*(\d+)\s*([a-z]*)`)
	var total time.Duration
	rest := s
	for strings.TrimSpace(rest) != "" {
		m := re.FindStringSubmatch(rest)
		if m == nil {
			return 0, fmt.Errorf("not a time span: %q", s)
		}
		unit, ok := units[m[2]]
		if !ok {
			return 0, fmt.Errorf("unknown unit %q in %q", m[2], s)
		}
		n, _ := strconv.Atoi(m[1])
		total += time.Duration(n) * unit
		rest = rest[len(m[0]):]
	}
	if total == 0 && strings.TrimSpace(s) != "0" {
		return 0, fmt.Errorf("not a time span: %q", s)
	}
	return total, nil
}

func TestParseTimespan(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"45s": 45 * time.Second, "90": 90 * time.Second, "1min 30s": 90 * time.Second, "1min30s": 90 * time.Second,
		"2m": 2 * time.Minute, "500ms": 500 * time.Millisecond, "1h": time.Hour, "0": 0,
	} {
		if got, err := parseTimespan(in); err != nil || got != want {
			t.Errorf("parseTimespan(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "soon", "5 fortnights", "s"} {
		if got, err := parseTimespan(in); err == nil {
			t.Errorf("parseTimespan(%q) = %s, want an error", in, got)
		}
	}
}
