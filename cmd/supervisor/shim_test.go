package main

import (
	"errors"
	"slices"
	"testing"

	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Workers start through the embedded shim; when it cannot be set up, through
// this binary as the shim, with one warning.
func TestWorkerShim(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	want := []string{"/proc/self/fd/9", workers.ShimArg}
	if got := workerShim(zap.New(core), func() ([]string, error) { return want, nil }); !slices.Equal(got, want) {
		t.Errorf("with the embedded shim: %q, want %q", got, want)
	}
	if n := logs.Len(); n != 0 {
		t.Errorf("with the embedded shim: %d warnings, want 0", n)
	}
	fallback := []string{"/proc/self/exe", workers.ShimArg}
	if got := workerShim(zap.New(core), func() ([]string, error) { return nil, errors.New("no memfd") }); !slices.Equal(got, fallback) {
		t.Errorf("without: %q, want %q", got, fallback)
	}
	if n := logs.FilterMessageSnippet("embedded exec shim").Len(); n != 1 {
		t.Errorf("without: %d warnings, want 1", n)
	}
}
