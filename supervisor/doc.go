// Package supervisor is the master: Config (defaults, validation, the
// config file), Run, the one event loop that owns every piece of the
// master's state, and the control socket that `supervisor reload`,
// `status`, `scale` and `stop` talk to (ListenControl, ControlServer,
// CallControl). Everything else (process exits, notify datagrams,
// signals, control requests, timers) reaches the loop as an event.
// Decisions (what to start and stop next, when to retry, what is overdue)
// are plain functions of state that unit tests call without processes,
// and the loop reaches processes and the clock through a small env that
// tests replace (docs/DESIGN.md §7).
package supervisor
