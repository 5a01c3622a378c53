package supervisor

import (
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
	// OnReady runs each time this master takes charge (the tableflip
	// Upgrader's Ready: the pid file, and the old master told): when the
	// first workers are all ready; in a new master, when its canary is;
	// in an old master whose new master died after taking over, when it
	// takes its pool back.
	OnReady func() error
	// Upgrader starts a new master on USR2 or `supervisor upgrade`; nil
	// refuses upgrades. Parent, when not nil, is this master's end of the
	// link to the master it replaces (LinkName in the upgrader's store):
	// Run then takes over from it instead of booting alone.
	Upgrader Upgrader
	Parent   *os.File
	// Serving, when not nil, is told when this master starts or stops
	// answering the control socket in an upgrade: false in the old master
	// at the commit, true in the new master at the commit and in an old
	// master taking its pool back. (A master not started by an upgrade
	// serves from its start; Run does not call Serving for that.)
	Serving func(on bool)
	// SystemdNotify is the NOTIFY_SOCKET the master itself was given by
	// systemd ("" when none): where it sends READY=1, RELOADING=1 and
	// STOPPING=1. Workers get the master's own notify socket instead.
	SystemdNotify string
	Stdout        int // fd workers write their stdout to
	Stderr        int // fd workers write their stderr to
	// Metrics is where the master counts what happens; nil: a registry of
	// its own that nobody reads. MetricsSocket, when not nil, serves it
	// (Metrics.Handler) while this master is in charge (from the start, or
	// from an upgrade's commit, until it hands over) and until Run returns;
	// the socket stays open for the caller to close.
	Metrics       *Metrics
	MetricsSocket *listener.Socket
	// FDStore, when not nil, is systemd's fd store (listener.FDStore):
	// every socket the master opens for a bind is added to it, and taken
	// out when a reload removes its bind; an error is logged, never fatal.
	FDStore interface {
		Add(*listener.Socket) error
		Remove(*listener.Socket) error
	}
}

// Run is the master: it opens the sockets of cfg, starts cfg.Workers
// workers, keeps them running and rolls them over on reload, and returns
// after a stop once every worker is gone. It returns nil after a requested
// stop, or why the master gave up (a bind that failed, workers that could
// not boot). It retires sockets whose bind a reload removed; the others are
// left open for the caller to close.
func Run(cfg *Resolved, opts Options) error {
	m := newMaster(cfg, opts, osEnv())
	defer m.metrics.live.stop()
	var why string
	if m.nice, why = probeBootNice(); !m.nice.ok && cfg.BootNice > 0 {
		m.log.Info("boot_nice off: workers start at the master's priority", zap.String("why", why))
	}
	if opts.Parent != nil {
		l, err := newLink(opts.Parent)
		if err != nil {
			return err
		}
		defer func() {
			if m.parent != nil {
				m.parent.close()
			}
		}()
		if err := m.takeOver(l); err != nil {
			_ = l.send(linkMsg{Fail: err.Error()})
			l.close()
			return err
		}
	} else {
		m.serveMetrics(true)
	}
	defer m.serveMetrics(false)
	defer func() {
		if m.pair != nil {
			m.pair.close()
			m.pair.handedOver()
		}
	}()
	defer m.closeSteering()
	socks, err := m.socketsFor(m.stable, cfg.Addrs)
	if err != nil {
		m.tellParent(linkMsg{Fail: err.Error()})
		return err
	}
	m.genSockets[m.stable] = socks
	m.dropInherited()
	m.adviseMigrate()
	m.notify = newNotifySockets(m.log)
	if err := m.notify.open(cfg); err != nil {
		err = fmt.Errorf("notify socket: %w", err)
		m.tellParent(linkMsg{Fail: err.Error()})
		return err
	}
	reaper := signals.NewReaper(os.Getpid() == 1)
	defer reaper.Close()
	m.forker = reaper
	dropped := m.notify.dropped
	m.metrics.dropped.Store(&dropped)
	defer m.notify.close()
	return m.loop(m.notify.notes)
}

// serveMetrics starts or stops serving the metrics port, when there is one.
func (m *master) serveMetrics(on bool) {
	switch {
	case m.opts.MetricsSocket == nil:
	case on && m.metricsStop == nil:
		ln, err := m.opts.MetricsSocket.Listener()
		if err != nil {
			m.log.Warn("metrics port", zap.Error(err))
			return
		}
		m.metricsStop = serveMetrics(ln, m.metrics, m.log)
	case !on && m.metricsStop != nil:
		m.metricsStop()
		m.metricsStop = nil
	}
}

// serving hands the control socket and the metrics port over (false) or
// takes them (true), in an upgrade.
func (m *master) serving(on bool) {
	if m.opts.Serving != nil {
		m.opts.Serving(on)
	}
	m.serveMetrics(on)
}

// dropReportEvery bounds how often readNotify logs dropped datagrams.
const dropReportEvery = 10 * time.Second

// notifyBatch is the most datagrams readNotify hands the loop at once.
const notifyBatch = 64

// readNotify reads the notify socket and sends the datagrams on notes, each
// batch of those already queued at once (NotifySocket.ReadBatch), until the
// socket is closed or quit is. Datagrams the socket dropped (malformed,
// oversized, without credentials, from another user) are logged with their
// count when the next one is read, at most once per dropReportEvery, and
// once more when it ends.
func readNotify(ns *workers.NotifySocket, notes chan<- []workers.Notification, quit <-chan struct{}, log *zap.Logger) {
	var reported uint64
	var last time.Time
	report := func() {
		if d := ns.Dropped(); d > reported {
			log.Warn("notify datagrams dropped: malformed, oversized, without sender credentials or from another user",
				zap.Uint64("dropped", d-reported), zap.Uint64("total", d))
			reported, last = d, time.Now()
		}
	}
	defer report()
	for {
		batch, err := ns.ReadBatch(nil, notifyBatch)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			log.Warn("notify socket", zap.Error(err))
			continue
		}
		if time.Since(last) >= dropReportEvery {
			report()
		}
		select {
		case notes <- batch:
		case <-quit:
			return
		}
	}
}
