package supervisor

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Setting is one config key: the config-file key, the Config field it
// sets, its flag of `run`, its default and its help text. The table
// settings is the only place these are written; Defaults, Keys, LoadFile,
// Layer.Apply, Config's YAML form (`check`) and the command line's flags
// all derive from it.
type Setting struct {
	Key   string // config-file key, snake_case
	Short string // one-letter shorthand of the flag, or ""
	Usage string // the flag's help text

	field  func(*Config) any // a pointer to the field: *string, *int, *time.Duration or *[]string
	def    any               // the default, of the field's type; nil: the zero value
	noFlag bool              // given otherwise than by a flag (command: after --)
}

// Flag returns the setting's flag name: Key with '_' turned into '-';
// "" for command, which has no flag (it comes after --).
func (s Setting) Flag() string {
	if s.noFlag {
		return ""
	}
	return strings.ReplaceAll(s.Key, "_", "-")
}

// Field returns a pointer to the field of c this setting sets: a *string,
// *int, *time.Duration or *[]string; no other types occur.
func (s Setting) Field(c *Config) any { return s.field(c) }

// Settings returns the table, one entry per Config field, in the order
// `check` prints them. The result is a copy.
func Settings() []Setting { return slices.Clone(settings) }

// settings is the table. A new config key is a Config field, one entry
// here, its rule in Validate and its use; TestSettingsCoverConfig and the
// command line's TestSettingsTable hold the rest together.
var settings = []Setting{
	{Key: "command", noFlag: true, field: func(c *Config) any { return &c.Command }},
	{Key: "bind", Short: "b", field: func(c *Config) any { return &c.Bind },
		Usage: "address to listen on: HOST:PORT, [::1]:PORT, :PORT, unix:/path[?mode=0660], fd://N, systemd[:NAME] (repeatable)"},
	{Key: "workers", Short: "w", field: func(c *Config) any { return &c.Workers }, def: 1,
		Usage: "number of worker processes"},
	{Key: "max_surge", field: func(c *Config) any { return &c.MaxSurge }, def: "25%",
		Usage: "extra workers during a reload or recycle: a count (2) or a percentage of --workers, rounded up (at least 1)"},
	{Key: "graceful_timeout", field: func(c *Config) any { return &c.GracefulTimeout }, def: 30 * time.Second,
		Usage: "time a stopping worker gets to finish before SIGKILL"},
	{Key: "shutdown_delay", field: func(c *Config) any { return &c.ShutdownDelay },
		Usage: "on TERM, keep serving this long before stopping (load-balancer deregistration)"},
	{Key: "stop_signal", field: func(c *Config) any { return &c.StopSignal }, def: "TERM",
		Usage: "signal that asks a worker to stop gracefully"},
	{Key: "ready", field: func(c *Config) any { return &c.Ready }, def: ReadyAuto,
		Usage: "readiness: notify (READY=1 on $NOTIFY_SOCKET), listen (seen accepting on a socket), delay (alive for --ready-delay), auto (the first of notify or listen)"},
	{Key: "ready_timeout", field: func(c *Config) any { return &c.ReadyTimeout }, def: 60 * time.Second,
		Usage: "a worker not ready this long after start has failed"},
	{Key: "ready_delay", field: func(c *Config) any { return &c.ReadyDelay }, def: time.Second,
		Usage: "with --ready delay: time alive after which a worker counts as ready"},
	{Key: "env", field: func(c *Config) any { return &c.Env },
		Usage: "KEY=VALUE added to the workers' environment (repeatable)"},
	{Key: "max_requests", field: func(c *Config) any { return &c.MaxRequests },
		Usage: "replace a worker after this many requests (its X_REQUESTS reports); 0: never"},
	{Key: "max_requests_jitter", field: func(c *Config) any { return &c.MaxRequestsJitter },
		Usage: "add rand[0, N] to each worker's --max-requests, so they do not recycle together"},
	{Key: "max_lifetime", field: func(c *Config) any { return &c.MaxLifetime },
		Usage: "replace a worker after this age; 0: never"},
	{Key: "max_lifetime_jitter", field: func(c *Config) any { return &c.MaxLifetimeJitter },
		Usage: "add rand[0, D] to each worker's --max-lifetime"},
	{Key: "max_memory", field: func(c *Config) any { return &c.MaxMemory },
		Usage: "replace a worker whose process group's RSS passes this size (512MiB, 2G); empty: never"},
	{Key: "timeout", field: func(c *Config) any { return &c.Timeout },
		Usage: "heartbeat: a ready worker that sends no WATCHDOG=1 for this long is killed and replaced (workers get WATCHDOG_USEC); 0: off"},
	{Key: "boot_nice", field: func(c *Config) any { return &c.BootNice }, def: 10,
		Usage: "start each new worker this much nicer (lower CPU priority) than the master until it is ready, so booting workers leave the serving ones their CPU; 0: off"},
	{Key: "steer", field: func(c *Config) any { return &c.Steer }, def: SteerAuto,
		Usage: "auto: each generation listens on its own SO_REUSEPORT socket of every TCP bind, and a BPF program sends new connections only to generations that serve, so a worker is asked to stop only once nothing waits for it; off: one socket per bind, shared by every generation (taken at start)"},
	{Key: "canary_probe", field: func(c *Config) any { return &c.CanaryProbe },
		Usage: "with steering, probe a reload's canary before it gets any live connection: http:/PATH (GET, wants 200, e.g. http:/health/ready) or tcp (accepted); retried until --ready-timeout, a failure rolls the reload back; empty: off"},
	{Key: "chdir", field: func(c *Config) any { return &c.Chdir },
		Usage: "working directory of the workers"},
	{Key: "user", Short: "u", field: func(c *Config) any { return &c.User },
		Usage: "run workers as this user (master must be root)"},
	{Key: "group", Short: "g", field: func(c *Config) any { return &c.Group },
		Usage: "run workers with this group (master must be root)"},
	{Key: "pid", Short: "p", field: func(c *Config) any { return &c.PidFile },
		Usage: "write the master's pid to this file once ready"},
	{Key: "control", field: func(c *Config) any { return &c.Control },
		Usage: "control socket for reload, status, scale, stop (default: under $XDG_RUNTIME_DIR, else beside --pid)"},
	{Key: "metrics", field: func(c *Config) any { return &c.Metrics },
		Usage: "serve /metrics (Prometheus), /health/live, /health/ready and /status on HOST:PORT or unix:/path; never passed to workers"},
	{Key: "log_level", field: func(c *Config) any { return &c.LogLevel }, def: "info",
		Usage: "debug, info, warn or error"},
	{Key: "log_format", field: func(c *Config) any { return &c.LogFormat },
		Usage: "json or console (default: console on a terminal, json otherwise)"},
}

