package workers

import (
	"testing"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// Workers started through the exec shim are this test binary run as
// "BINARY __exec-shim PATH ARGV0 ARGS..."; offMainShimArg runs the same
// shim from a thread other than the main one (shim_test.go).
func TestMain(m *testing.M) {
	testkit.Main(m, testkit.Arg(ShimArg, RunShim), testkit.Arg(offMainShimArg, shimOffMain))
}
