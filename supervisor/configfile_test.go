package supervisor

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeConfig writes body to config.yaml in a fresh directory and returns
// its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadFileGood(t *testing.T) {
	l, err := LoadFile("../testdata/configs/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Command:           []string{"sleep", "60"},
		Bind:              []string{"127.0.0.1:0"},
		Workers:           4,
		MaxSurge:          "50%",
		GracefulTimeout:   90 * time.Second,
		ShutdownDelay:     2 * time.Second,
		StopSignal:        "INT",
		Ready:             ReadyDelay,
		ReadyTimeout:      20 * time.Second,
		ReadyDelay:        500 * time.Millisecond,
		Env:               []string{"GREETING=hello", "EMPTY="},
		MaxRequests:       1000,
		MaxRequestsJitter: 50,
		MaxLifetime:       time.Hour,
		MaxLifetimeJitter: 5 * time.Minute,
		MaxMemory:         "512MiB",
		Timeout:           30 * time.Second,
		BootNice:          5,
		Steer:             SteerOff,
		CanaryProbe:       "http:/health/ready",
		Chdir:             "/",
		Control:           "/tmp/supervisor-test.sock",
		Metrics:           "127.0.0.1:0",
		LogLevel:          "debug",
		LogFormat:         "json",
	}
	if !reflect.DeepEqual(l.Config, want) {
		t.Errorf("Config\n got %+v\nwant %+v", l.Config, want)
	}
	if got, want := len(l.Set), len(Keys()); got != want {
		t.Errorf("%d keys set, want every key (%d): %v", got, want, l.Set)
	}
	r, err := l.Apply(Defaults()).Validate()
	if err != nil {
		t.Fatal(err)
	}
	if r.Surge != 2 {
		t.Errorf("Surge = %d, want 2 (50%% of 4)", r.Surge)
	}
}

// Every type and shape that LoadFile accepts.
func TestLoadFileValues(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       Config
		set        []string
	}{
		{"empty", "", Config{}, nil},
		{"comments only", "# nothing\n", Config{}, nil},
		{"null document", "~\n", Config{}, nil},
		{"flow list", `bind: [":8080", "unix:/tmp/s?mode=0660"]`, Config{Bind: []string{":8080", "unix:/tmp/s?mode=0660"}}, []string{"bind"}},
		{"numbers in a command", "command: [./app, --port, 8080]", Config{Command: []string{"./app", "--port", "8080"}}, []string{"command"}},
		{"empty list", "env: []", Config{Env: []string{}}, []string{"env"}},
		{"surge count", "max_surge: 2", Config{MaxSurge: "2"}, []string{"max_surge"}},
		{"zero duration", "shutdown_delay: 0", Config{}, []string{"shutdown_delay"}},
		{"negative duration", "shutdown_delay: -5s", Config{ShutdownDelay: -5 * time.Second}, []string{"shutdown_delay"}},
		{"signal number", "stop_signal: 15", Config{StopSignal: "15"}, []string{"stop_signal"}},
		{"empty string", `pid: ""`, Config{}, []string{"pid"}},
		{"anchor and alias", "bind: &b [\":1\"]\nenv: *b", Config{Bind: []string{":1"}, Env: []string{":1"}}, []string{"bind", "env"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := LoadFile(writeConfig(t, tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(l.Config, tc.want) {
				t.Errorf("Config\n got %+v\nwant %+v", l.Config, tc.want)
			}
			want := map[string]bool{}
			for _, k := range tc.set {
				want[k] = true
			}
			if !reflect.DeepEqual(l.Set, want) {
				t.Errorf("Set = %v, want %v", l.Set, want)
			}
		})
	}
}

// Each bad file: one line, starting with the file name and the position.
func TestLoadFileRejects(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"unknown key", "workers: 2\nworker: 3\n",
			`config.yaml:2:1: unknown key "worker" (did you mean "workers"?): accepted keys are ` + strings.Join(Keys(), ", ")},
		{"dash for underscore", "graceful-timeout: 5s\n", `config.yaml:1:1: unknown key "graceful-timeout" (did you mean "graceful_timeout"?): accepted keys are bind, boot_nice, canary_probe, chdir, command,`},
		{"no suggestion", "zzz: 1\n", `config.yaml:1:1: unknown key "zzz": accepted keys are bind,`},
		{"wrong type", "bind: [\":1\"]\nworkers: two\n", `config.yaml:2:10: workers: want an integer, got "two"`},
		{"float for int", "workers: 2.5\n", `config.yaml:1:10: workers: want an integer, got "2.5"`},
		{"quoted int", `workers: "2"`, `config.yaml:1:10: workers: want an integer, got the quoted string "2": drop the quotes`},
		{"list for int", "workers: [2]\n", `config.yaml:1:10: workers: want an integer, got a list`},
		{"bad duration", "bind: [\":1\"]\nworkers: 2\ncommand: [a]\ngraceful_timeout: soon\n", `config.yaml:4:19: graceful_timeout: bad duration "soon": want a duration like 30s or 1m30s`},
		{"duration without unit", "ready_timeout: 30\n", `config.yaml:1:16: ready_timeout: bad duration "30"`},
		{"string for command", "command: ./app --port 8080\n", `config.yaml:1:10: command: want a list of strings, got the string "./app --port 8080": write command: ["./app", "--port", "8080"]`},
		{"string for bind", "bind: 127.0.0.1:8080\n", `config.yaml:1:7: bind: want a list of strings, got the string "127.0.0.1:8080": write bind: ["127.0.0.1:8080"]`},
		{"mapping for env", "env:\n  A: 1\n", `config.yaml:2:3: env: want a list of strings, got a mapping`},
		{"list in a list", "command: [a, [b]]\n", `config.yaml:1:14: command: item 2: want a string, got a list`},
		{"null value", "pid:\n", `config.yaml:1:5: pid: want a string, got nothing (null): remove the key to use the default`},
		{"list for string", "ready: [notify]\n", `config.yaml:1:8: ready: want a string, got a list`},
		{"top-level list", "- bind: :1\n", `config.yaml:1:1: want a mapping of settings (key: value), got a list`},
		{"top-level scalar", "workers\n", `config.yaml:1:1: want a mapping of settings (key: value), got "workers"`},
		{"duplicate key", "workers: 2\nbind: [\":1\"]\nworkers: 3\n", `config.yaml:3:1: workers: set twice (first on line 1)`},
		{"bad YAML", "workers: 2\n  bind: [:1]\n", `config.yaml:2: bad YAML: mapping values are not allowed in this context`},
		{"unquoted colon in a flow list", "workers: 2\nbind: [:8080]\n", `config.yaml:2: bad YAML: did not find expected node content (quote a value that starts with a sign such as ':', e.g. bind: [":8080"])`},
		{"unquoted colon on line 1", "bind: [:8080]\n", `config.yaml:1: bad YAML: did not find expected node content`},
		{"unclosed list", "command: [x]\nworkers: 2\nbind: [\"x\"\n", `config.yaml:3: bad YAML: did not find expected ',' or ']'`},
		{"list item in a mapping", "workers: 1\nbind: 2\n- c\n", `config.yaml:3: bad YAML: did not find expected key`},
		{"unknown anchor", "env: *nope\n", `config.yaml: bad YAML: unknown anchor 'nope' referenced`},
		{"tab indent", "env:\n\t- A=1\n", `config.yaml:2: bad YAML: found character that cannot start any token (a tab: indent YAML with spaces)`},
		{"two documents", "workers: 2\n---\nworkers: 3\n", `config.yaml:2:1: a second YAML document: put every setting in one mapping`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.body)
			_, err := LoadFile(path)
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			got := strings.TrimPrefix(err.Error(), filepath.Dir(path)+"/")
			if !strings.HasPrefix(got, tc.want) {
				t.Errorf("error\n got %q\nwant %q", got, tc.want)
			}
			if strings.Contains(got, "\n") {
				t.Errorf("error is not one line: %q", got)
			}
		})
	}
}

