// Package testkit is what the packages' tests share: one way to re-run the
// test binary as a named helper process (Go's os/exec tests do the same),
// bounded waits, a copy of the test binary another user can run, a
// process liveness check, and a loopback dialer for load loops
// (DialLoopback).
//
// It is imported only from _test.go files and the benchmarks (bench/);
// nothing the supervisor ships depends on it.
//
// Every package's TestMain is
//
//	func TestMain(m *testing.M) { testkit.Main(m) }
//
// (with an Arg option where the package's tests use the exec shim). Test
// files register their helpers by name in init:
//
//	func init() { testkit.Register("ready-then-wait", readyThenWait) }
//
// and start them with Command, or put Use(name) into the environment of a
// child that runs the test binary (a worker started by a master under test).
// When a test binary sees a helper's name in its environment, Main runs that
// helper instead of the tests. A full run (no -run or -skip filter, not
// -short) that passes fails if some registered helper was never used, so
// helpers do not outlive the tests that needed them.
package testkit
