package supervisor

import (
	"runtime"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Label values, each set bounded and pre-declared, so every series exists
// (at 0) from the first scrape and rate() sees the first event.
var (
	// startReasons: why a worker was started.
	startReasons = []string{
		startBoot,     // the first pool, at master start
		startReload,   // a rollout to a new generation
		startRollback, // back to the stable generation after a failed rollout
		startRecycle,  // replacing a worker due for recycling
		startCrash,    // replacing a worker that failed (exit, ready timeout, heartbeat)
		startReplace,  // replacing a worker that left on its own (STOPPING=1)
		startScale,    // a slot added by scale / TTIN
		startUpgrade,  // a new master's pool, taking over from the old master's
	}
	// exitHows: how a worker ended.
	exitHows = []string{
		exitStopped,  // exited after it was asked to stop, or said STOPPING=1
		exitKilled,   // SIGKILLed: it outlived its graceful timeout
		exitCrashed,  // exited on its own while starting or ready
		exitTimedOut, // stopped by the master: not ready in time, or missed its heartbeat
	}
	// reloadResults: the outcome of each reload request (HUP, reload).
	reloadResults = []string{
		reloadSucceeded,  // the new generation serves
		reloadRolledBack, // a new worker failed; the stable generation serves again
		reloadConfigFail, // the config (or a new bind) could not be loaded; nothing changed
		reloadRefused,    // not running (booting, draining, stopping); nothing changed
		reloadSuperseded, // a later reload merged into its rollout
		reloadAbandoned,  // the master stopped during its rollout
	}
	recycleReasons = []string{recycleRequests, recycleLifetime, recycleMemory}
	upgradeResults = []string{upgradeSucceeded, upgradeFailed, upgradeRefused}
	// controlResults: ok, error (the master answered no), rejected (the
	// server refused it: bad request, permission denied, shutting down).
	controlResults = []string{"ok", "error", "rejected"}
)

const (
	startBoot     = "boot"
	startReload   = "reload"
	startRollback = "rollback"
	startRecycle  = "recycle"
	startCrash    = "crash"
	startReplace  = "replace"
	startScale    = "scale"
	startUpgrade  = "upgrade"

	exitStopped  = "stopped"
	exitKilled   = "killed"
	exitCrashed  = "crashed"
	exitTimedOut = "timed_out"

	reloadSucceeded  = "succeeded"
	reloadRolledBack = "rolled_back"
	reloadConfigFail = "config_failed"
	reloadRefused    = "refused"
	reloadSuperseded = "superseded"
	reloadAbandoned  = "abandoned"

	upgradeSucceeded = "succeeded" // counted by the new master, once the old one is gone
	upgradeFailed    = "failed"    // counted by the old master, which carries on
	upgradeRefused   = "refused"

	controlInvalid = "invalid" // the command label of a request naming no known command
)

// Metrics is the master's Prometheus registry (its own, not the global
// one) and the instruments the loop records into. Counters and histograms
// are updated by the loop as things happen (atomic: never blocking); the
// gauges are read at scrape time from the snapshot the loop publishes after
// each event (see snapshot), so a scrape never waits for the loop. Safe for
// concurrent use. The zero value is not usable: call NewMetrics.
type Metrics struct {
	reg *prometheus.Registry

	starts          *prometheus.CounterVec   // reason
	exits           *prometheus.CounterVec   // how
	boot            prometheus.Histogram     // start to ready
	drain           prometheus.Histogram     // asked to stop (or STOPPING=1) to exit
	pauses          prometheus.Histogram     // a steered generation's pause (drain.go)
	reloads         *prometheus.CounterVec   // result
	reloadDuration  *prometheus.HistogramVec // result: succeeded, rolled_back
	lastReloadOK    prometheus.Gauge
	recycles        *prometheus.CounterVec // reason
	heartbeatMisses prometheus.Counter
	notifyIgnored   prometheus.Counter     // well-formed datagrams from no worker
	control         *prometheus.CounterVec // command, result
	upgrades        *prometheus.CounterVec // result

	snap    atomic.Pointer[snapshot]
	live    *liveness
	dropped atomic.Pointer[func() uint64] // the notify socket's drop count, once Run set it
	rss     rssCache
}

// NewMetrics makes the registry with every supervisor_* metric, the
// process_* and go_* collectors, and supervisor_build_info{version}.
func NewMetrics(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), live: newLiveness()}
	counter := func(name, help string, label string, values []string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "supervisor", Name: name, Help: help}, []string{label})
		for _, val := range values {
			v.WithLabelValues(val)
		}
		m.reg.MustRegister(v)
		return v
	}
	m.starts = counter("worker_starts_total", "Workers started, by why: boot, reload, rollback, recycle, crash, replace, scale.", "reason", startReasons)
	m.exits = counter("worker_exits_total", "Workers ended, by how: stopped (asked to), killed (outlived the graceful timeout), crashed (on their own), timed_out (not ready in time, or missed heartbeat).", "how", exitHows)
	m.reloads = counter("reloads_total", "Reload requests (HUP, reload) by outcome.", "result", reloadResults)
	m.recycles = counter("recycles_total", "Workers marked for recycling, by limit reached.", "reason", recycleReasons)
	m.upgrades = counter("upgrades_total", "Master upgrades (USR2, upgrade) by outcome.", "result", upgradeResults)
	m.control = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "supervisor", Name: "control_requests_total",
		Help: "Control socket requests by command and result: ok, error (the master said no), rejected (refused before the master saw it)."}, []string{"command", "result"})
	for _, c := range commands {
		for _, r := range controlResults {
			m.control.WithLabelValues(c.name, r)
		}
	}
	m.control.WithLabelValues(controlInvalid, "rejected")
	m.boot = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "supervisor", Name: "worker_boot_seconds",
		Help: "Time from a worker's start to ready.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)})
	m.drain = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "supervisor", Name: "worker_drain_seconds",
		Help: "Time from asking a worker to stop (or its STOPPING=1) to its exit.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)})
	m.pauses = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "supervisor", Name: "steer_pause_seconds",
		Help:    "How long a steered generation got no new connections while workers of it drained before their stop signal (steer: auto).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})
	m.reloadDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "supervisor", Name: "reload_duration_seconds",
		Help:    "Time from a reload to its outcome: the new generation serving, or the failure that rolled it back.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}, []string{"result"})
	m.reloadDuration.WithLabelValues(reloadSucceeded)
	m.reloadDuration.WithLabelValues(reloadRolledBack)
	m.lastReloadOK = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "supervisor", Name: "last_reload_success_timestamp_seconds",
		Help: "When the config in force was last loaded successfully: at start, then at each reload that succeeded."})
	m.heartbeatMisses = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "supervisor", Name: "heartbeat_timeouts_total",
		Help: "Ready workers killed for sending no WATCHDOG=1 within --timeout."})
	m.notifyIgnored = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "supervisor", Name: "notify_datagrams_ignored_total",
		Help: "Well-formed notify datagrams from a process that is neither a worker nor in a worker's process group."})
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "supervisor", Name: "build_info",
		Help:        "Always 1; the labels say which supervisor runs.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()}})
	buildInfo.Set(1)
	m.reg.MustRegister(m.control, m.boot, m.drain, m.pauses, m.reloadDuration, m.lastReloadOK, m.heartbeatMisses, m.notifyIgnored, buildInfo,
		poolCollector{m},
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
}