func TestLoadFileMissing(t *testing.T) {
	_, err := LoadFile(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "--config: open ") || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("err = %v, want --config: open ...: no such file", err)
	}
}

// The testdata files the command-line tests use say what they are named for.
func TestLoadFileTestdata(t *testing.T) {
	for file, want := range map[string]string{
		"unknown-key.yaml":    `unknown-key.yaml:3:1: unknown key "worker"`,
		"wrong-type.yaml":     `wrong-type.yaml:2:10: workers: want an integer, got "two"`,
		"bad-duration.yaml":   `bad-duration.yaml:4:19: graceful_timeout: bad duration "soon"`,
		"command-string.yaml": `command-string.yaml:1:10: command: want a list of strings`,
		"not-mapping.yaml":    `not-mapping.yaml:1:1: want a mapping`,
		"duplicate-key.yaml":  `duplicate-key.yaml:3:1: workers: set twice`,
		"bad-yaml.yaml":       `bad-yaml.yaml:2: bad YAML`,
	} {
		_, err := LoadFile("../testdata/configs/" + file)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want it to contain %q", file, err, want)
		}
	}
}

func TestApplyLayers(t *testing.T) {
	file := Layer{Config: Config{Workers: 3, Bind: []string{":1"}, Env: []string{"A=1"}}, Set: map[string]bool{"workers": true, "bind": true, "env": true}}
	flags := Layer{Config: Config{Workers: 5, Env: []string{"B=2"}}, Set: map[string]bool{"workers": true, "env": true, "config": true}}
	got := flags.Apply(file.Apply(Defaults()))
	want := Defaults()
	want.Workers, want.Bind, want.Env = 5, []string{":1"}, []string{"B=2"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	got.Bind[0] = "changed"
	if file.Config.Bind[0] != ":1" {
		t.Error("Apply shares the layer's list with its result")
	}
}

func TestKeysAreFlagNames(t *testing.T) {
	for _, k := range Keys() {
		if k == "" || strings.ContainsAny(k, "-, ") || strings.ToLower(k) != k {
			t.Errorf("key %q: want snake_case", k)
		}
	}
}
