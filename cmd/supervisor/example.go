package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/supervisor-dev/supervisor/workers"
	"golang.org/x/sys/unix"
)

// contractFacts is what the example app saw of its contract at start; it
// serves them on /env so tests can check them.
type contractFacts struct {
	Pid          int    `json:"pid"`
	ListenPid    string `json:"listen_pid"`
	ListenFds    string `json:"listen_fds"`
	ListenNames  string `json:"listen_fdnames"`
	Slot         string `json:"slot"`
	Generation   string `json:"generation"`
	NotifySocket bool   `json:"notify_socket"`
	NotifyAddr   string `json:"notify_addr"`
	FD3Protocol  int    `json:"fd3_protocol"` // SO_PROTOCOL of fd 3: 6 is plain TCP
	UID          int    `json:"uid"`
	GID          int    `json:"gid"`
}

// newExampleAppCommand is the built-in example app: an HTTP server on the
// inherited sockets (standalone: on $PORT) that replies with its pid and
// slot, speaks the worker protocol through workers.Serve (READY=1,
// WATCHDOG=1, X_REQUESTS=N) and drains without losing a request on SIGTERM.
func newExampleAppCommand() *cobra.Command {
	var bootDelay time.Duration
	var plainShutdown bool
	health := http.StatusOK
	notify := true
	c := &cobra.Command{
		Use:    "example-app",
		Short:  "The example worker app (run it under the supervisor)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			facts := contractFacts{
				Pid:          os.Getpid(),
				ListenPid:    os.Getenv("LISTEN_PID"),
				ListenFds:    os.Getenv("LISTEN_FDS"),
				ListenNames:  os.Getenv("LISTEN_FDNAMES"),
				Slot:         os.Getenv("SUPERVISOR_WORKER_SLOT"),
				Generation:   os.Getenv("SUPERVISOR_GENERATION"),
				NotifySocket: os.Getenv("NOTIFY_SOCKET") != "",
				NotifyAddr:   os.Getenv("NOTIFY_SOCKET"),
				UID:          os.Getuid(),
				GID:          os.Getgid(),
			}
			if health < 100 || health > 599 {
				return fmt.Errorf("--health-status %d: want an HTTP status, 100 to 599", health)
			}
			facts.FD3Protocol, _ = unix.GetsockoptInt(3, unix.SOL_SOCKET, unix.SO_PROTOCOL)
			// A simulated warm-up (not a wait for a condition), before the
			// listener exists: listen readiness sees a Go app once it has it.
			time.Sleep(bootDelay)
			lns, err := workers.Listeners()
			if err != nil {
				return err
			}
			if !notify {
				os.Unsetenv("NOTIFY_SOCKET") // readiness comes from elsewhere (a wrapper, --ready delay); no reports either
			}
			srv := &http.Server{Handler: exampleHandler(facts, health), ReadHeaderTimeout: 10 * time.Second}
			if plainShutdown {
				return servePlain(srv, lns)
			}
			return workers.Serve(srv, lns)
		},
	}
	c.Flags().BoolVar(&notify, "notify", notify, "speak sd_notify: READY=1 when serving, WATCHDOG=1, X_REQUESTS=N")
	c.Flags().DurationVar(&bootDelay, "boot-delay", 0, "wait this long before serving and sending READY=1")
	c.Flags().IntVar(&health, "health-status", health, "the status /health/ready answers (a canary probe wants 200)")
	c.Flags().BoolVar(&plainShutdown, "plain-shutdown", false, "on SIGTERM, stop the usual Go way (http.Server.Shutdown), which drops a request read after it began (DESIGN §5): what steering protects such apps from")
	return c
}

// servePlain serves srv on lns, says READY=1, and on SIGTERM calls
// Shutdown, as most Go apps do.
func servePlain(srv *http.Server, lns []net.Listener) error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	served := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { served <- srv.Serve(ln) }()
	}
	_ = workers.Ready()
	<-term
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(ctx)
	for range lns {
		<-served
	}
	return err
}

func exampleHandler(facts contractFacts, health int) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/health/ready", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(health)
		fmt.Fprintf(w, "%d from pid %d\n", health, facts.Pid)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pid %d slot %s generation %s\n", facts.Pid, facts.Slot, facts.Generation)
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(facts)
	})
	// /sleep?d=500ms answers after d: an in-flight request for drain tests.
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil {
			http.Error(w, "want ?d=DURATION", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush() // the client now knows the request is in flight
		time.Sleep(d)
		fmt.Fprintf(w, "slept %s in pid %d\n", d, facts.Pid)
	})
	return mux
}