// Defaults returns the settings used for anything not given (the table's
// defaults); they follow Gunicorn where it has an equivalent (1 worker,
// 30 s graceful timeout).
func Defaults() Config {
	var c Config
	for _, s := range settings {
		if s.def != nil {
			set(s.field(&c), s.def)
		}
	}
	return c
}

// Keys returns every config-file key, sorted.
func Keys() []string {
	keys := make([]string, len(settings))
	for i, s := range settings {
		keys[i] = s.Key
	}
	slices.Sort(keys)
	return keys
}

// lookup returns the setting of a config-file key.
func lookup(key string) (Setting, bool) {
	i := slices.IndexFunc(settings, func(s Setting) bool { return s.Key == key })
	if i < 0 {
		return Setting{}, false
	}
	return settings[i], true
}

// MarshalYAML gives c in config-file form (yaml.Marshaler): every key in
// the table's order, durations as strings ("1m30s"). LoadFile reads it
// back to c (a nil list as an empty one).
func (c Config) MarshalYAML() (any, error) {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	for _, s := range settings {
		var v yaml.Node
		if err := v.Encode(s.field(&c)); err != nil {
			return nil, fmt.Errorf("%s: %w", s.Key, err)
		}
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s.Key}, &v)
	}
	return doc, nil
}

// set stores v, a value of the field's type, in the field p points to (p
// from a Setting's field); a list is copied, never shared.
func set(p, v any) {
	switch p := p.(type) {
	case *string:
		*p = v.(string)
	case *int:
		*p = v.(int)
	case *time.Duration:
		*p = v.(time.Duration)
	case *[]string:
		*p = slices.Clone(v.([]string))
	default:
		panic(fmt.Sprintf("supervisor: a setting of unsupported type %T", p))
	}
}

// get returns the value of the field p points to (p from a Setting's field).
func get(p any) any {
	switch p := p.(type) {
	case *string:
		return *p
	case *int:
		return *p
	case *time.Duration:
		return *p
	case *[]string:
		return *p
	default:
		panic(fmt.Sprintf("supervisor: a setting of unsupported type %T", p))
	}
}
