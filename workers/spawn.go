package workers

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Forker owns every wait for a child (signals.Reaper): it runs start with its
// lock held, registers the pid, and delivers the exit status once.
type Forker interface {
	Fork(start func() (int, error)) (int, <-chan syscall.WaitStatus, error)
}

// Spec says how to start one worker.
type Spec struct {
	Path       string              // the resolved executable
	Args       []string            // argv; Args[0] is the name the app sees
	Shim       []string            // argv prefix that runs RunShim, e.g. [supervisor, ShimArg] or EmbeddedShim's; nil: exec Path directly (no LISTEN_PID)
	Nice       int                 // > 0: the worker starts this much nicer than the master (Renice resets it), which needs the right to raise priority (root or RLIMIT_NICE): the forking thread forks every worker and is set back after each; 0: as the master
	Dir        string              // working directory; "" = the master's
	Env        []string            // the whole environment (see Env)
	Sockets    []int               // raw listening fds; they become 3, 4, ... in order
	Stdout     int                 // fd for the worker's stdout (the master's 1 to pass through)
	Stderr     int                 // fd for the worker's stderr
	Credential *syscall.Credential // nil: the master's own
	Forker     Forker
	Exited     chan<- Exit // receives the worker's Exit once; never closed
}

// Exit reports how a worker ended.
type Exit struct {
	Pid    int
	Status syscall.WaitStatus
	At     time.Time
}

// Describe says how a process ended: "exited with status 3" or "killed by
// signal killed".
func Describe(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	case ws.Signaled():
		return fmt.Sprintf("killed by signal %s", ws.Signal())
	}
	return fmt.Sprintf("ended with wait status %#x", uint32(ws))
}

// Process is a started worker: the leader of its own process group.
type Process struct {
	Pid     int
	Started time.Time
}

// Signal sends sig to the worker's whole process group. A group that is
// already gone is not an error.
func (p *Process) Signal(sig syscall.Signal) error {
	err := syscall.Kill(-p.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// niceThread makes the calling thread by more nicer (at most 19) and
// returns the nice value it had.
func niceThread(by int) (was int, err error) {
	was, err = Nice(0)
	if err != nil {
		return 0, err
	}
	if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), min(was+by, 19)); err != nil {
		return 0, fmt.Errorf("boot nice: setpriority: %w", err)
	}
	return was, nil
}

// Nice is the nice value of thread tid (0: the calling thread).
func Nice(tid int) (int, error) {
	if tid == 0 {
		tid = unix.Gettid()
	}
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return 0, fmt.Errorf("getpriority: %w", err)
	}
	return 20 - prio, nil // the raw syscall's 40..1 for nice -20..19
}

// Renice sets the nice value of every thread of every process in p's
// process group at once (setpriority PRIO_PGRP): a worker started with
// Spec.Nice, back to the master's once it is ready. Raising the priority
// needs root (CAP_SYS_NICE) or an RLIMIT_NICE that allows it.
func Renice(p *Process, nice int) error {
	if err := unix.Setpriority(unix.PRIO_PGRP, p.Pid, nice); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("setpriority of process group %d to %d: %w", p.Pid, nice, err)
	}
	return nil
}

// Start forks the worker described by spec and returns once it has exec'd
// (or failed to). Its Exit later arrives on spec.Exited.
//
// The fork happens on the forking thread (forker.go), which lives while
// any child it forked is unreaped: the kernel sends the parent-death signal
// (SIGKILL) when the forking *thread* exits, not the process
// (golang/go#27505), so it fires only when the master itself dies. The
// parent-death signal is set after the credential change (Go's fork
// order), since the kernel clears it on a uid/gid change.
//
// A Shim[0] of the form /proc/self/fd/N (EmbeddedShim's) names this
// process's fd N, which the child cannot see under that number: Start
// passes fd N to the child as the fd after the sockets, K = 3+len(Sockets),
// and runs /proc/self/fd/K (as argv[0] too); the shim must close fd K
// before it execs the worker, as the embedded one does.
//
// The socket fds are passed by number through syscall.ForkExec, which
// dup2s them into place; nothing calls (*os.File).Fd, so the sockets' shared
// file status flags never change (DESIGN §5).
func Start(spec Spec) (*Process, error) {
	argv0, argv := spec.Path, spec.Args
	shimFd := -1
	if len(spec.Shim) > 0 {
		argv0 = spec.Shim[0]
		argv = append(append(append([]string{}, spec.Shim...), spec.Path), spec.Args...)
		if n, ok := strings.CutPrefix(argv0, "/proc/self/fd/"); ok {
			fd, err := strconv.Atoi(n)
			if err != nil {
				return nil, fmt.Errorf("start %s: exec shim %s: not an fd", spec.Path, argv0)
			}
			shimFd = fd
			argv0 = "/proc/self/fd/" + strconv.Itoa(3+len(spec.Sockets))
			argv[0] = argv0
		}
	}
	var (
		pid      int
		at       time.Time
		exited   <-chan syscall.WaitStatus
		startErr error
	)
	forker.do(func() bool {
		devnull, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			startErr = fmt.Errorf("open /dev/null: %w", err)
			return false
		}
		restore := func() {}
		if spec.Nice > 0 {
			// This thread forks the child, which inherits its nice value;
			// it runs nothing but forks, so no other work of the master
			// runs at that priority, and it is set back after the fork.
			was, err := niceThread(spec.Nice)
			if err != nil {
				syscall.Close(devnull)
				startErr = err
				return false
			}
			restore = func() { _ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), was) }
		}
		files := []uintptr{uintptr(devnull), uintptr(spec.Stdout), uintptr(spec.Stderr)}
		for _, fd := range spec.Sockets {
			files = append(files, uintptr(fd))
		}
		if shimFd >= 0 {
			files = append(files, uintptr(shimFd))
		}
		attr := &syscall.ProcAttr{
			Dir:   spec.Dir,
			Env:   spec.Env,
			Files: files,
			Sys: &syscall.SysProcAttr{
				Setpgid:    true,
				Pdeathsig:  syscall.SIGKILL,
				Credential: spec.Credential,
			},
		}
		pid, exited, startErr = spec.Forker.Fork(func() (int, error) {
			return syscall.ForkExec(argv0, argv, attr)
		})
		at = time.Now()
		restore()
		syscall.Close(devnull)
		return startErr == nil
	})
	if startErr != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Path, startErr)
	}
	go func() {
		ws := <-exited
		forker.release() // reaped: the forking thread may end now
		spec.Exited <- Exit{Pid: pid, Status: ws, At: time.Now()}
	}()
	return &Process{Pid: pid, Started: at}, nil
}
