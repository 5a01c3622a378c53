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
		m.Config = loadLayer(t, configFile).Apply(m.Config)
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
	m.Config = loadLayer(t, flagsFile).Apply(m.Config)

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

// loadLayer is supervisor.LoadFile(path), failing the test on error.
func loadLayer(t *testing.T, path string) supervisor.Layer {
	t.Helper()
	l, err := supervisor.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return l
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

// stopTime is how long the master may take to stop after SIGTERM:
// shutdown_delay (still serving), then every worker stops in parallel,
// each within graceful_timeout.
func stopTime(c supervisor.Config) time.Duration {
	return c.ShutdownDelay + c.GracefulTimeout
}
