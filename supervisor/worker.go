package supervisor

import (
	"time"

	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// wstate is where a worker is in its life.
type wstate int

const (
	wStarting wstate = iota // forked, not ready yet
	wReady                  // serving
	wStopping               // asked to stop, or leaving on its own
)

func (s wstate) String() string {
	return [...]string{"starting", "ready", "stopping"}[s]
}

// worker is the loop's record of one worker process. Only the loop touches it.
type worker struct {
	proc  *workers.Process
	slot  int
	gen   int
	cfg   *Resolved // its generation's config
	state wstate
	niced bool // started with boot_nice, not yet set back (bootnice.go)

	// Timers, each zero when not set. setState clears those of the state
	// the worker leaves.
	readyBy        time.Time // starting: not ready by then is a failed start (ready_timeout)
	delayedReadyAt time.Time // starting, with --ready delay: it counts as ready then
	heartbeatBy    time.Time // ready, with a heartbeat: WATCHDOG=1 is due by then
	killAt         time.Time // stopping: SIGKILL to its group then (zero once sent)
	retireAt       time.Time // recycled for max_lifetime then (zero: no limit)
	reniceAt       time.Time // ready after boot_nice: its group set back once more then (bootnice.go)

	// How it is ending, for the exit and drain metrics.
	drainFrom time.Time // when it was first asked to stop, or said STOPPING=1
	killed    bool      // SIGKILL sent: it outlived its graceful timeout
	timedOut  bool      // stopped for a missed ready deadline or heartbeat

	// wasReady: it has been ready (and handles USR1); reopenLogs: a USR1
	// came before that, to forward once it is ready.
	wasReady, reopenLogs bool

	status   string
	requests int64
	rss      int64 // its process group's RSS at the last sample
	// listenInodes: its sockets, while it is watched for listen
	// readiness (starting, --ready listen or auto); nil otherwise.
	listenInodes []uint64

	// Recycling: the request limit drawn at spawn (0: none), and why it is
	// being replaced ("" while it is not).
	maxRequests   int64
	recycleReason string
}

// setState moves the worker to s and clears the timers of the states it
// leaves; leaving wStarting ends its listen watch.
func (w *worker) setState(s wstate) {
	if s != wStarting {
		w.listenInodes = nil
		w.readyBy, w.delayedReadyAt = time.Time{}, time.Time{}
	}
	if s != wReady {
		w.heartbeatBy, w.reniceAt = time.Time{}, time.Time{}
	}
	if s != wStopping {
		w.killAt = time.Time{}
	}
	w.state = s
}

func (w *worker) fields() []zap.Field {
	return []zap.Field{zap.Int("pid", w.proc.Pid), zap.Int("slot", w.slot), zap.Int("generation", w.gen)}
}

// WorkerInfo is one worker as the master sees it.
type WorkerInfo struct {
	Pid        int       `json:"pid"`
	Slot       int       `json:"slot"`
	Generation int       `json:"generation"`
	State      string    `json:"state"` // starting, ready or stopping
	Started    time.Time `json:"started"`
	Requests   int64     `json:"requests"`          // last X_REQUESTS
	RSS        int64     `json:"rss,omitempty"`     // bytes: its process group's RSS when the status was taken; 0: unknown
	Recycle    string    `json:"recycle,omitempty"` // why it is being replaced
	Status     string    `json:"status,omitempty"`  // last STATUS=
	// Drain is where a stopping worker of a steered generation is in its
	// drain (DESIGN §8): "serving" (chosen to stop, its generation still
	// gets connections), "paused" (its generation gets none; not signalled
	// yet), "signalled" (its generation waits for it to stop listening);
	// "" otherwise.
	Drain string `json:"drain,omitempty"`
}
