package testkit

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv names the helper a child of the test binary runs. Children of
// that child inherit it: a helper that starts the test binary again starts
// the same helper, unless it sets the variable anew.
const helperEnv = "TESTKIT_HELPER"

var registry = struct {
	sync.Mutex
	helpers map[string]func() int
	used    map[string]bool
}{helpers: map[string]func() int{}, used: map[string]bool{}}

// Register makes fn the helper called name: a test binary started with
// Use(name) in its environment runs fn and exits with its result instead of
// running the tests. Call it from an init function of a test file, ideally
// the file that uses the helper. It panics when name is empty or already
// registered.
func Register(name string, fn func() int) {
	registry.Lock()
	defer registry.Unlock()
	if name == "" || registry.helpers[name] != nil {
		panic(fmt.Sprintf("testkit: helper %q registered twice (or empty)", name))
	}
	registry.helpers[name] = fn
}

// Use marks helper name used and returns the environment entry
// ("TESTKIT_HELPER=name") that makes a test binary run it: for children
// started other than by Command, such as the workers a master under test
// forks. It panics when no helper has that name: a misspelt name is a bug
// in the test.
func Use(name string) string {
	registry.Lock()
	defer registry.Unlock()
	if registry.helpers[name] == nil {
		panic(fmt.Sprintf("testkit: no helper %q registered", name))
	}
	registry.used[name] = true
	return helperEnv + "=" + name
}

// MaySkip marks helper name used without starting it, for a test that may
// skip before it gets to start the helper (one that needs root, say): the
// full-run check then does not blame the helper for the skip.
func MaySkip(name string) { Use(name) }

// Command returns an unstarted command that runs the test binary as helper
// name (marking it used): this process's environment without its LISTEN_*
// variables (so a helper sees only the sockets the test gives it), then
// Use(name), then env ("K=V" entries, which win over earlier ones). ctx
// bounds the command: when it is done the process is killed. WaitDelay is
// 1s: Wait then gives the pipes 1s more (a grandchild may hold them) before
// it closes them. It fails t when the test binary cannot be found.
func Command(t testing.TB, ctx context.Context, name string, env ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("testkit: the test binary: %v", err)
	}
	cmd := exec.CommandContext(ctx, exe)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, Use(name))
	cmd.Env = append(cmd.Env, env...)
	cmd.WaitDelay = time.Second
	return cmd
}

// Option changes what Main does.
type Option func(*options)

type options struct {
	args  map[string]func([]string) int
	after []func()
}

// AfterTests makes Main run fn once the tests have run, before it checks
// for unused helpers and leaked goroutines: for what processes the tests
// killed leave behind.
func AfterTests(fn func()) Option {
	return func(o *options) { o.after = append(o.after, fn) }
}

// Arg makes Main run fn when the test binary is run as "BINARY arg
// REST...": Main exits with fn(REST) before it looks for a helper. The exec
// shim is one: Arg(workers.ShimArg, workers.RunShim).
func Arg(arg string, fn func(rest []string) int) Option {
	return func(o *options) { o.args[arg] = fn }
}

// Main is a package's whole TestMain; it never returns. In order:
//  1. when os.Args[1] is an Arg option's argument, it exits with that
//     option's function's result;
//  2. when the environment names a helper (see Use), it exits with the
//     helper's result, or with 2 after saying so on stderr when no helper
//     of that name is registered;
//  3. else it runs the tests; then the AfterTests functions; then it
//     removes PublicBinary's copy; then,
//     when the tests passed in a full run (no -run, -skip or -list, not
//     -short), it fails the run naming every registered helper that was
//     never used; then, if all passed, it fails the run when goroutines are
//     left over (goleak). It exits with the result.
func Main(m *testing.M, opts ...Option) {
	o := options{args: map[string]func([]string) int{}}
	for _, opt := range opts {
		opt(&o)
	}
	if len(os.Args) > 1 {
		if fn := o.args[os.Args[1]]; fn != nil {
			os.Exit(fn(os.Args[2:]))
		}
	}
	if name := os.Getenv(helperEnv); name != "" {
		registry.Lock()
		fn := registry.helpers[name]
		registry.Unlock()
		if fn == nil {
			fmt.Fprintf(os.Stderr, "testkit: unknown helper %q (in %s)\n", name, helperEnv)
			os.Exit(2)
		}
		os.Exit(fn())
	}
	goleak.VerifyTestMain(run{m, o.after})
}

// run is testing.M with Main's steps after the tests.
type run struct {
	m     *testing.M
	after []func()
}

func (r run) Run() int {
	code := r.m.Run()
	for _, fn := range r.after {
		fn()
	}
	removePublicBinary()
	if code != 0 || !fullRun() {
		return code
	}
	for _, name := range unusedHelpers() {
		fmt.Fprintf(os.Stderr, "testkit: helper %q was never used: remove it, or mark it with MaySkip in the test that skips\n", name)
		code = 1
	}
	return code
}

// fullRun says whether every test was asked to run.
func fullRun() bool {
	if testing.Short() {
		return false
	}
	for _, name := range []string{"test.run", "test.skip", "test.list"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" {
			return false
		}
	}
	return true
}

func unusedHelpers() []string {
	registry.Lock()
	defer registry.Unlock()
	var names []string
	for name := range registry.helpers {
		if !registry.used[name] {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}
