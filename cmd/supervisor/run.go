package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cloudflare/tableflip"
	"github.com/spf13/cobra"
	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/signals"
	"github.com/supervisor-dev/supervisor/supervisor"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// newRunCommand builds `run` (also the root command, so `run` may be omitted).
func newRunCommand(use, short string) *cobra.Command {
	cfg := supervisor.Defaults()
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if c.ArgsLenAtDash() != 0 && len(args) > 0 {
				return fmt.Errorf("unknown command %q: put the app to run after --, e.g. supervisor run --bind :8080 -- %s", args[0], strings.Join(args, " "))
			}
			cfg.Command = args
			// Defaults, then the file, then the flags given: at start and
			// again on every reload (the file may have changed).
			return run(func() (supervisor.Config, error) {
				return effectiveConfig(c.Flags(), cfg, configPath(c.Flags()))
			})
		},
	}
	addRunFlags(c.Flags(), &cfg)
	return c
}

// run is the master's whole life: keep its inherited descriptors from its
// children, load and validate the config, bind, supervise, clean up. load
// is called again on every reload; the log settings, the pid file and the
// control socket are taken at start only.
//
// A new master started by an upgrade that fails before supervisor.Run
// (an invalid config, a bind that fails) tells the old master why.
func run(load func() (supervisor.Config, error)) (err error) {
	if err := closeOnExecInherited(); err != nil {
		return err
	}
	var upg *tableflip.Upgrader
	var parent *os.File
	handed := false // to supervisor.Run, which reports its own failures
	defer func() {
		if err != nil && !handed {
			failToParent(upg, parent, err)
		}
	}()
	cfg, err := load()
	if err != nil {
		return err
	}
	res, err := cfg.Validate()
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	if err := checkPidFile(cfg.PidFile); err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // stderr may not sync

	// Signals are registered before any child exists, so none takes its
	// default action while the master runs.
	sigs, stopSignals := signals.Notify()
	defer stopSignals()

	sd, err := listener.FromEnv(os.Getenv, os.Getpid())
	if err != nil {
		return err
	}
	systemd := os.Getenv("NOTIFY_SOCKET")
	fdstore := listener.FDStoreFromEnv(os.Getenv) // nil: off
	sd = releaseFDStore(sd, res, fdstore, log)
	// The pid file is written by onReady, not by tableflip.
	upg, err = tableflip.New(tableflip.Options{UpgradeTimeout: res.ReadyTimeout + upgradeGrace})
	if err != nil {
		return fmt.Errorf("upgrader: %w", err)
	}
	if parent, err = parentLink(upg); err != nil {
		return err
	}
	// The master opens its sockets through the upgrader's store; all of
	// them are closed at exit, after the upgrader let go of its copies, so
	// that closing a unix socket, then unused, removes its path.
	var sockets []*listener.Socket
	open := func(addrs []listener.Addr) ([]*listener.Socket, error) {
		ss, err := listener.Open(addrs, upg.Fds, sd)
		sockets = append(sockets, ss...)
		sd = adoptedFromFDStore(sd, ss, log)
		return ss, err
	}
	defer func() {
		upg.Stop()
		<-upg.Exit()
		for _, s := range sockets {
			s.Close()
		}
	}()
	defer removePidFile(cfg.PidFile)

	metrics := supervisor.NewMetrics(version)
	var metricsSock *listener.Socket
	if res.MetricsAddr != nil {
		if metricsSock, err = openMetrics(*res.MetricsAddr, open, fdstore, log); err != nil {
			return err
		}
	}

	controlPath := cfg.Control
	if controlPath == "" {
		controlPath = supervisor.DefaultControlPath(cfg.PidFile)
	}
	control, err := openControl(controlPath, upg)
	if err != nil {
		return err
	}
	calls := make(chan supervisor.Call)
	control.Count(metrics)
	control.SetLog(log)
	if parent == nil {
		control.Serve(calls) // a new master serves from its commit
	}
	defer control.Close()

	handed = true
	err = supervisor.Run(res, supervisor.Options{
		Log:  log,
		Open: open,
		Load: func() (*supervisor.Resolved, error) {
			c, err := load()
			if err != nil {
				return nil, err
			}
			return c.Validate()
		},
		Shim:          workerShim(log, workers.EmbeddedShim),
		Signals:       sigs,
		Control:       calls,
		OnReady:       onReady(upg, cfg.PidFile),
		Upgrader:      upg,
		Parent:        parent,
		Serving:       serving(control, calls, parent == nil),
		SystemdNotify: systemd,
		Stdout:        1,
		Stderr:        2,
		Metrics:       metrics,
		MetricsSocket: metricsSock,
		FDStore:       fdstore,
	})
	if err != nil {
		log.Error("giving up", zap.Error(err))
		return err
	}
	log.Info("stopped")
	return nil
}

// removePidFile removes path if it still names this process.
func removePidFile(path string) {
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid == os.Getpid() {
		_ = os.Remove(path)
	}
}

// openMetrics opens the --metrics socket the way the binds are opened
// (through the upgrader's store, so a new master keeps the port, and into
// systemd's fd store, so a restarted one does), for the master's own HTTP
// server.
func openMetrics(a listener.Addr, open func([]listener.Addr) ([]*listener.Socket, error), st *listener.FDStore, log *zap.Logger) (*listener.Socket, error) {
	ss, err := open([]listener.Addr{a})
	if err != nil {
		return nil, err // it names --metrics and the fix
	}
	if err := st.Add(ss[0]); err != nil {
		log.Warn("socket not kept in systemd's fd store", zap.String("bind", "--metrics "+a.Raw), zap.Error(err))
	}
	log.Info("metrics listening", zap.String("address", ss[0].Addr))
	return ss[0], nil
}
