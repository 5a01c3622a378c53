package supervisor

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Fuzz targets for every parser of the master's outside input: the config
// file, the settings with a syntax of their own (sizes, signals, surge,
// scale) and the control request. Each must not panic, and each error
// must be one line (an operator's mistake gets one line, never a dump).
// CI runs the seeds; fuzz one by hand with, e.g.,
//
//	go test -run '^$' -fuzz FuzzLoadFile -fuzztime 1m ./supervisor/

func oneLine(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && strings.ContainsAny(err.Error(), "\n\r") {
		t.Fatalf("%s: the error is not one line: %q", what, err)
	}
}

func FuzzLoadFile(f *testing.F) {
	for _, name := range []string{"good.yaml", "minimal.yaml", "bad-duration.yaml", "duplicate-key.yaml", "not-mapping.yaml", "wrong-type.yaml"} {
		if b, err := os.ReadFile(filepath.Join("../testdata/configs", name)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("workers: 3\nbind: [\"127.0.0.1:0\"]\ncommand: [\"/bin/true\"]\nmax_memory: 1G\nmetrics: unix:/tmp/m.sock\n"))
	f.Add([]byte("graceful_timeout: 1h2m\nmax_surge: 50%\nstop_signal: SIGINT\n---\nworkers: 2\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := LoadFile(path)
		oneLine(t, "LoadFile", err)
		if err != nil {
			if !strings.HasPrefix(err.Error(), path) {
				t.Fatalf("LoadFile error does not start with the file's path: %q", err)
			}
			return
		}
		c := l.Apply(Defaults())
		c.User, c.Group, c.Chdir = "", "", "" // not the fuzzer's to look up on this host
		if len(c.Command) > 0 {
			c.Command[0] = "/bin/true"
		}
		_, err = c.Validate()
		oneLine(t, "Validate", err)
	})
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"", "0", "512MiB", "2G", "1k", "10KB", "1.5G", "-1M", "99999999999G", "MiB", "9007199254740993"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		oneLine(t, "ParseSize", err)
		if err == nil && n < 0 {
			t.Fatalf("ParseSize(%q) = %d: negative", s, n)
		}
		if m, err := strconv.ParseInt(s, 10, 64); err == nil && m > 0 && m <= 1<<62 {
			if n2, err := ParseSize(s); err != nil || n2 != m {
				t.Fatalf("ParseSize(%q) = %d, %v; want the plain byte count %d", s, n2, err, m)
			}
		}
	})
}

func FuzzParseSignal(f *testing.F) {
	for _, s := range []string{"TERM", "SIGTERM", "term", "15", "0", "65", "SIGSIGTERM", "", "WINCH"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sig, err := ParseSignal(s)
		oneLine(t, "ParseSignal", err)
		if err == nil && (sig < 1 || sig > 64) {
			t.Fatalf("ParseSignal(%q) = %d: not a signal", s, sig)
		}
	})
}

func FuzzResolveSurge(f *testing.F) {
	for _, s := range []string{"25%", "1", "0", "0%", "-1", "+2", "100%", "9223372036854775807%", "x"} {
		f.Add(s, 4)
	}
	f.Fuzz(func(t *testing.T, spec string, workers int) {
		if workers < 1 {
			return // Validate refuses the count before the surge
		}
		n, err := ResolveSurge(spec, workers)
		oneLine(t, "ResolveSurge", err)
		if err == nil && n < 1 {
			t.Fatalf("ResolveSurge(%q, %d) = %d: want at least 1", spec, workers, n)
		}
	})
}

func FuzzParseScale(f *testing.F) {
	for _, s := range []string{"3", "+1", "-1", "0", "-0", "+", "", "1e3", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, relative, err := ParseScale(s)
		oneLine(t, "ParseScale", err)
		if err == nil && (n == 0 || (!relative && n < 1)) {
			t.Fatalf("ParseScale(%q) = %d, %v: nothing to do", s, n, relative)
		}
	})
}

// The control request as the server reads it off the socket.
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{`{"command":"status"}`, `{"command":"reload","wait":true,"timeout":"5m"}`,
		`{"command":"scale","scale":"+2"}`, `{"command":"scale","scale":"x"}`, `{"command":"nope"}`,
		`{"command":"reload","timeout":"-1s"}`, `{}`, ``, `[`, `{"command":"stop","fast":true} trailing`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := readRequest(bytes.NewReader(b))
		oneLine(t, "readRequest", err)
		if err == nil {
			if _, lerr := lookupCommand(req.Command); lerr != nil {
				t.Fatalf("readRequest accepted %q: %v", b, lerr)
			}
		}
	})
}

// FuzzParseProbe: canary_probe never panics, every error is one line, and
// a probe it accepts has a path safe to put in a request line.
func FuzzParseProbe(f *testing.F) {
	for _, s := range []string{"", "tcp", "http:/health/ready", "http:/", "http:", "http:x", "http:/a b", "http:/a\r\nX: y", "TCP"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseProbe(s)
		oneLine(t, "ParseProbe", err)
		if err == nil && p != nil && p.HTTP && (!strings.HasPrefix(p.Path, "/") || strings.ContainsFunc(p.Path, func(r rune) bool { return r <= ' ' || r > '~' })) {
			t.Fatalf("ParseProbe(%q) accepted path %q", s, p.Path)
		}
	})
}
