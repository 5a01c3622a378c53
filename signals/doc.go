// Package signals is the master's edge to the operating system's signals.
//
// Handled lists every signal the master reacts to; Notify registers exactly
// that list (no catch-all, so nothing like SIGURG has to be filtered out) and
// IntentOf turns each into what the master should do. Reaper owns every wait
// for a child: it waits for the pids it started and, as PID 1, for the
// orphans it adopts, so no other code ever calls wait4 and no exit status is
// stolen (DESIGN §5).
package signals
