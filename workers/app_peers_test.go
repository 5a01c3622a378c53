package workers

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README's workers in other languages (testdata/protocol/) speak the
// protocol to a tiny master and drain under load without a failed request.

func TestPythonWorker(t *testing.T) {
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Skip("no " + python)
	}
	script, err := filepath.Abs("../testdata/protocol/worker.py")
	if err != nil {
		t.Fatal(err)
	}
	start := func(m *tinyMaster) *testWorker {
		return m.start(python, []string{"python3", script}, "WATCHDOG_USEC=400000")
	}
	t.Run("protocol", func(t *testing.T) {
		m := newTinyMaster(t)
		w := start(m)
		w.await(10*time.Second, "READY=1", func(m Message) bool { return m.Ready })
		w.await(time.Second, "WATCHDOG=1", func(m Message) bool { return m.Watchdog })
		get(t, m.url, 20, w.p.Pid)
		w.await(time.Second, "X_REQUESTS>=20", func(m Message) bool { return m.HasRequests && m.Requests >= 20 })

		// A request in flight at SIGTERM is finished.
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get(m.url + "/sleep?s=0.5") // returns once the headers are in
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := w.p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		w.await(5*time.Second, "STOPPING=1", func(m Message) bool { return m.Stopping })
		b, err := io.ReadAll(resp.Body)
		if want := fmt.Sprintf("hello from pid %d\n", w.p.Pid); err != nil || string(b) != want {
			t.Errorf("in-flight request at SIGTERM: %q %v, want %q", b, err, want)
		}
		if got := w.await(5*time.Second, "final X_REQUESTS", func(m Message) bool { return m.HasRequests }); got.Requests != 21 {
			t.Errorf("final X_REQUESTS=%d, want 21", got.Requests)
		}
		if ex := w.wait(5 * time.Second); !ex.Status.Exited() || ex.Status.ExitStatus() != 0 {
			t.Errorf("worker %s on SIGTERM, want exit status 0", Describe(ex.Status))
		}
	})
	t.Run("drain", func(t *testing.T) {
		m := newTinyMaster(t)
		n, l := replaceUnderLoad(t, m, func() *testWorker { return start(m) }, 8, 8, 0)
		t.Logf("worker.py, %d replacements: %s", n, l)
		if l.failed.Load() != 0 || l.ok.Load() == 0 {
			t.Errorf("%d replacements: %s; want no failed request", n, l)
		}
	})
}

func TestNodeWorker(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node")
	}
	if _, err := exec.LookPath("systemd-notify"); err != nil {
		t.Skip("no systemd-notify (worker.js sends through it)")
	}
	script, err := filepath.Abs("../testdata/protocol/worker.js")
	if err != nil {
		t.Fatal(err)
	}
	start := func(m *tinyMaster) *testWorker {
		return m.start(node, []string{"node", script}, "WATCHDOG_USEC=1000000")
	}
	t.Run("protocol", func(t *testing.T) {
		m := newTinyMaster(t)
		w := start(m)
		w.await(10*time.Second, "READY=1", func(m Message) bool { return m.Ready })
		w.await(2*time.Second, "WATCHDOG=1", func(m Message) bool { return m.Watchdog })
		get(t, m.url, 20, w.p.Pid)
		w.await(2*time.Second, "X_REQUESTS>=20", func(m Message) bool { return m.HasRequests && m.Requests >= 20 })
		if err := w.p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		w.await(5*time.Second, "STOPPING=1", func(m Message) bool { return m.Stopping })
		if got := w.await(5*time.Second, "final X_REQUESTS", func(m Message) bool { return m.HasRequests }); got.Requests != 20 {
			t.Errorf("final X_REQUESTS=%d, want 20", got.Requests)
		}
		if ex := w.wait(5 * time.Second); !ex.Status.Exited() || ex.Status.ExitStatus() != 0 {
			t.Errorf("worker %s on SIGTERM, want exit status 0", Describe(ex.Status))
		}
	})
	t.Run("drain", func(t *testing.T) {
		m := newTinyMaster(t)
		n, l := replaceUnderLoad(t, m, func() *testWorker { return start(m) }, 8, 8, 0)
		t.Logf("worker.js, %d replacements: %s", n, l)
		if l.failed.Load() != 0 || l.ok.Load() == 0 {
			t.Errorf("%d replacements: %s; want no failed request", n, l)
		}
	})
}

// The README's Python and Node snippets are excerpts of the tested files:
// each line is in the file, in the same order ("..." marks a cut).
func TestReadmeSnippetsAreExcerpts(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Writing a worker in any language\n")
	if !ok {
		t.Fatal("README has no section \"Writing a worker in any language\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	for fence, file := range map[string]string{"```python\n": "worker.py", "```js\n": "worker.js"} {
		_, snippet, ok := strings.Cut(section, fence)
		if !ok {
			t.Errorf("no %s snippet", strings.TrimSpace(fence))
			continue
		}
		snippet, _, _ = strings.Cut(snippet, "```")
		src, err := os.ReadFile(filepath.Join("../testdata/protocol", file))
		if err != nil {
			t.Fatal(err)
		}
		lines, at := strings.Split(string(src), "\n"), 0
		for _, l := range strings.Split(strings.TrimSuffix(snippet, "\n"), "\n") {
			if l == "..." {
				continue
			}
			i := slices.Index(lines[at:], l)
			if i < 0 {
				t.Errorf("README's %s line %q is not in testdata/protocol/%s (after line %d)", file, l, file, at)
				break
			}
			at += i + 1
		}
	}
}
