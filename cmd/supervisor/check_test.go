package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/supervisor-dev/supervisor/supervisor"
)

const configs = "../../testdata/configs/"

// parseRunFlags builds the run flags as `run` does and parses args.
func parseRunFlags(t *testing.T, args ...string) (*pflag.FlagSet, supervisor.Config) {
	t.Helper()
	cfg := supervisor.Defaults()
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	addRunFlags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	cfg.Command = fs.Args()
	return fs, cfg
}

// Defaults < file < flags; COMMAND after -- beats the file's command.
func TestEffectiveConfigPrecedence(t *testing.T) {
	withFile := func(edit func(*supervisor.Config)) supervisor.Config {
		c := supervisor.Defaults()
		c.Bind, c.Workers = []string{"127.0.0.1:0"}, 3 // minimal.yaml
		edit(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		args []string
		want supervisor.Config
	}{
		{"defaults only", nil, supervisor.Defaults()},
		{"flags only", []string{"-w", "2", "--max-surge", "1", "--", "app", "x"}, func() supervisor.Config {
			c := supervisor.Defaults()
			c.Workers, c.MaxSurge, c.Command = 2, "1", []string{"app", "x"}
			return c
		}()},
		{"file only", []string{"--config", configs + "minimal.yaml"}, withFile(func(*supervisor.Config) {})},
		{"flag beats file", []string{"-c", configs + "minimal.yaml", "--workers", "5", "--bind", ":1", "--bind", ":2"}, withFile(func(c *supervisor.Config) {
			c.Workers, c.Bind = 5, []string{":1", ":2"}
		})},
		{"flag set to its default still beats file", []string{"-c", configs + "minimal.yaml", "--workers", "1"}, withFile(func(c *supervisor.Config) { c.Workers = 1 })},
		{"command after -- beats file", []string{"-c", configs + "good.yaml", "--", "other", "arg"}, func() supervisor.Config {
			l, err := supervisor.LoadFile(configs + "good.yaml")
			if err != nil {
				t.Fatal(err)
			}
			c := l.Apply(supervisor.Defaults())
			c.Command = []string{"other", "arg"}
			return c
		}()},
		{"empty file", []string{"-c", configs + "empty.yaml", "--ready", "listen"}, func() supervisor.Config {
			c := supervisor.Defaults()
			c.Ready = supervisor.ReadyListen
			return c
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, flagCfg := parseRunFlags(t, tc.args...)
			got, err := effectiveConfig(fs, flagCfg, configPath(fs))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// Re-reading after the file changed picks up the change and nothing else:
// effectiveConfig is what a reload calls.
func TestEffectiveConfigRereads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("workers: 2\nshutdown_delay: 3s\n")
	fs, flagCfg := parseRunFlags(t, "-c", path, "--shutdown-delay", "1s", "--", "app")
	first, err := effectiveConfig(fs, flagCfg, configPath(fs))
	if err != nil || first.Workers != 2 || first.ShutdownDelay != time.Second {
		t.Fatalf("first load: %+v, %v; want 2 workers, shutdown_delay 1s", first, err)
	}
	write("workers: 3\nshutdown_delay: 9s\n")
	second, err := effectiveConfig(fs, flagCfg, configPath(fs))
	if err != nil || second.Workers != 3 || second.ShutdownDelay != time.Second {
		t.Fatalf("after the edit: %+v, %v; want 3 workers, shutdown_delay still 1s (flag)", second, err)
	}
	write("workers: three\n")
	if _, err := effectiveConfig(fs, flagCfg, configPath(fs)); err == nil || !strings.Contains(err.Error(), "workers: want an integer") {
		t.Fatalf("bad edit: err = %v, want the file's error", err)
	}
}

// check prints every setting; its output is itself a valid config file
// that loads back to the same settings.
func TestCheckPrintsEffectiveSettings(t *testing.T) {
	out, code := runToEnd(t, command(t, "check", "--config", configs+"good.yaml", "--workers", "8"))
	if code != 0 {
		t.Fatalf("exit %d, want 0; output:\n%s", code, out)
	}
	for _, want := range []string{
		"command:\n  - sleep\n  - \"60\"\n",
		"\nworkers: 8\n",
		"\nmax_surge: 50% # = 4 with workers: 8\n",
		"\ngraceful_timeout: 1m30s\n",
		"\nready_delay: 500ms\n",
		"\nstop_signal: INT\n",
		"\ncontrol: /tmp/supervisor-test.sock\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	path := filepath.Join(t.TempDir(), "printed.yaml")
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	printed, err := supervisor.LoadFile(path)
	if err != nil {
		t.Fatalf("check's output does not load: %v\n%s", err, out)
	}
	if len(printed.Set) != len(supervisor.Keys()) {
		t.Errorf("check printed %d keys, want all %d", len(printed.Set), len(supervisor.Keys()))
	}
	good, _ := supervisor.LoadFile(configs + "good.yaml")
	want := good.Config
	want.Workers = 8
	if !reflect.DeepEqual(printed.Config, want) {
		t.Errorf("printed settings load as\n %+v\nwant\n %+v", printed.Config, want)
	}
}

// Each bad config: a non-zero exit and one line naming the file, the
// position and the problem.
func TestCheckRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown key", []string{"-c", configs + "unknown-key.yaml"}, `unknown-key.yaml:3:1: unknown key "worker" (did you mean "workers"?): accepted keys are bind, boot_nice, canary_probe, chdir, command,`},
		{"wrong type", []string{"-c", configs + "wrong-type.yaml"}, `wrong-type.yaml:2:10: workers: want an integer, got "two"`},
		{"bad duration", []string{"-c", configs + "bad-duration.yaml"}, `bad-duration.yaml:4:19: graceful_timeout: bad duration "soon"`},
		{"command as a string", []string{"-c", configs + "command-string.yaml"}, `command-string.yaml:1:10: command: want a list of strings, got the string "./app --port 8080": write command: ["./app", "--port", "8080"]`},
		{"bad YAML", []string{"-c", configs + "bad-yaml.yaml"}, `bad-yaml.yaml:2: bad YAML: mapping values are not allowed in this context`},
		{"duplicate key", []string{"-c", configs + "duplicate-key.yaml"}, `duplicate-key.yaml:3:1: workers: set twice (first on line 1)`},
		{"not a mapping", []string{"-c", configs + "not-mapping.yaml"}, `not-mapping.yaml:1:1: want a mapping of settings`},
		{"missing file", []string{"-c", configs + "no-such.yaml"}, "--config: open ../../testdata/configs/no-such.yaml: no such file or directory"},
		{"zero max_surge in file", []string{"-c", configs + "zero-surge.yaml"}, "--max-surge 0: must be at least 1 (a count like 2, or a percentage like 25%)"},
		{"negative duration in file", []string{"-c", configs + "negative-duration.yaml"}, "--shutdown-delay -5s: must not be negative"},
		{"no command anywhere", []string{"-c", configs + "minimal.yaml"}, "no command"},
		{"bad flag over a good file", []string{"-c", configs + "good.yaml", "--max-surge", "abc"}, `--max-surge "abc": want a count like 2, or a percentage like 25%`},
		{"bad ready", []string{"-c", configs + "good.yaml", "--ready", "soon"}, `--ready "soon": want auto, notify, listen or delay`},
		{"command without --", []string{"-c", configs + "good.yaml", "sleep"}, "put the app to run after --"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, code := runToEnd(t, command(t, append([]string{"check"}, tc.args...)...))
			if code == 0 {
				t.Fatalf("exit code 0, want non-zero; output:\n%s", out)
			}
			if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "supervisor: ") || !strings.Contains(out, tc.want) {
				t.Fatalf("output %q, want one line 'supervisor: ...%s...'", out, tc.want)
			}
		})
	}
}

// `run` rejects the new settings' bad values before it binds anything.
func TestRunRejectsBadNewSettings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-surge", "0"}, "--max-surge 0: must be at least 1 (a count like 2, or a percentage like 25%)"},
		{[]string{"--max-surge", "-1"}, "--max-surge -1: must be at least 1"},
		{[]string{"--max-surge", "0%"}, "--max-surge 0%: must be at least 1"},
		{[]string{"--ready", "soon"}, `--ready "soon": want auto, notify, listen or delay`},
	} {
		args := append([]string{"run", "--bind", "127.0.0.1:0"}, tc.args...)
		out, code := runToEnd(t, command(t, append(args, "--", "/bin/sleep", "60")...))
		if last := lastLine(out); code == 0 || !strings.HasPrefix(last, "supervisor: ") || !strings.Contains(last, tc.want) {
			t.Errorf("%v: exit %d, last line %q; want non-zero and %q", tc.args, code, last, tc.want)
		}
	}
}
