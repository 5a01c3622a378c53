package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
)

// Steered generations (DESIGN §8), end to end with the real binary.

// TestSteeringSavesPlainShutdown: a Go app that stops with plain
// http.Server.Shutdown drops a request it reads after SIGTERM (DESIGN §5).
// Under 16 clients, each request on a new connection, 5 reloads of 2
// workers: steered, no request fails; with --steer off the same run loses
// some (about 6 a reload here), so this test can tell.
func TestSteeringSavesPlainShutdown(t *testing.T) {
	for _, steer := range []string{"auto", "off"} {
		t.Run(steer, func(t *testing.T) {
			p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--steer", steer, "--", self(t), "example-app", "--plain-shutdown")
			addr := p.ready()
			stop := load(t, addr, 16)
			for i := 1; i <= 5; i++ {
				p.signal(syscall.SIGHUP)
				p.waitLogCount("reload succeeded", i, 30*time.Second)
			}
			// The last old workers stop after the rollout: let them.
			testkit.WaitFor(t, 10*time.Second, "two workers", func() bool { return len(children(p.cmd.Process.Pid)) == 2 })
			ok, failed := stop()
			t.Logf("steer %s: %d requests ok, %d failed during 5 reloads", steer, ok, failed)
			switch {
			case ok == 0:
				t.Fatal("no request answered")
			case steer == "auto" && failed > 0:
				t.Errorf("%d requests failed with steering, want none", failed)
			case steer == "off" && failed == 0:
				t.Errorf("no request failed without steering: the load does not reach the trap, so the steered run proves nothing")
			}
		})
	}
}

// TestUvicornSteeredReloads: unmodified uvicorn (--fd 3) resets the
// connections it accepted and had not read when SIGTERM comes. Steered, 15
// reloads under load, a new connection per request, end with every
// request answered.
func TestUvicornSteeredReloads(t *testing.T) {
	const python = "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import uvicorn").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import uvicorn (apt-get install python3-uvicorn): %v: %s", python, err, out)
	}
	dir, err := filepath.Abs("../../testdata/uvicorn")
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--chdir", dir, "--", python, "-m", "uvicorn", "--fd", "3", "--log-level", "warning", "app:app")
	addr := p.ready()
	stop := load(t, addr, 8)
	for i := 1; i <= 15; i++ {
		p.signal(syscall.SIGHUP)
		p.waitLogCount("reload succeeded", i, 60*time.Second)
	}
	testkit.WaitFor(t, 20*time.Second, "two workers", func() bool { return len(children(p.cmd.Process.Pid)) == 2 })
	ok, failed := stop()
	t.Logf("%d requests ok, %d failed during 15 reloads", ok, failed)
	if ok == 0 || failed > 0 {
		t.Errorf("%d requests failed (%d ok), want none", failed, ok)
	}
}

// TestUnixBindStaysShared: a unix socket cannot be steered: the master
// says so once and its generations share it; reloads under load still
// lose nothing.
func TestUnixBindStaysShared(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	p := start(t, "--bind", "unix:"+path, "--workers", "2", "--", self(t), "example-app")
	p.ready()
	if line := p.waitLog("bind shared by every generation: not steered", time.Second); line["bind"] != "unix:"+path {
		t.Errorf("the shared bind is said to be %v", line["bind"])
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
	var okN, failN atomic.Int64
	var errs sync.Map
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-quit:
					return
				default:
				}
				resp, err := c.Get("http://app/")
				if err == nil {
					body := readAll(resp.Body)
					resp.Body.Close()
					if !strings.HasPrefix(body, "hello from pid") {
						err = fmt.Errorf("answer %q", body)
					}
				}
				if err != nil {
					failN.Add(1)
					errs.Store(err.Error(), true)
				} else {
					okN.Add(1)
				}
			}
		}()
	}
	for i := 1; i <= 5; i++ {
		p.signal(syscall.SIGHUP)
		p.waitLogCount("reload succeeded", i, 30*time.Second)
	}
	close(quit)
	wg.Wait()
	t.Logf("%d requests ok, %d failed during 5 reloads", okN.Load(), failN.Load())
	if okN.Load() == 0 || failN.Load() > 0 {
		errs.Range(func(k, _ any) bool { t.Log(k); return true })
		t.Errorf("%d requests failed (%d ok), want none", failN.Load(), okN.Load())
	}
	if n := p.countLogs("bind shared by every generation: not steered"); n != 1 {
		t.Errorf("said %d times that the bind is shared, want once", n)
	}
}
