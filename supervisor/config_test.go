package supervisor

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func validConfig() Config {
	c := Defaults()
	c.Command = []string{"sh", "-c", "true"}
	c.Bind = []string{"127.0.0.1:0"}
	return c
}

func TestValidateAcceptsDefaults(t *testing.T) {
	r, err := validConfig().Validate()
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(r.Path) || filepath.Base(r.Path) != "sh" {
		t.Errorf("Path = %q, want an absolute path to sh", r.Path)
	}
	if r.StopSig != syscall.SIGTERM || r.Credential != nil || len(r.Addrs) != 1 {
		t.Errorf("resolved %+v", r)
	}
}

func TestValidateRejects(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "app")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no command", func(c *Config) { c.Command = nil }, "no command"},
		{"zero workers", func(c *Config) { c.Workers = 0 }, "--workers 0: must be at least 1"},
		{"negative workers", func(c *Config) { c.Workers = -2 }, "--workers -2"},
		{"negative duration", func(c *Config) { c.GracefulTimeout = -time.Second }, "--graceful-timeout -1s: must not be negative"},
		{"bad ready", func(c *Config) { c.Ready = "soon" }, `--ready "soon": want auto, notify, listen or delay`},
		{"zero max surge", func(c *Config) { c.MaxSurge = "0" }, "--max-surge 0: must be at least 1 (a count like 2, or a percentage like 25%)"},
		{"zero percent max surge", func(c *Config) { c.MaxSurge = "0%" }, "--max-surge 0%: must be at least 1"},
		{"negative max surge", func(c *Config) { c.MaxSurge = "-1" }, "--max-surge -1: must be at least 1"},
		{"malformed max surge", func(c *Config) { c.MaxSurge = "abc" }, `--max-surge "abc": want a count like 2, or a percentage like 25%`},
		{"control path too long", func(c *Config) { c.Control = "/" + strings.Repeat("x", 200) }, "too long for a unix socket path"},
		{"unknown signal", func(c *Config) { c.StopSignal = "SIGFOO" }, `--stop-signal "SIGFOO": unknown signal`},
		{"no bind", func(c *Config) { c.Bind = nil }, "no --bind"},
		{"bad bind", func(c *Config) { c.Bind = []string{"nope"} }, "nope"},
		{"duplicate bind", func(c *Config) { c.Bind = []string{"127.0.0.1:8080", "127.0.0.1:8080"} }, "duplicate"},
		{"bad env", func(c *Config) { c.Env = []string{"NOEQUALS"} }, `--env "NOEQUALS": want KEY=VALUE`},
		{"bad chdir", func(c *Config) { c.Chdir = filepath.Join(dir, "missing") }, "not a directory"},
		{"unknown user", func(c *Config) { c.User = "no-such-user-xyz" }, "--user no-such-user-xyz: no such user"},
		{"unknown group", func(c *Config) { c.Group = "no-such-group-xyz" }, "--group no-such-group-xyz: no such group"},
		{"command not in PATH", func(c *Config) { c.Command = []string{"no-such-command-xyz"} }, `command "no-such-command-xyz" not found in PATH`},
		{"command missing", func(c *Config) { c.Command = []string{filepath.Join(dir, "missing")} }, "no such file"},
		{"command not executable", func(c *Config) { c.Command = []string{notExec} }, "not executable: chmod +x it"},
		{"command is a dir", func(c *Config) { c.Command = []string{dir} }, "is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.edit(&c)
			_, err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestValidateAcceptsReadyModes(t *testing.T) {
	if Defaults().Ready != ReadyAuto {
		t.Errorf("default ready = %q, want %q", Defaults().Ready, ReadyAuto)
	}
	for _, mode := range []string{ReadyAuto, ReadyNotify, ReadyListen, ReadyDelay} {
		c := validConfig()
		c.Ready = mode
		if _, err := c.Validate(); err != nil {
			t.Errorf("ready %s: %v", mode, err)
		}
	}
}

func TestResolveSurge(t *testing.T) {
	// The default, 25%, rounds up: 1 extra worker up to 4 workers, then 2.
	for workers, want := range []int{1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2, 8: 2} {
		if workers == 0 {
			continue
		}
		if got, err := ResolveSurge("25%", workers); err != nil || got != want {
			t.Errorf("ResolveSurge(25%%, %d) = %d, %v; want %d", workers, got, err, want)
		}
	}
	for _, tc := range []struct {
		spec    string
		workers int
		want    int
	}{
		{"2", 4, 2}, {"2", 1, 2}, {"1", 8, 1}, {"100%", 3, 3}, {"100%", 1, 1},
		{"1%", 1, 1}, {"50%", 5, 3}, {"200%", 2, 4}, {"10", 2, 10},
	} {
		if got, err := ResolveSurge(tc.spec, tc.workers); err != nil || got != tc.want {
			t.Errorf("ResolveSurge(%q, %d) = %d, %v; want %d", tc.spec, tc.workers, got, err, tc.want)
		}
	}
	for spec, want := range map[string]string{
		"0":                    "--max-surge 0: must be at least 1 (a count like 2, or a percentage like 25%)",
		"0%":                   "--max-surge 0%: must be at least 1 (a count like 2, or a percentage like 25%)",
		"-1":                   "--max-surge -1: must be at least 1 (a count like 2, or a percentage like 25%)",
		"-25%":                 "--max-surge -25%: must be at least 1 (a count like 2, or a percentage like 25%)",
		"abc":                  `--max-surge "abc": want a count like 2, or a percentage like 25%`,
		"":                     `--max-surge "": want a count like 2, or a percentage like 25%`,
		"%":                    `--max-surge "%": want a count like 2, or a percentage like 25%`,
		"2.5":                  `--max-surge "2.5": want a count like 2, or a percentage like 25%`,
		"25 %":                 `--max-surge "25 %": want a count like 2, or a percentage like 25%`,
		"+2":                   `--max-surge "+2": want a count like 2, or a percentage like 25%`,
		"9223372036854775807%": "--max-surge 9223372036854775807%: too large",
	} {
		if got, err := ResolveSurge(spec, 4); err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ResolveSurge(%q, 4) = %d, %v; want the one-line error %q", spec, got, err, want)
		}
	}
}

func TestValidateResolvesSurge(t *testing.T) {
	c := validConfig()
	c.Workers = 8
	r, err := c.Validate()
	if err != nil {
		t.Fatal(err)
	}
	if r.Surge != 2 {
		t.Errorf("Surge = %d with the default 25%% of 8 workers, want 2", r.Surge)
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"TERM": syscall.SIGTERM, "SIGTERM": syscall.SIGTERM, "quit": syscall.SIGQUIT, "sigwinch": syscall.SIGWINCH, "9": syscall.SIGKILL,
	} {
		got, err := ParseSignal(in)
		if err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "FOO", "0", "99"} {
		if _, err := ParseSignal(in); err == nil {
			t.Errorf("ParseSignal(%q): want an error", in)
		}
	}
}

func TestCommandRelativeToChdir(t *testing.T) {
	dir := t.TempDir()
	app := filepath.Join(dir, "app")
	if err := os.WriteFile(app, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := validConfig()
	c.Command, c.Chdir = []string{"./app"}, dir
	r, err := c.Validate()
	if err != nil {
		t.Fatal(err)
	}
	if r.Path != app {
		t.Errorf("Path = %q, want %q", r.Path, app)
	}
}
