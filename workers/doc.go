// Package workers is one worker process, both sides of its contract
// (DESIGN §3).
//
// Master side:
//   - Start forks a worker from a Spec: listening sockets as fds 3.., the
//     environment Env builds from a Contract (LISTEN_*, NOTIFY_SOCKET,
//     SUPERVISOR_*; FDName makes the fd names), its own process group,
//     credentials, a parent-death signal that fires when the master dies.
//     A Forker owns the wait and the Exit arrives once on Spec.Exited
//     (Describe words its status); Process.Signal signals the whole group.
//     The exec shim sets LISTEN_PID to the worker's own pid before
//     exec'ing the real command: EmbeddedShim's, a tiny static executable
//     run from a memfd, or RunShim (the binary itself run as ShimArg).
//   - ListenNotify opens the NotifySocket that receives workers' sd_notify
//     datagrams as Notifications (ParseMessage makes the Message).
//   - Listening is the `listen` readiness, for apps that say nothing: it
//     reads /proc to see whether a worker's process group waits for
//     connections on one of its sockets, named by SocketInode.
//   - GroupRSS samples the memory of workers' process groups.
//
// App side, for Go apps: Listeners returns the inherited sockets (or one on
// $PORT when run standalone); Serve runs an *http.Server on them and speaks
// the protocol (READY=1, WATCHDOG=1, batched X_REQUESTS=N, STOPPING=1) with
// a drain on SIGTERM that loses no accepted request; Ready and Notify send
// single messages.
package workers
