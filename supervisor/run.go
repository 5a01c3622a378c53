package supervisor

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/signals"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// Options is what Run needs besides the config: the edges to the outside
// world. cmd/supervisor fills it; tests fill it with fakes.
type Options struct {
	Log *zap.Logger
	// Open binds or inherits sockets (listener.Open with the upgrader's
	// store). Run calls it for each bind of the first config and for each
	// bind a reload adds. Required.
	Open func([]listener.Addr) ([]*listener.Socket, error)
	// Load re-reads the config on reload; nil reloads the config in force
	// (new workers, same settings).
	Load    func() (*Resolved, error)
	Shim    []string         // argv prefix running workers.RunShim
	Signals <-chan os.Signal // the master's signals (signals.Notify)
	Control <-chan Call      // control requests (the control socket)
	// OnReady runs once, when the first workers are all ready (the
	// tableflip Upgrader's Ready: pid file).
	OnReady func() error
	Systemd string // the master's own NOTIFY_SOCKET, "" when not under systemd
	Stdout  int    // fd workers write their stdout to
	Stderr  int    // fd workers write their stderr to
}

// Run is the master: it opens the sockets of cfg, starts cfg.Workers
// workers, keeps them running and rolls them over on reload, and returns
// after a stop once every worker is gone. It returns nil after a requested
// stop, or why the master gave up (a bind that failed, workers that could
// not boot). It retires sockets whose bind a reload removed; the others are
// left open for the caller to close.
func Run(cfg *Resolved, opts Options) error {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	m := &master{
		opts:       opts,
		log:        opts.Log,
		exited:     make(chan workers.Exit, 64),
		seen:       make(chan listenSeen),
		rss:        make(chan map[int]int64, 1),
		rand:       mrand.Int64N,
		inodes:     map[int]uint64{},
		now:        time.Now,
		configs:    map[int]*Resolved{1: cfg},
		genSockets: map[int][]*listener.Socket{},
		sockets:    map[string][]*listener.Socket{},
		stable:     1,
		target:     1,
		lastGen:    1,
		workers:    make(map[int]*worker),
		restarts:   make(map[int]time.Time),
		crashes:    make(map[int]int),
	}
	m.started = m.now()
	socks, err := m.socketsFor(cfg.Addrs)
	if err != nil {
		return err
	}
	m.genSockets[1] = socks
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

	m.notify, m.reaper = ns.Addr(), reaper
	return m.loop(notes)
}

// notifyAddr is a fresh abstract-namespace address: nothing to clean up,
// reachable by workers running as another user.
func notifyAddr() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return fmt.Sprintf("@supervisor/%d/%s/notify", os.Getpid(), hex.EncodeToString(b))
}
