package supervisor

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/signals"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// Options is what Run needs besides the config: the sockets and the edges to
// the outside world. cmd/supervisor fills it; tests fill it with fakes.
type Options struct {
	Log     *zap.Logger
	Sockets []*listener.Socket // already bound, in --bind order
	Shim    []string           // argv prefix running workers.RunShim
	Signals <-chan os.Signal   // the master's signals (signals.Notify)
	// OnReady runs once, when the first workers are all ready (the
	// tableflip Upgrader's Ready: pid file).
	OnReady func() error
	Systemd string // the master's own NOTIFY_SOCKET, "" when not under systemd
	Stdout  int    // fd workers write their stdout to
	Stderr  int    // fd workers write their stderr to

	status chan chan []WorkerInfo // snapshot requests (tests)
}

// Run is the master: it starts cfg.Workers workers on opts.Sockets, keeps
// them running, and returns after a stop once every worker is gone. It
// returns nil after a requested stop, or why the master gave up (workers
// that could not boot). It does not close the sockets.
func Run(cfg *Resolved, opts Options) error {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	ns, err := workers.ListenNotify(notifyAddr())
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	reaper := signals.NewReaper(os.Getpid() == 1)
	defer reaper.Close()

	notes := make(chan workers.Notification, 64)
	quit := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			n, err := ns.Read()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				opts.Log.Warn("notify socket", zap.Error(err))
				continue
			}
			select {
			case notes <- n:
			case <-quit:
				return
			}
		}
	}()
	defer func() {
		close(quit)
		ns.Close()
		<-readerDone
	}()

	for _, s := range opts.Sockets {
		opts.Log.Info("listening", zap.String("address", s.Addr), zap.String("name", s.Name), zap.Int("fd", s.RawFD()))
	}
	m := &master{
		cfg:      cfg,
		opts:     opts,
		log:      opts.Log,
		notify:   ns.Addr(),
		reaper:   reaper,
		exited:   make(chan workers.Exit, 64),
		now:      time.Now,
		gen:      1,
		workers:  make(map[int]*worker),
		restarts: make(map[int]time.Time),
		crashes:  make(map[int]int),
	}
	return m.loop(notes)
}

// notifyAddr is a fresh abstract-namespace address: nothing to clean up,
// reachable by workers running as another user.
func notifyAddr() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return fmt.Sprintf("@supervisor/%d/%s/notify", os.Getpid(), hex.EncodeToString(b))
}
