package deploy

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/supervisor"
	"gopkg.in/yaml.v3"
)

// The helpers every recipe's test shares: the supervisor binary built from
// this checkout, and a master's command line read the way the master reads
// it (supervisor.LoadFile, Layer.Apply, Config.Validate).

// installedBinary is where every recipe installs the supervisor binary: the
// units' ExecStart, the image's COPY and the pod's command.
const installedBinary = "/usr/local/bin/supervisor"

// binDir holds the binary supervisorBinary builds; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
)

// supervisorBinary returns the path of the main module's ./cmd/supervisor,
// built once per test run as the Dockerfile builds it (CGO_ENABLED=0, so a
// static binary that runs in a scratch image), and checks that it is static.
func supervisorBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "supervisor")
	buildOnce.Do(func() {
		cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/supervisor")
		cmd.Dir = ".." // the main module, with its own go.mod and go.sum
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/supervisor: %v\n%s", err, out)
			return
		}
		buildErr = checkStatic(bin)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

// checkStatic fails for a dynamically linked executable: one with an ELF
// interpreter (the dynamic loader) or shared libraries it needs, neither of
// which exists in a scratch image.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: dynamically linked (it has an ELF interpreter): it would not run FROM scratch", path)
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		return fmt.Errorf("%s: needs shared libraries %v: it would not run FROM scratch", path, libs)
	}
	return nil
}

// master is a `supervisor run` command line as the master reads it.
type master struct {
	ConfigArg string               // --config as given ("" if none)
	Config    supervisor.Config    // Defaults, then the file, then the flags
	Resolved  *supervisor.Resolved // Config.Validate's result
	Metrics   string               // the metrics address ("" if none)
}

// readMaster reads argv, a command line `supervisor [run] [FLAGS] [--
// COMMAND...]`, as the master would: supervisor.Defaults(), then the config
// file (configFile, the local file that stands for the --config argument;
// "" when argv has none), then the flags argv gives, then Validate. A
// command that runs the supervisor binary as installed (installedBinary)
// is validated as the binary built here, which exists on this machine.
func readMaster(t *testing.T, argv []string, configFile string) master {
	t.Helper()
	if len(argv) == 0 || filepath.Base(argv[0]) != "supervisor" {
		t.Fatalf("command %q: does not run the supervisor binary", argv)
	}
	args := argv[1:]
	if len(args) > 0 && args[0] == "run" {
		args = args[1:]
	}
	var m master
	flagValues := map[string]any{} // config key -> value, as YAML would give it
	var command []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			command = args[i+1:]
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name == "" {
			t.Fatalf("command %q: %q is neither a flag nor --: the app's command comes after --", argv, a)
		}
		if !hasValue {
			if i+1 >= len(args) {
				t.Fatalf("command %q: flag %s has no value", argv, a)
			}
			i++
			value = args[i]
		}
		if name == "config" || name == "c" {
			m.ConfigArg = value
			continue
		}
		s, ok := settingOfFlag(name, strings.HasPrefix(a, "--"))
		if !ok {
			if name == "metrics" && !hasSetting("metrics") {
				m.Metrics = value // see loadLayer
				continue
			}
			t.Fatalf("command %q: %s: no such flag of supervisor run", argv, a)
		}
		switch s.Field(&supervisor.Config{}).(type) {
		case *[]string:
			list, _ := flagValues[s.Key].([]string)
			flagValues[s.Key] = append(list, value)
		case *int:
			n, err := strconv.Atoi(value)
			if err != nil {
				t.Fatalf("command %q: %s %s: want an integer", argv, a, value)
			}
			flagValues[s.Key] = n
		default:
			flagValues[s.Key] = value
		}
	}
	if command != nil {
		flagValues["command"] = command
	}
	if (m.ConfigArg == "") != (configFile == "") {
		t.Fatalf("command %q: --config %q, but the test gave the file %q for it", argv, m.ConfigArg, configFile)
	}

	m.Config = supervisor.Defaults()
	if configFile != "" {
		file, metrics := loadLayer(t, configFile)
		m.Config = file.Apply(m.Config)
		if metrics != "" && m.Metrics == "" {
			m.Metrics = metrics
		}
	}
	// The flags go through LoadFile too: the same decoding of each value.
	b, err := yaml.Marshal(flagValues)
	if err != nil {
		t.Fatal(err)
	}
	flagsFile := filepath.Join(t.TempDir(), "flags.yaml")
	if err := os.WriteFile(flagsFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	flags, metrics := loadLayer(t, flagsFile)
	m.Config = flags.Apply(m.Config)
	if metrics != "" {
		m.Metrics = metrics
	}
	if hasSetting("metrics") {
		m.Metrics = stringSetting(t, m.Config, "metrics")
	}

	check := m.Config
	check.Command = slices.Clone(check.Command)
	if len(check.Command) > 0 && check.Command[0] == installedBinary {
		check.Command[0] = supervisorBinary(t)
	}
	if m.Resolved, err = check.Validate(); err != nil {
		t.Fatalf("command %q: the master would refuse its config: %v", argv, err)
	}
	return m
}

