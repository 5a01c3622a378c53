// Package controltest stands in for the master behind a control socket, for
// the tests of control clients: the supervisor package's own and the
// command line's. It is imported only from _test.go files.
package controltest

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// FakeLoop stands in for the master's event loop: one goroutine takes each
// Call sent on calls, records its Request on seen, and then answers it with
// answer's Response when answer's second result is true, or never when it is
// false (a master that hangs). seen holds 100 requests; the loop blocks
// while it is full. The goroutine ends when the test does; the test fails
// if it has not ended 5s after that (it was blocked on seen or on a Reply).
func FakeLoop(t testing.TB, answer func(supervisor.Request) (supervisor.Response, bool)) (calls chan<- supervisor.Call, seen <-chan supervisor.Request) {
	t.Helper()
	in := make(chan supervisor.Call)
	out := make(chan supervisor.Request, 100)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case c := <-in:
				out <- c.Request
				if r, ok := answer(c.Request); ok {
					c.Reply <- r
				}
			case <-quit:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(quit)
		testkit.Recv(t, done, 5*time.Second, "the fake loop to end")
	})
	return in, out
}

// Serve listens on a control socket, control.sock in a new t.TempDir(), and
// serves it to a FakeLoop with answer; seen is the loop's. When the test
// ends the server is closed first, then the loop ended.
func Serve(t testing.TB, answer func(supervisor.Request) (supervisor.Response, bool)) (s *supervisor.ControlServer, seen <-chan supervisor.Request) {
	t.Helper()
	s, err := supervisor.ListenControl(filepath.Join(t.TempDir(), "control.sock"))
	if err != nil {
		t.Fatal(err)
	}
	calls, seen := FakeLoop(t, answer)
	s.Serve(calls)
	t.Cleanup(func() { s.Close() })
	return s, seen
}
