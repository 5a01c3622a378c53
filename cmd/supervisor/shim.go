package main

import (
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// workerShim returns the exec shim every worker starts through (DESIGN §5):
// embedded's (workers.EmbeddedShim: about 0.2 ms of CPU per worker), or,
// when that fails, this binary run as workers.ShimArg (about 5 ms: the Go
// runtime and every package's init), after one warning on log that says
// why. Call it once per master.
func workerShim(log *zap.Logger, embedded func() ([]string, error)) []string {
	shim, err := embedded()
	if err != nil {
		log.Warn("the embedded exec shim is unavailable; workers start through this binary as the shim, at more CPU per worker", zap.Error(err))
		return []string{"/proc/self/exe", workers.ShimArg}
	}
	return shim
}
