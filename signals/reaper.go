package signals

import (
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// LostStatus is delivered for a registered child whose status another waiter
// took (wait4 said ECHILD): it reads as "exited 255".
const LostStatus = syscall.WaitStatus(255 << 8)

// Reaper owns every wait for the children it starts. Fork runs the start
// function with the reaper's lock held and registers the pid before any exit
// can be reaped, so a child that dies at once is still reported. On SIGCHLD
// the reaper waits for each registered pid without blocking and, when it
// adopts orphans (PID 1 or a subreaper), reaps every other child too and
// discards their statuses.
//
// Only registered pids are waited for otherwise, so a Reaper coexists with
// os/exec in the same process (tests rely on that).
type Reaper struct {
	mu      sync.Mutex
	waiting map[int]chan syscall.WaitStatus // guarded by mu
	orphans bool

	sigc chan os.Signal
	quit chan struct{}
	done chan struct{}
}

// NewReaper starts a reaper. With orphans set it also reaps children it did
// not start (use it when running as PID 1). Close stops it.
func NewReaper(orphans bool) *Reaper {
	r := &Reaper{
		waiting: make(map[int]chan syscall.WaitStatus),
		orphans: orphans,
		sigc:    make(chan os.Signal, 1),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	signal.Notify(r.sigc, syscall.SIGCHLD)
	go r.run()
	return r
}

// Fork calls start (which must fork a child and return its pid) with the lock
// held, registers the pid, and returns a channel that receives the child's
// wait status exactly once. If start fails, nothing is registered.
func (r *Reaper) Fork(start func() (int, error)) (int, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiting[pid] = ch
	// A SIGCHLD that arrived while start ran is queued in sigc, so the
	// reap that follows it sees this pid.
	return pid, ch, nil
}

// Close stops the reaper's goroutine and blocks until it has ended. Children
// still registered are no longer waited for. Idempotent.
func (r *Reaper) Close() {
	select {
	case <-r.quit:
	default:
		close(r.quit)
		signal.Stop(r.sigc)
	}
	<-r.done
}

func (r *Reaper) run() {
	defer close(r.done)
	for {
		select {
		case <-r.sigc:
			r.reap()
		case <-r.quit:
			return
		}
	}
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid, ch := range r.waiting {
		ws, ok := wait(pid)
		if ok {
			ch <- ws
			delete(r.waiting, pid)
		}
	}
	for r.orphans {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiting[pid]; ok {
			ch <- ws
			delete(r.waiting, pid)
		}
	}
}

// wait reaps pid without blocking; ok is false while it still runs.
func wait(pid int) (syscall.WaitStatus, bool) {
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.ECHILD):
			return LostStatus, true
		case err != nil || got != pid:
			return 0, false
		}
		return ws, true
	}
}
