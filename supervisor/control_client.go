package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// The client side of the control protocol: where the socket is, how to
// call it, and the argument of `supervisor scale`.

// DefaultControlPath is where the master listens and clients connect when
// --control is not given, in this order:
//   - $XDG_RUNTIME_DIR/supervisor/control.sock when XDG_RUNTIME_DIR is set;
//   - else, given a pid file, beside it with the pid file's name and a
//     .sock extension (/run/app.pid -> /run/app.sock);
//   - else /run/supervisor/control.sock for root and
//     /tmp/supervisor-UID/control.sock for anyone else.
//
// Master and client agree when they run as the same user with the same
// environment and --pid; otherwise give --control to both.
func DefaultControlPath(pidFile string) string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "supervisor", "control.sock")
	}
	if pidFile != "" {
		base := filepath.Base(pidFile)
		name := base[:len(base)-len(filepath.Ext(base))] + ".sock"
		if name == base || name == ".sock" {
			name = base + ".sock"
		}
		return filepath.Join(filepath.Dir(pidFile), name)
	}
	if uid := os.Geteuid(); uid != 0 {
		return filepath.Join(os.TempDir(), "supervisor-"+strconv.Itoa(uid), "control.sock")
	}
	return "/run/supervisor/control.sock"
}

// CallControl sends req to the master at path and returns its Response
// (which may itself say OK false). timeout bounds the whole exchange; 0
// waits as long as the master takes. The error is one line for people:
//   - no file at path: "no master running: control socket PATH not found ..."
//   - nobody listening: "no master running at PATH (stale socket)"
//   - EACCES: "control socket PATH: permission denied: run as root or ..."
//   - no answer in time: "control socket PATH: no answer within D", which
//     matches os.ErrDeadlineExceeded under errors.Is.
func CallControl(path string, req Request, timeout time.Duration) (Response, error) {
	var resp Response
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("unix", path)
	if err != nil {
		return resp, dialError(path, err)
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	if timeout > 0 {
		_ = conn.SetDeadline(time.Now().Add(timeout))
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return resp, exchangeError(path, timeout, err)
	}
	_ = conn.CloseWrite()
	if err := json.NewDecoder(io.LimitReader(conn, controlMaxResponse)).Decode(&resp); err != nil {
		return resp, exchangeError(path, timeout, err)
	}
	return resp, nil
}

// controlError is a one-line message that still unwraps to its cause.
type controlError struct {
	msg string
	err error
}

func (e *controlError) Error() string { return e.msg }
func (e *controlError) Unwrap() error { return e.err }

func dialError(path string, err error) error {
	errno := errnoOf(err)
	var msg string
	switch {
	case errors.Is(err, syscall.ENOENT):
		msg = fmt.Sprintf("no master running: control socket %s not found (start one, or give --control)", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		if fi, serr := os.Lstat(path); serr == nil && fi.Mode().Type() != os.ModeSocket {
			msg = fmt.Sprintf("control socket %s: not a socket (give the master's --control)", path)
		} else {
			msg = fmt.Sprintf("no master running at %s (stale socket)", path)
		}
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		msg = fmt.Sprintf("control socket %s: permission denied: run as root or as the master's user", path)
	case errors.Is(err, os.ErrDeadlineExceeded):
		msg = fmt.Sprintf("control socket %s: the master did not accept the connection in time", path)
	default:
		msg = fmt.Sprintf("control socket %s: %v", path, errno)
	}
	return &controlError{msg: msg, err: err}
}

func exchangeError(path string, timeout time.Duration, err error) error {
	var msg string
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		msg = fmt.Sprintf("control socket %s: no answer within %s", path, timeout)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		msg = fmt.Sprintf("control socket %s: the master closed the connection without answering", path)
	default:
		msg = fmt.Sprintf("control socket %s: %v", path, errnoOf(err))
	}
	return &controlError{msg: msg, err: err}
}

// errnoOf is the innermost system error in err (without "dial unix ...:"
// prefixes), or err itself.
func errnoOf(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// ParseScale parses the argument of `supervisor scale`: "N" sets the pool to
// N workers (N >= 1); "+N" adds and "-N" removes N (N >= 1).
func ParseScale(s string) (n int, relative bool, err error) {
	digits := s
	if s != "" && (s[0] == '+' || s[0] == '-') {
		digits, relative = s[1:], true
	}
	n, err = strconv.Atoi(digits)
	if err != nil || digits == "" || digits[0] < '0' || digits[0] > '9' {
		return 0, false, fmt.Errorf("want N, +N or -N, got %q", s)
	}
	if n < 1 {
		if relative {
			return 0, false, fmt.Errorf("%s: nothing to change", s)
		}
		return 0, false, fmt.Errorf("%s: the pool needs at least 1 worker", s)
	}
	if s[0] == '-' {
		n = -n
	}
	return n, relative, nil
}
