package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/supervisor-dev/supervisor/supervisor"
	"golang.org/x/sys/unix"
)

// What a master upgrade needs from the process: the control socket kept
// in tableflip's store, the link to the old master, the pid file.

// upgradeGrace is how long, beyond the config's ready_timeout, an old
// master waits for the new one to commit before tableflip kills it: a new
// binary that hangs before its canary even starts.
const upgradeGrace = 10 * time.Second

// controlKey names the control socket in the upgrader's store.
func controlKey(path string) string { return "control:" + path }

// openControl adopts the control socket the previous master kept, or
// creates it (supervisor.ListenControl) and keeps it for the next one.
func openControl(path string, upg *tableflip.Upgrader) (*supervisor.ControlServer, error) {
	f, err := upg.File(controlKey(path))
	if err != nil {
		return nil, fmt.Errorf("control socket %s: take it from the previous master: %w", path, err)
	}
	if f != nil {
		defer f.Close()
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("control socket %s: %w", path, err)
		}
		uln, ok := ln.(*net.UnixListener)
		if !ok {
			ln.Close()
			return nil, fmt.Errorf("control socket %s: the previous master kept a %T", path, ln)
		}
		s := supervisor.NewControlServer(uln, path)
		// The old master still answers there: the path is this
		// master's to remove only once it took over (serving).
		s.SetUnlinkOnClose(false)
		return s, nil
	}
	s, err := supervisor.ListenControl(path)
	if err != nil {
		return nil, err
	}
	if err := keepListener(upg, controlKey(path), s.Listener()); err != nil {
		s.Close()
		return nil, fmt.Errorf("control socket %s: keep it for a master upgrade: %w", path, err)
	}
	return s, nil
}

// keepListener adds a close-on-exec duplicate of ln's socket to the store,
// taken through SyscallConn: (*os.File).Fd would make the socket blocking.
func keepListener(upg *tableflip.Upgrader, name string, ln *net.UnixListener) error {
	raw, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	dup := -1
	var derr error
	if err := raw.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if derr != nil {
		return derr
	}
	f := os.NewFile(uintptr(dup), name)
	defer f.Close()
	return upg.AddFile(name, f)
}

// parentLink is this master's end of the link to the old master, when
// tableflip started it; nil at a plain start.
func parentLink(upg *tableflip.Upgrader) (*os.File, error) {
	if !upg.HasParent() {
		return nil, nil
	}
	f, err := upg.File(supervisor.LinkName)
	if err != nil {
		return nil, fmt.Errorf("upgrade: take the link to the old master: %w", err)
	}
	if f == nil {
		return nil, fmt.Errorf("upgrade: the old master (pid %d) passed no link: it is not a supervisor master of this version", os.Getppid())
	}
	return f, nil
}

// failToParent tells the old master of an upgrade why this new master
// gives up, when there is one: through parent, or through the upgrader
// (made here, with no options, if run failed before making it).
func failToParent(upg *tableflip.Upgrader, parent *os.File, err error) {
	if parent == nil {
		if upg == nil {
			upg, _ = tableflip.New(tableflip.Options{})
		}
		if upg != nil {
			parent, _ = parentLink(upg)
		}
	}
	if parent != nil {
		_ = supervisor.FailUpgrade(parent, err.Error())
		parent.Close()
	}
}

// onReady is Options.OnReady: the pid file, then tableflip's Ready the
// first time (the old master told), then the pid file alone (an old master
// taking its pool back after its new master died). The pid file is written
// here, not by tableflip (whose Ready returns before telling the old
// master when it cannot write it), so a pid file that fails at this point
// costs a warning, never the upgrade: it was checked at start
// (checkPidFile).
func onReady(upg *tableflip.Upgrader, pidFile string) func() error {
	first := true
	return func() error {
		err := writePidFile(pidFile)
		if first {
			first = false
			err = errors.Join(err, upg.Ready())
		}
		return err
	}
}

// checkPidFile fails, before anything is bound or started, when the pid
// file cannot be written: it writes this process's pid to a temporary file
// beside path, as writePidFile does, and removes it. A master that could
// not write its pid file once ready would serve where scripts and
// monitoring that read the file cannot find it (nginx and Gunicorn refuse
// to start too).
func checkPidFile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".pid")
	if err == nil {
		_, err = f.WriteString(strconv.Itoa(os.Getpid()))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if rerr := os.Remove(f.Name()); err == nil {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("pid file %s: cannot write it (%v): give --pid a path in a writable directory with free space", path, errnoOf(err))
	}
	return nil
}

// writePidFile writes this process's pid to path atomically (a temporary
// file beside it, renamed into place); nothing when path is "". The
// temporary file never outlives a failure.
func writePidFile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".pid")
	if err != nil {
		return fmt.Errorf("pid file %s not written: %v", path, errnoOf(err))
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(strconv.Itoa(os.Getpid()))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("pid file %s not written: %v", path, errnoOf(err))
	}
	return nil
}

// errnoOf is the system error in err without its path (the temporary
// file's name says nothing to an operator), or err itself.
func errnoOf(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// serving is Options.Serving for the control server: paused while the
// other master of an upgrade answers, served from the commit in a new
// master. served says whether Serve was called already.
func serving(control *supervisor.ControlServer, calls chan supervisor.Call, served bool) func(bool) {
	return func(on bool) {
		switch {
		case !on:
			control.SetUnlinkOnClose(false) // the new master answers there now
			control.Pause()
		case served:
			control.SetUnlinkOnClose(true)
			control.Resume()
		default:
			served = true
			control.SetUnlinkOnClose(true)
			control.Serve(calls)
		}
	}
}
