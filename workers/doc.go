// Package workers is one worker process, both sides of its contract
// (DESIGN §3).
//
// Master side: Start forks a worker (listening sockets as fds 3.., the
// LISTEN_*/NOTIFY_SOCKET/SUPERVISOR_* environment, its own process group,
// credentials, a parent-death signal that fires when the master dies) and
// reports its exit; Process.Signal signals its whole group; NotifySocket
// receives sd_notify datagrams from workers.
//
// App side, for Go apps: Listeners returns the inherited sockets (or one on
// $PORT when run standalone); Serve runs an *http.Server on them and speaks
// the protocol (READY=1, WATCHDOG=1, batched X_REQUESTS=N, STOPPING=1) with
// a drain on SIGTERM that loses no accepted request; Ready and Notify send
// single messages. GroupRSS samples a worker's memory for the master. RunShim is the exec shim that sets LISTEN_PID to
// the worker's own pid before exec'ing the real command.
package workers
