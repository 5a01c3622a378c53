package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cloudflare/tableflip"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
			return run(cfg)
		},
	}
	addRunFlags(c.Flags(), &cfg)
	return c
}

// addRunFlags binds the Gunicorn-familiar flags of DESIGN §2 to cfg.
func addRunFlags(f *pflag.FlagSet, cfg *supervisor.Config) {
	f.StringArrayVarP(&cfg.Bind, "bind", "b", cfg.Bind, "address to listen on: HOST:PORT, [::1]:PORT, :PORT, unix:/path[?mode=0660], fd://N, systemd[:NAME] (repeatable)")
	f.IntVarP(&cfg.Workers, "workers", "w", cfg.Workers, "number of worker processes")
	f.DurationVar(&cfg.GracefulTimeout, "graceful-timeout", cfg.GracefulTimeout, "time a stopping worker gets to finish before SIGKILL")
	f.DurationVar(&cfg.ShutdownDelay, "shutdown-delay", cfg.ShutdownDelay, "on TERM, keep serving this long before stopping (load-balancer deregistration)")
	f.StringVar(&cfg.StopSignal, "stop-signal", cfg.StopSignal, "signal that asks a worker to stop gracefully")
	f.StringVar(&cfg.Ready, "ready", cfg.Ready, "readiness: notify (READY=1 on $NOTIFY_SOCKET) or delay (alive for --ready-delay)")
	f.DurationVar(&cfg.ReadyTimeout, "ready-timeout", cfg.ReadyTimeout, "a worker not ready this long after start has failed")
	f.DurationVar(&cfg.ReadyDelay, "ready-delay", cfg.ReadyDelay, "with --ready delay: time alive after which a worker counts as ready")
	f.StringArrayVar(&cfg.Env, "env", cfg.Env, "KEY=VALUE added to the workers' environment (repeatable)")
	f.StringVar(&cfg.Chdir, "chdir", cfg.Chdir, "working directory of the workers")
	f.StringVarP(&cfg.User, "user", "u", cfg.User, "run workers as this user (master must be root)")
	f.StringVarP(&cfg.Group, "group", "g", cfg.Group, "run workers with this group (master must be root)")
	f.StringVarP(&cfg.PidFile, "pid", "p", cfg.PidFile, "write the master's pid to this file once ready")
	f.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	f.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "json or console (default: console on a terminal, json otherwise)")
}

// run is the master's whole life: validate, bind, supervise, clean up.
func run(cfg supervisor.Config) error {
	res, err := cfg.Validate()
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
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
	upg, err := tableflip.New(tableflip.Options{PIDFile: cfg.PidFile})
	if err != nil {
		return fmt.Errorf("upgrader: %w", err)
	}
	sockets, err := listener.Open(res.Addrs, upg.Fds, sd)
	if err != nil {
		upg.Stop()
		return err
	}
	// At exit: the upgrader lets go of its copies first, so that closing a
	// unix socket, now unused, removes its path.
	defer func() {
		upg.Stop()
		<-upg.Exit()
		for _, s := range sockets {
			s.Close()
		}
	}()
	defer removePidFile(cfg.PidFile)

	err = supervisor.Run(res, supervisor.Options{
		Log:     log,
		Sockets: sockets,
		Shim:    []string{"/proc/self/exe", workers.ShimArg},
		Signals: sigs,
		OnReady: upg.Ready,
		Systemd: systemd,
		Stdout:  1,
		Stderr:  2,
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
