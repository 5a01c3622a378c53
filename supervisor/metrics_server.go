package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

const (
	// liveTimeout is how long /health/live waits for the loop.
	liveTimeout = time.Second
	// metricsInFlight bounds the scrapes of /metrics served at once; more
	// get a 503 at once. Each costs a gather and a gzip writer: a burst of
	// 100 tripled the master's RSS before the bound. Probes (/health/*)
	// are not bounded by it.
	metricsInFlight = 4
)

// Handler serves the master's own endpoints:
//   - GET /metrics: the registry, in the Prometheus text format (at most
//     metricsInFlight at once, 503 beyond);
//   - GET /health/live: 200 while the event loop ends a turn within 1 s,
//     else 503 (a liveness probe: restart a master that is stuck);
//   - GET /health/ready: 200 while the master runs with at least `workers`
//     workers ready; 503 while booting, short of workers, and from the
//     first instant of a stop (through shutdown_delay, while the workers
//     still serve), so a load balancer or Kubernetes stops sending first;
//   - GET /status: the JSON of `supervisor status --json`.
//
// Everything but /health/live reads the loop's last snapshot and never
// waits for the loop. Other paths are 404.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, MaxRequestsInFlight: metricsInFlight}))
	mux.HandleFunc("GET /health/live", func(w http.ResponseWriter, _ *http.Request) {
		if m.live.check(liveTimeout) {
			text(w, http.StatusOK, "ok: the event loop answers")
			return
		}
		text(w, http.StatusServiceUnavailable, fmt.Sprintf("not live: the event loop did not answer within %s", liveTimeout))
	})
	mux.HandleFunc("GET /health/ready", func(w http.ResponseWriter, _ *http.Request) {
		s := m.snap.Load()
		switch {
		case s == nil:
			text(w, http.StatusServiceUnavailable, "not ready: starting")
		case s.ready:
			text(w, http.StatusOK, fmt.Sprintf("ready: %d/%d workers ready", s.status.Ready, s.status.Workers))
		case s.status.Phase != "running":
			text(w, http.StatusServiceUnavailable, "not ready: the master is "+s.status.Phase)
		default:
			text(w, http.StatusServiceUnavailable, fmt.Sprintf("not ready: %d/%d workers ready", s.status.Ready, s.status.Workers))
		}
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		s := m.snap.Load()
		if s == nil {
			text(w, http.StatusServiceUnavailable, "no status yet: starting")
			return
		}
		b, err := json.MarshalIndent(withRSS(s.status, m.rss.get(s.status.Pool)), "", "  ")
		if err != nil {
			text(w, http.StatusInternalServerError, err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(append(b, '\n'))
	})
	return mux
}

func text(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, msg)
}

// serveMetrics serves m.Handler on ln until the returned stop is called;
// stop ends every connection and waits for the server's goroutines (a
// liveness check still waiting needs the loop's next turn, or
// m.live.stop). A client gets 5 s to send its request headers
// and 30 s to take the answer, so one that connects and sends nothing
// costs a goroutine for 5 s, never the loop.
func serveMetrics(ln net.Listener, m *Metrics, log *zap.Logger) (stop func()) {
	srv := &http.Server{
		Handler:           m.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
	if l, err := zap.NewStdLogAt(log, zap.WarnLevel); err == nil {
		srv.ErrorLog = l
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server", zap.Error(err))
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			_ = srv.Close()
		}
		<-done
	}
}