// Registry is the registry /metrics serves, for tests and for anyone who
// wants to gather it another way.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// controlRequest counts one answered control request. command is the
// request's command, or "" when it named none that exists.
func (m *Metrics) controlRequest(command, result string) {
	if _, err := lookupCommand(command); err != nil {
		command = controlInvalid
		result = "rejected"
	}
	m.control.WithLabelValues(command, result).Inc()
}

// Descriptions of the gauges poolCollector reads from the snapshot.
var (
	descWorkers = prometheus.NewDesc("supervisor_workers",
		"Worker processes by state: starting, ready, stopping.", []string{"state"}, nil)
	descDesired = prometheus.NewDesc("supervisor_workers_desired",
		"Workers wanted (--workers, or the last scale).", nil, nil)
	descGeneration = prometheus.NewDesc("supervisor_generation",
		"The generation in force (1 at start, +1 per reload that loaded a config).", nil, nil)
	descRequests = prometheus.NewDesc("supervisor_worker_requests_total",
		"Requests the workers reported served (X_REQUESTS), exited workers included.", nil, nil)
	descRSS = prometheus.NewDesc("supervisor_worker_rss_bytes",
		"Resident memory of each slot's process groups (all of its workers during a rollout), sampled at most once a second.", []string{"slot"}, nil)
	descDropped = prometheus.NewDesc("supervisor_notify_datagrams_dropped_total",
		"Notify datagrams dropped: malformed, oversized, without sender credentials, or from a user that runs no worker.", nil, nil)
	descSteerWeight = prometheus.NewDesc("supervisor_steer_weight",
		"A steered bind's socket's share of new connections in the program attached last (steer: auto), by bind and the socket's index in the group.", []string{"bind", "socket"}, nil)
	descSteerGeneration = prometheus.NewDesc("supervisor_steer_generation",
		"The generation whose workers have a steered bind's socket; 0: idle.", []string{"bind", "socket"}, nil)
)

// poolCollector turns the latest snapshot into gauges at scrape time.
type poolCollector struct{ m *Metrics }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWorkers, descDesired, descGeneration, descRequests, descRSS, descDropped, descSteerWeight, descSteerGeneration} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	if f := c.m.dropped.Load(); f != nil {
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64((*f)()))
	}
	s := c.m.snap.Load()
	if s == nil {
		return
	}
	st := s.status
	by := map[string]int{"starting": 0, "ready": 0, "stopping": 0}
	for _, w := range st.Pool {
		by[w.State]++
	}
	for state, n := range by {
		ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(descDesired, prometheus.GaugeValue, float64(st.Workers))
	ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(st.Generation))
	ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(s.requests))
	for slot, rss := range c.m.rss.bySlot(st.Pool) {
		ch <- prometheus.MustNewConstMetric(descRSS, prometheus.GaugeValue, float64(rss), strconv.Itoa(slot))
	}
	for _, g := range st.Steer {
		for i, s := range g.Sockets {
			ch <- prometheus.MustNewConstMetric(descSteerWeight, prometheus.GaugeValue, float64(s.Weight), g.Bind, strconv.Itoa(i))
			ch <- prometheus.MustNewConstMetric(descSteerGeneration, prometheus.GaugeValue, float64(s.Generation), g.Bind, strconv.Itoa(i))
		}
	}
}