// loadLayer is supervisor.LoadFile(path), failing the test on error. It
// also returns the config's metrics address when this checkout's
// supervisor does not know the metrics key yet (it is being added): the
// key is then taken out of the file before LoadFile reads it, and only
// that key. Once the key exists, LoadFile reads it like any other and
// readMaster takes it from the Config.
func loadLayer(t *testing.T, path string) (supervisor.Layer, string) {
	t.Helper()
	metrics, read := "", path
	if !hasSetting("metrics") {
		var err error
		if read, metrics, err = withoutKey(path, "metrics", t.TempDir()); err != nil {
			t.Fatal(err)
		}
		if metrics != "" {
			t.Logf("%s: this supervisor has no metrics key yet: metrics: %s read from the YAML, the rest by LoadFile", path, metrics)
		}
	}
	l, err := supervisor.LoadFile(read)
	if err != nil {
		t.Fatal(err)
	}
	return l, metrics
}

// withoutKey returns path itself when its top-level mapping has no key
// named key, else a copy of the file without it (written in dir, under the
// same base name) and the key's string value.
func withoutKey(path, key, dir string) (string, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return path, "", nil // LoadFile gives the error, with its position
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return path, "", nil
	}
	top := doc.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != key {
			continue
		}
		v := top.Content[i+1]
		if v.Kind != yaml.ScalarNode || v.Value == "" {
			return "", "", fmt.Errorf("%s:%d:%d: %s: want a string like 127.0.0.1:9100", path, v.Line, v.Column, key)
		}
		top.Content = slices.Delete(top.Content, i, i+2)
		out, err := yaml.Marshal(&doc)
		if err != nil {
			return "", "", err
		}
		stripped := filepath.Join(dir, filepath.Base(path))
		return stripped, v.Value, os.WriteFile(stripped, out, 0o644)
	}
	return path, "", nil
}

// settingOfFlag finds the setting of a flag of `supervisor run`: by its
// long name (long) or by its one-letter shorthand.
func settingOfFlag(name string, long bool) (supervisor.Setting, bool) {
	for _, s := range supervisor.Settings() {
		if (long && s.Flag() == name) || (!long && s.Short != "" && s.Short == name) {
			return s, true
		}
	}
	return supervisor.Setting{}, false
}

func hasSetting(key string) bool {
	return slices.Contains(supervisor.Keys(), key)
}

// stringSetting is the value of the string setting key in c.
func stringSetting(t *testing.T, c supervisor.Config, key string) string {
	t.Helper()
	for _, s := range supervisor.Settings() {
		if s.Key == key {
			p, ok := s.Field(&c).(*string)
			if !ok {
				t.Fatalf("setting %s is a %T, not a string: the test reads it as HOST:PORT", key, s.Field(&c))
			}
			return *p
		}
	}
	t.Fatalf("no setting %s", key)
	return ""
}

// stopTime is how long the master may take to stop after SIGTERM:
// shutdown_delay (still serving), then every worker stops in parallel,
// each within graceful_timeout.
func stopTime(c supervisor.Config) time.Duration {
	return c.ShutdownDelay + c.GracefulTimeout
}
