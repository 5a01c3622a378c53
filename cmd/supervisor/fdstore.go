package main

import (
	"slices"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/supervisor"
	"go.uber.org/zap"
)

// releaseFDStore is the start of a master under systemd's fd store (DESIGN
// §4): before anything is bound, it lets go of the sockets systemd passed
// back that no bind of res (nor --metrics) claims, so that a bind the
// config dropped or renamed while no master ran frees its port, and tells
// systemd to forget their names (listener.ReleaseUnclaimed). It returns sd
// without them, and logs each one, and once whether st keeps sockets.
// Failures to reach systemd are logged: the master starts all the same.
func releaseFDStore(sd listener.Systemd, res *supervisor.Resolved, st *listener.FDStore, log *zap.Logger) listener.Systemd {
	if st != nil {
		log.Info("systemd's fd store is on: every socket the master binds is kept there across a crash")
	}
	addrs := res.Addrs
	if res.MetricsAddr != nil {
		addrs = append(slices.Clip(addrs), *res.MetricsAddr)
	}
	rest, released, err := listener.ReleaseUnclaimed(sd, addrs, st)
	for _, name := range released {
		log.Info("released a socket from systemd's fd store: no bind of the config claims it", zap.String("fdname", name))
	}
	if err != nil {
		log.Warn("systemd's fd store", zap.Error(err))
	}
	return rest
}

// adoptedFromFDStore logs each of ss that Open adopted from systemd's fd
// store and returns sd without them (listener.Systemd.Forget): an adopted
// descriptor is the Socket's from now on, and a bind added again later is
// bound afresh.
func adoptedFromFDStore(sd listener.Systemd, ss []*listener.Socket, log *zap.Logger) listener.Systemd {
	for _, s := range ss {
		if s.FromFDStore() {
			log.Info("adopted from systemd's fd store", zap.String("bind", s.Name), zap.String("fdname", s.FDStoreName()),
				zap.String("address", s.Addr), zap.Int("fd", s.RawFD()))
		}
	}
	return sd.Forget(ss)
}
