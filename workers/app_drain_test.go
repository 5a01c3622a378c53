package workers

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// load is clients sending GET / on a new connection each, until stopped.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       map[string]int // failures by message; guarded by mu
	stop       chan struct{}
	stopped    sync.Once
	wg         sync.WaitGroup
	tr         *http.Transport
}

// startLoad starts clients goroutines, each sending at most 1e6 requests.
func startLoad(url string, clients int) *load {
	l := &load{errs: map[string]int{}, stop: make(chan struct{}), tr: &http.Transport{DisableKeepAlives: true, DialContext: testkit.DialLoopback}}
	c := &http.Client{Transport: l.tr, Timeout: 5 * time.Second}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for range 1_000_000 {
				select {
				case <-l.stop:
					return
				default:
				}
				l.get(c, url)
			}
		}()
	}
	return l
}

var ports = regexp.MustCompile(`:[0-9]+`)

func (l *load) get(c *http.Client, url string) {
	resp, err := c.Get(url)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %s", resp.Status)
		}
	}
	if err == nil {
		l.ok.Add(1)
		return
	}
	l.failed.Add(1)
	l.mu.Lock()
	l.errs[ports.ReplaceAllString(err.Error(), ":*")]++
	l.mu.Unlock()
}

// finish stops the clients and waits for them. Idempotent.
func (l *load) finish() {
	l.stopped.Do(func() { close(l.stop) })
	l.wg.Wait()
	l.tr.CloseIdleConnections()
}

func (l *load) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := fmt.Sprintf("%d ok, %d failed", l.ok.Load(), l.failed.Load())
	for _, e := range slices.Sorted(maps.Keys(l.errs)) {
		s += fmt.Sprintf("\n\t%d× %s", l.errs[e], e)
	}
	return s
}

// replaceUnderLoad runs a worker from start under 8 clients that open a new
// connection per request, and replaces it the supervisor's way (start the
// new worker on the same socket, wait for its READY=1, SIGTERM the old one,
// wait for its exit): at least least times; then, while no request failed,
// up to most times or until budget has passed since the start. It returns
// the number of replacements and the finished load.
func replaceUnderLoad(t *testing.T, m *tinyMaster, start func() *testWorker, least, most int, budget time.Duration) (int, *load) {
	t.Helper()
	deadline := time.Now().Add(budget)
	cur := start()
	cur.await(10*time.Second, "READY=1", func(m Message) bool { return m.Ready })
	l := startLoad(m.url, 8)
	defer l.finish()
	n := 0
	for ; n < most && (n < least || l.failed.Load() == 0 && time.Now().Before(deadline)); n++ {
		next := start()
		next.await(10*time.Second, "READY=1", func(m Message) bool { return m.Ready })
		cur.stop(10 * time.Second)
		cur = next
	}
	l.finish()
	cur.stop(10 * time.Second)
	return n, l
}

// The drain proof (DESIGN §5): replacing workers under continuous
// new-connection load fails no request with Serve, while the usual
// Shutdown-on-SIGTERM fails some.
func TestReplacingWorkersUnderLoad(t *testing.T) {
	var helper, plain string
	t.Run("Serve", func(t *testing.T) {
		m := newTinyMaster(t)
		n, l := replaceUnderLoad(t, m, func() *testWorker { return m.startHelper("serve") }, 20, 20, 0)
		helper = fmt.Sprintf("%d replacements: %s", n, l)
		t.Logf("workers.Serve, %s", helper)
		if l.failed.Load() != 0 || l.ok.Load() == 0 {
			t.Errorf("%s; want no failed request", helper)
		}
	})
	t.Run("plain Shutdown", func(t *testing.T) {
		m := newTinyMaster(t)
		n, l := replaceUnderLoad(t, m, func() *testWorker { return m.startHelper("plain-shutdown") }, 20, 60, 20*time.Second)
		plain = fmt.Sprintf("%d replacements: %s", n, l)
		t.Logf("srv.Shutdown on SIGTERM, %s", plain)
		if l.failed.Load() == 0 {
			t.Errorf("%s; want some failed requests (DESIGN §5), or this test no longer proves anything", plain)
		}
	})
}
