package main

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/supervisor"
	"github.com/supervisor-dev/supervisor/workers"
	"golang.org/x/sys/unix"
)

// Steered generations (DESIGN §8), end to end with the real binary.

// TestSteeringSavesPlainShutdown: a Go app that stops with plain
// http.Server.Shutdown drops a request it reads after SIGTERM (DESIGN §5).
// Under 16 clients, each request on a new connection, 5 reloads of 2
// workers: steered, no request fails, with net.ipv4.tcp_migrate_req 0 and
// 1 (set for the run, as root, then put back); with --steer off the same
// run loses some (about 6 a reload here), so this test can tell.
func TestSteeringSavesPlainShutdown(t *testing.T) {
	for _, tc := range []struct {
		steer, migrate string // migrate: "" leaves the sysctl as it is
	}{{"auto", "0"}, {"auto", "1"}, {"off", ""}} {
		steer := tc.steer
		t.Run(fmt.Sprintf("steer %s, tcp_migrate_req %s", steer, cmp.Or(tc.migrate, "as is")), func(t *testing.T) {
			if tc.migrate != "" {
				setSysctl(t, migrateReq, tc.migrate)
			}
			p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--steer", steer, "--", self(t), "example-app", "--plain-shutdown")
			addr := p.ready()
			stop := load(t, addr, 16)
			p.reloads(5, 30*time.Second)
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

// migrateReq is the sysctl that moves a closing listener's queue to
// another socket of its reuseport group.
const migrateReq = "/proc/sys/net/ipv4/tcp_migrate_req"

// setSysctl writes value to the sysctl at path for the test, and puts the
// value it had back at its end; it skips the test where it may not.
func setSysctl(t *testing.T, path, value string) {
	t.Helper()
	was, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("%s: %v", path, err)
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		t.Skipf("cannot set %s (root only): %v", path, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(path, was, 0o644); err != nil {
			t.Errorf("putting %s back to %s: %v", path, strings.TrimSpace(string(was)), err)
		}
	})
}

// TestUvicornSteeredReloads: unmodified uvicorn (--fd 3) resets the
// connections it accepted and had not read when SIGTERM comes. Steered, 15
// reloads under load, a new connection per request, end with every
// request answered, with net.ipv4.tcp_migrate_req 0 and 1.
func TestUvicornSteeredReloads(t *testing.T) {
	const python = "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import uvicorn").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import uvicorn (apt-get install python3-uvicorn): %v: %s", python, err, out)
	}
	dir, err := filepath.Abs("../../testdata/uvicorn")
	if err != nil {
		t.Fatal(err)
	}
	for _, migrate := range []string{"0", "1"} {
		t.Run("tcp_migrate_req "+migrate, func(t *testing.T) {
			setSysctl(t, migrateReq, migrate)
			p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--chdir", dir, "--", python, "-m", "uvicorn", "--fd", "3", "--log-level", "warning", "app:app")
			addr := p.ready()
			stop := load(t, addr, 8)
			p.reloads(15, 60*time.Second)
			testkit.WaitFor(t, 20*time.Second, "two workers", func() bool { return len(children(p.cmd.Process.Pid)) == 2 })
			ok, failed := stop()
			t.Logf("%d requests ok, %d failed during 15 reloads", ok, failed)
			if ok == 0 || failed > 0 {
				t.Errorf("%d requests failed (%d ok), want none", failed, ok)
			}
		})
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
	var errs sync.Map
	stop := loadEach(4, func() (string, error) {
		resp, err := c.Get("http://app/")
		if err != nil {
			errs.Store(err.Error(), true)
			return "", err
		}
		body := readAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(body, "hello from pid") {
			errs.Store("answer "+body, true)
			return "", fmt.Errorf("answer %q", body)
		}
		return body, nil
	}, nil)
	p.reloads(5, 30*time.Second)
	ok, failed := stop()
	t.Logf("%d requests ok, %d failed during 5 reloads", ok, failed)
	if ok == 0 || failed > 0 {
		errs.Range(func(k, _ any) bool { t.Log(k); return true })
		t.Errorf("%d requests failed (%d ok), want none", failed, ok)
	}
	if n := p.countLogs("bind shared by every generation: not steered"); n != 1 {
		t.Errorf("said %d times that the bind is shared, want once", n)
	}
}

// TestSteerCapacitySampled: through 3 reloads of 4 workers, the status is
// sampled every 5 ms and counts the ready workers whose generation has a
// weight in the program (a worker chosen to stop still serves until its
// generation pauses). With max_surge 100% the new generation is wholly
// ready before the old one pauses: never fewer than 4. With max_surge 1
// a pause leaves the stand-ins only, never nobody; the figures are logged.
func TestSteerCapacitySampled(t *testing.T) {
	for _, tc := range []struct {
		surge string
		least int
	}{{"100%", 4}, {"1", 1}} {
		t.Run("max_surge "+tc.surge, func(t *testing.T) {
			p := start(t, "--bind", "127.0.0.1:0", "--workers", "4", "--max-surge", tc.surge, "--", self(t), "example-app")
			p.ready()
			done := make(chan struct{})
			go func() {
				defer close(done)
				p.reloads(3, 30*time.Second)
				// The last old workers drain after the rollout: wait for them.
				testkit.WaitFor(t, 10*time.Second, "four workers", func() bool { return len(children(p.cmd.Process.Pid)) == 4 })
			}()
			path := controlPath(p.cmd)
			least, samples, busy := 4, 0, 0
			pausedSince := map[int]time.Time{}
			var longest time.Duration
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for sampling := true; sampling; {
				select {
				case <-done:
					sampling = false
				case <-tick.C:
				}
				resp, err := supervisor.CallControl(path, supervisor.Request{Command: "status"}, 5*time.Second)
				if err != nil || resp.Status == nil || len(resp.Status.Steer) != 1 {
					t.Fatalf("status: %v, %+v", err, resp)
				}
				st := resp.Status
				samples++
				weighs, paused := map[int]bool{}, map[int]bool{}
				for _, s := range st.Steer[0].Sockets {
					weighs[s.Generation] = s.Weight > 0
					paused[s.Generation] = s.Paused
				}
				serving := 0
				for _, w := range st.Pool {
					if weighs[w.Generation] && (w.State == "ready" || w.Drain == "serving") {
						serving++
					}
				}
				if st.Target != st.Generation || len(st.Pool) > 4 {
					busy++
				}
				least = min(least, serving)
				now := time.Now()
				for gen, on := range paused {
					switch since, was := pausedSince[gen]; {
					case on && !was:
						pausedSince[gen] = now
					case !on && was:
						longest = max(longest, now.Sub(since))
						delete(pausedSince, gen)
					}
				}
			}
			t.Logf("max_surge %s: %d samples, %d during a rollout or a drain; serving workers never below %d; longest pause seen %s",
				tc.surge, samples, busy, least, longest)
			if busy == 0 {
				t.Error("no sample caught a rollout")
			}
			if least < tc.least {
				t.Errorf("serving workers went down to %d, want never below %d", least, tc.least)
			}
		})
	}
}

// TestCanaryProbe: with --canary-probe http:/health/ready, a reload whose
// app answers 503 there is rolled back at its ready timeout, and its canary
// serves no live request meanwhile (no answer under load comes from it,
// and the X_REQUESTS it reports stays 0: the probe is no traffic); once it
// answers 200 the reload rolls out. A tcp probe passes on an app that
// accepts.
func TestCanaryProbe(t *testing.T) {
	sick := filepath.Join(t.TempDir(), "sick")
	app := writeScript(t, fmt.Sprintf("if [ -e %s ]; then exec %s example-app --health-status 503; fi\nexec %s example-app\n", sick, self(t), self(t)))
	p := start(t, "--bind", "127.0.0.1:0", "--workers", "2", "--ready-timeout", "3s", "--canary-probe", "http:/health/ready", "--", app)
	addr := p.ready()
	if err := os.WriteFile(sick, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	answered := map[string]int{} // "pid N" -> answers
	stopLoad := loadEach(4, func() (string, error) { return get("http://" + addr + "/") }, func(body string) {
		f := strings.Fields(body) // hello from pid N slot S generation G
		mu.Lock()
		answered["pid "+f[3]]++
		mu.Unlock()
	})
	defer stopLoad()

	type result struct {
		out  string
		code int
	}
	done := make(chan result, 1)
	go func() { out, code := p.client("reload", "--wait"); done <- result{out, code} }()
	line := p.waitLog("canary says it is ready; probing it before it gets live connections", 20*time.Second)
	canary := int(line["pid"].(float64))
	probing := 0
	for sampling := true; sampling; {
		select {
		case r := <-done:
			if r.code == 0 || !strings.Contains(r.out, "failed its canary probe") || !strings.Contains(r.out, "503") {
				t.Fatalf("reload --wait with a sick app: exit %d: %s; want it rolled back, naming the probe and the 503", r.code, r.out)
			}
			t.Logf("reload --wait: %s", strings.TrimSpace(r.out))
			sampling = false
		case <-time.After(100 * time.Millisecond):
			resp, err := supervisor.CallControl(controlPath(p.cmd), supervisor.Request{Command: "status"}, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range resp.Status.Pool {
				if w.Pid == canary {
					probing++
					if w.Requests != 0 || w.State == "ready" {
						t.Errorf("the canary being probed is %s and reports %d requests; want never ready, and 0", w.State, w.Requests)
					}
				}
			}
		}
	}
	mu.Lock()
	byPid := maps.Clone(answered)
	mu.Unlock()
	if n := byPid[fmt.Sprintf("pid %d", canary)]; n > 0 {
		t.Errorf("the canary (pid %d) answered %d live requests", canary, n)
	}
	t.Logf("the canary was seen probing in %d status samples; answers by pid: %v", probing, byPid)

	if err := os.Remove(sick); err != nil {
		t.Fatal(err)
	}
	if out, code := p.client("reload", "--wait"); code != 0 {
		t.Fatalf("reload --wait with a healthy app: exit %d: %s", code, out)
	}
	if p.countLogs("canary probe passed") != 1 {
		t.Error("want one 'canary probe passed' line")
	}
	if ok, failed := stopLoad(); ok == 0 || failed > 0 {
		t.Errorf("%d requests failed (%d ok) through the two reloads, want none", failed, ok)
	}

	tp := start(t, "--bind", "127.0.0.1:0", "--workers", "1", "--canary-probe", "tcp", "--", self(t), "example-app")
	tp.ready()
	if out, code := tp.client("reload", "--wait"); code != 0 || tp.countLogs("canary probe passed") != 1 {
		t.Fatalf("reload --wait with a tcp probe: exit %d: %s", code, out)
	}
}

// TestSystemdSocketSteeredWithReusePort: a socket systemd passes is
// steered when it has SO_REUSEPORT (ReusePort=yes), the master adding its
// generations' sockets to its group, and shared, said once, when it has
// not. The test plays systemd: LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID
// set by the exec shim.
func TestSystemdSocketSteeredWithReusePort(t *testing.T) {
	for _, reuse := range []bool{true, false} {
		t.Run(fmt.Sprintf("SO_REUSEPORT %v", reuse), func(t *testing.T) {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				t.Fatal(err)
			}
			f := os.NewFile(uintptr(fd), "http") // the test's own socket, with no master running yet
			t.Cleanup(func() { f.Close() })
			if reuse {
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
					t.Fatal(err)
				}
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Fatal(err)
			}
			if err := unix.Listen(fd, 128); err != nil {
				t.Fatal(err)
			}
			cmd := command(t, workers.ShimArg, self(t), "supervisor", "run", "--bind", "systemd:http", "--workers", "2", "--", self(t), "example-app")
			cmd.ExtraFiles = []*os.File{f}
			cmd.Env = append(cmd.Env, "LISTEN_FDS=1", "LISTEN_FDNAMES=http")
			p := startCmd(t, cmd)
			p.waitLog("ready", 30*time.Second)
			if out, code := p.client("reload", "--wait"); code != 0 {
				t.Fatalf("reload --wait: exit %d: %s", code, out)
			}
			st := p.controlStatus()
			shared := p.countLogs("bind shared by every generation: not steered")
			switch {
			case reuse && (len(st.Steer) != 1 || st.Steer[0].Bind != "systemd:http" || len(st.Steer[0].Sockets) != 2 || shared != 0):
				t.Fatalf("with SO_REUSEPORT: steered %+v, said shared %d times; want the group of systemd:http, 2 sockets", st.Steer, shared)
			case !reuse && (len(st.Steer) != 0 || shared != 1):
				t.Fatalf("without SO_REUSEPORT: steered %+v, said shared %d times; want it shared, said once", st.Steer, shared)
			}
			sa, _ := unix.Getsockname(fd)
			addr := fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
			want := "hello from pid" // shared: an old worker may still answer
			if reuse {
				want = "generation 2" // steered: the old generation gets nothing
			}
			if body, err := get("http://" + addr + "/"); err != nil || !strings.Contains(body, want) {
				t.Fatalf("GET after the reload: %q, %v; want %q", body, err, want)
			}
		})
	}
}
