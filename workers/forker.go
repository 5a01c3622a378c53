package workers

import (
	"runtime"
	"sync"
)

// The thread workers are forked from. The kernel sends a child its
// parent-death signal when the *thread* that forked it exits, not the
// process (golang/go#27505), and Go ends a thread when a goroutine locked
// to it returns. So every fork runs on one goroutine locked to its thread,
// and that goroutine returns only once no child it forked is left
// unreaped: the signal then fires only when the master itself dies. One
// thread serves the whole pool; a locked thread per worker would cost a
// thread created at every start, a handoff between threads at every exit,
// and one of the uid's RLIMIT_NPROC per worker (265 threads in a master of
// 256 workers, against 10).
type forkThread struct {
	mu   sync.Mutex
	jobs chan func() // nil while no thread runs; guarded by mu
	held int         // children forked and not reaped yet, and forks under way; guarded by mu
}

var forker forkThread

// do runs job on the forking thread, starting one if none runs, and
// returns once job has returned. job reports whether it left a child
// behind; if it did, release must be called once that child is reaped.
func (f *forkThread) do(job func() (forked bool)) {
	f.mu.Lock()
	f.held++ // no thread ends while a job waits for it
	if f.jobs == nil {
		jobs := make(chan func())
		f.jobs = jobs
		go func() {
			runtime.LockOSThread() // never unlocked: returning ends the thread
			for job := range jobs {
				job()
			}
		}()
	}
	jobs := f.jobs
	f.mu.Unlock()

	done := make(chan bool)
	jobs <- func() { done <- job() }
	if !<-done {
		f.release()
	}
}

// release ends one hold: a child was reaped, or a fork left none. The
// last one ends the thread.
func (f *forkThread) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held--; f.held == 0 {
		close(f.jobs)
		f.jobs = nil
	}
}
