package supervisor

import (
	mrand "math/rand/v2"
	"net/netip"
	"syscall"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/workers"
)

// env is the master's edge to processes and time: what the loop calls to
// fork and signal workers, read the clock and draw jitter. Run uses osEnv;
// unit tests put fakes in its place and drive the loop's handlers through
// event sequences without a process or a real timer.
type env struct {
	// spawn forks a worker; its exit is reported later on spec.Exited.
	spawn func(workers.Spec) (*workers.Process, error)
	// signal sends sig to a worker's process group; a group already gone
	// is not an error.
	signal func(p *workers.Process, sig syscall.Signal) error
	// renice sets the nice value of a worker's whole process group.
	renice func(p *workers.Process, nice int) error
	now    func() time.Time
	rand   func(n int64) int64 // uniform in [0, n), n > 0
	// trim hands memory the quiet master holds back to the kernel.
	trim func()
	// group makes a steered bind's reuseport group (listener.NewGroup).
	group func(first *listener.Socket, more []*listener.Socket) (steerGroup, error)
	// unread and listening are the drain's checks (drain.go), run off the
	// loop: which process groups hold requests not read yet
	// (workers.UnreadGroups), which still wait for connections on their
	// sockets (workers.ListenScan).
	unread    func(pgids []int) (map[int]bool, error)
	listening func(watch map[int][]uint64) ([]int, map[int]error)
	// async runs f off the loop (go f()); the simulator runs it at once.
	async func(f func())
	// probeSocket opens a canary probe's socket, bound to a port of its
	// own; probe runs one attempt with it, off the loop (probe.go).
	probeSocket func(to netip.AddrPort) (fd int, port uint16, err error)
	probe       func(probeAttempt) error
}

// osEnv is the real thing: spawn is workers.Start, short of RLIMIT_NPROC
// (limits.go).
func osEnv() env {
	return env{
		spawn:       spawnWithinLimits,
		signal:      (*workers.Process).Signal,
		renice:      workers.Renice,
		now:         time.Now,
		rand:        mrand.Int64N,
		trim:        trimMemory,
		group:       newGroup,
		unread:      workers.UnreadGroups,
		listening:   workers.ListenScan,
		async:       func(f func()) { go f() },
		probeSocket: openProbeSocket,
		probe:       runProbe,
	}
}
