package main

import (
	"strings"

	"github.com/spf13/pflag"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// addRunFlags binds the Gunicorn-familiar flags of DESIGN §2 to cfg, and
// --config, read back with configPath. Every flag but --config is also a
// config-file key: its name with '-' turned into '_'.
func addRunFlags(f *pflag.FlagSet, cfg *supervisor.Config) {
	f.StringP("config", "c", "", "YAML config file: every flag below as a snake_case key; flags override it; re-read on every reload")
	f.StringArrayVarP(&cfg.Bind, "bind", "b", cfg.Bind, "address to listen on: HOST:PORT, [::1]:PORT, :PORT, unix:/path[?mode=0660], fd://N, systemd[:NAME] (repeatable)")
	f.IntVarP(&cfg.Workers, "workers", "w", cfg.Workers, "number of worker processes")
	f.StringVar(&cfg.MaxSurge, "max-surge", cfg.MaxSurge, "extra workers during a reload or recycle: a count (2) or a percentage of --workers, rounded up (at least 1)")
	f.DurationVar(&cfg.GracefulTimeout, "graceful-timeout", cfg.GracefulTimeout, "time a stopping worker gets to finish before SIGKILL")
	f.DurationVar(&cfg.ShutdownDelay, "shutdown-delay", cfg.ShutdownDelay, "on TERM, keep serving this long before stopping (load-balancer deregistration)")
	f.StringVar(&cfg.StopSignal, "stop-signal", cfg.StopSignal, "signal that asks a worker to stop gracefully")
	f.StringVar(&cfg.Ready, "ready", cfg.Ready, "readiness: notify (READY=1 on $NOTIFY_SOCKET), listen (seen accepting on a socket), delay (alive for --ready-delay), auto (the first of notify or listen)")
	f.DurationVar(&cfg.ReadyTimeout, "ready-timeout", cfg.ReadyTimeout, "a worker not ready this long after start has failed")
	f.DurationVar(&cfg.ReadyDelay, "ready-delay", cfg.ReadyDelay, "with --ready delay: time alive after which a worker counts as ready")
	f.StringArrayVar(&cfg.Env, "env", cfg.Env, "KEY=VALUE added to the workers' environment (repeatable)")
	f.IntVar(&cfg.MaxRequests, "max-requests", cfg.MaxRequests, "replace a worker after this many requests (its X_REQUESTS reports); 0: never")
	f.IntVar(&cfg.MaxRequestsJitter, "max-requests-jitter", cfg.MaxRequestsJitter, "add rand[0, N] to each worker's --max-requests, so they do not recycle together")
	f.DurationVar(&cfg.MaxLifetime, "max-lifetime", cfg.MaxLifetime, "replace a worker after this age; 0: never")
	f.DurationVar(&cfg.MaxLifetimeJitter, "max-lifetime-jitter", cfg.MaxLifetimeJitter, "add rand[0, D] to each worker's --max-lifetime")
	f.StringVar(&cfg.MaxMemory, "max-memory", cfg.MaxMemory, "replace a worker whose process group's RSS passes this size (512MiB, 2G); empty: never")
	f.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "heartbeat: a ready worker that sends no WATCHDOG=1 for this long is killed and replaced (workers get WATCHDOG_USEC); 0: off")
	f.StringVar(&cfg.Chdir, "chdir", cfg.Chdir, "working directory of the workers")
	f.StringVarP(&cfg.User, "user", "u", cfg.User, "run workers as this user (master must be root)")
	f.StringVarP(&cfg.Group, "group", "g", cfg.Group, "run workers with this group (master must be root)")
	f.StringVarP(&cfg.PidFile, "pid", "p", cfg.PidFile, "write the master's pid to this file once ready")
	f.StringVar(&cfg.Control, "control", cfg.Control, "control socket for reload, status, scale, stop (default: under $XDG_RUNTIME_DIR, else beside --pid)")
	f.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	f.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "json or console (default: console on a terminal, json otherwise)")
}

// configPath returns the --config value of a flag set built by
// addRunFlags ("" when not given).
func configPath(fs *pflag.FlagSet) string {
	p, _ := fs.GetString("config")
	return p
}

// effectiveConfig layers the settings: supervisor.Defaults(), then every
// key the config file at path sets (skipped when path is ""), then every
// flag of fs the user set (fs.Changed), taken from flagCfg, the Config that
// addRunFlags bound to fs. A non-empty flagCfg.Command (the COMMAND after
// --) overrides the file's command. It reads the file on each call and has
// no other input or effect, so it serves at start and on every reload. The
// result is not validated: call Validate. The error is LoadFile's.
func effectiveConfig(fs *pflag.FlagSet, flagCfg supervisor.Config, path string) (supervisor.Config, error) {
	cfg := supervisor.Defaults()
	if path != "" {
		file, err := supervisor.LoadFile(path)
		if err != nil {
			return supervisor.Config{}, err
		}
		cfg = file.Apply(cfg)
	}
	flags := supervisor.Layer{Config: flagCfg, Set: map[string]bool{}}
	fs.Visit(func(f *pflag.Flag) { flags.Set[strings.ReplaceAll(f.Name, "-", "_")] = true })
	if len(flagCfg.Command) > 0 {
		flags.Set["command"] = true
	}
	return flags.Apply(cfg), nil
}
