// Package supervisor is the master: Config (defaults, validation), and Run,
// the one event loop that owns every piece of the master's state. Everything
// else (process exits, notify datagrams, signals, timers) reaches the loop as
// an event. Decisions (what to start, when to retry, what is overdue) are
// plain functions of state that unit tests call without processes.
package supervisor
