package main

import (
	"encoding/json"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/controltest"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// fakeMaster serves a control socket in this process with a fake loop that
// answers with answer (false: never) and records every request; it returns
// the socket's path.
func fakeMaster(t *testing.T, answer func(supervisor.Request) (supervisor.Response, bool)) (string, <-chan supervisor.Request) {
	t.Helper()
	srv, seen := controltest.Serve(t, answer)
	return srv.Path(), seen
}

func nextRequest(t *testing.T, seen <-chan supervisor.Request) supervisor.Request {
	t.Helper()
	select {
	case r := <-seen:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("the master got no request")
	}
	return supervisor.Request{}
}

// runClient runs the binary with args and checks its exit: 0 when wantOK,
// else non-zero with a last line "supervisor: " + wantErr.
func runClient(t *testing.T, wantOK bool, wantErr string, args ...string) string {
	t.Helper()
	out, code := runToEnd(t, command(t, args...))
	if wantOK {
		if code != 0 {
			t.Fatalf("%v: exit %d, want 0; output:\n%s", args, code, out)
		}
		return out
	}
	if code == 0 {
		t.Fatalf("%v: exit 0, want non-zero; output:\n%s", args, out)
	}
	if last := lastLine(out); last != "supervisor: "+wantErr {
		t.Fatalf("%v: last line %q, want %q", args, last, "supervisor: "+wantErr)
	}
	return out
}

func TestClientNoMaster(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "control.sock")
	notFound := func(path string) string {
		return "no master running: control socket " + path + " not found (start one, or give --control)"
	}
	for _, args := range [][]string{{"reload"}, {"reload", "--wait"}, {"status"}, {"status", "--json"}, {"scale", "+1"}, {"stop"}} {
		runClient(t, false, notFound(sock), append(args, "--control", sock)...)
	}

	// The default path: under $XDG_RUNTIME_DIR, else beside --pid.
	cmd := command(t, "reload")
	cmd.Env = append(cmd.Env, "XDG_RUNTIME_DIR="+dir)
	out, code := runToEnd(t, cmd)
	if want := "supervisor: " + notFound(filepath.Join(dir, "supervisor", "control.sock")); code == 0 || lastLine(out) != want {
		t.Errorf("reload with XDG_RUNTIME_DIR: exit %d, %q; want %q", code, lastLine(out), want)
	}
	cmd = command(t, "status", "--pid", filepath.Join(dir, "app.pid"))
	cmd.Env = append(cmd.Env, "XDG_RUNTIME_DIR=")
	out, code = runToEnd(t, cmd)
	if want := "supervisor: " + notFound(filepath.Join(dir, "app.sock")); code == 0 || lastLine(out) != want {
		t.Errorf("status --pid: exit %d, %q; want %q", code, lastLine(out), want)
	}

	// A socket left by a master that died: the file stays, nobody listens.
	stale := filepath.Join(dir, "stale.sock")
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	dead.Close()
	runClient(t, false, "no master running at "+stale+" (stale socket)", "reload", "--control", stale)
}

func TestClientBadArguments(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "control.sock") // never reached
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"scale", "x"}, `scale: want N, +N or -N, got "x"`},
		{[]string{"scale", "1.5"}, `scale: want N, +N or -N, got "1.5"`},
		{[]string{"scale", "0"}, "scale: 0: the pool needs at least 1 worker"},
		{[]string{"scale", "-0"}, "scale: -0: nothing to change"},
		{[]string{"scale"}, "scale: want one argument, N, +N or -N, got 0"},
		{[]string{"scale", "1", "2"}, "scale: want one argument, N, +N or -N, got 2"},
		{[]string{"scale", "--bogus", "1"}, "unknown flag: --bogus (see 'supervisor scale --help')"},
		{[]string{"reload", "--timeout", "1s"}, "reload: --timeout only applies with --wait"},
		{[]string{"reload", "--wait", "--timeout", "-1s"}, "reload: --timeout -1s: must not be negative"},
		{[]string{"status", "extra"}, `unknown command "extra" for "supervisor status"`},
	}
	for _, tc := range cases {
		runClient(t, false, tc.want, append(tc.args, "--control", sock)...)
	}
}

func TestClientStatus(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	st := &supervisor.Status{Pid: 4242, Phase: "running", Generation: 3, Target: 4, Workers: 2, Ready: 2,
		Started: now.Add(-time.Hour), LastReload: "ok in 1.2s",
		Pool: []supervisor.WorkerInfo{
			{Pid: 5001, Slot: 0, Generation: 3, State: "ready", Started: now.Add(-90 * time.Second), Requests: 1234, RSS: 12 << 20, Status: "serving"},
			{Pid: 5002, Slot: 1, Generation: 4, State: "starting", Started: now.Add(-2 * time.Second)},
		}}
	path, seen := fakeMaster(t, func(supervisor.Request) (supervisor.Response, bool) {
		return supervisor.Response{OK: true, Status: st}, true
	})

	out := runClient(t, true, "", "status", "--json", "--control", path)
	if r := nextRequest(t, seen); r.Command != "status" {
		t.Fatalf("the master got %+v, want status", r)
	}
	var got supervisor.Status
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status --json output is not a Status: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(&got, st) {
		t.Fatalf("status --json: got %+v, want %+v", got, *st)
	}

	out = runClient(t, true, "", "status", "--control", path)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("status: %d lines, want a header, a line per generation in the rollout, a title and 2 workers:\n%s", len(lines), out)
	}
	for i, want := range [][]string{
		{"master 4242:", "running", "generation 3 (rolling out 4)", "ready 2/2", "last reload: ok in 1.2s"},
		{"generation 3 (in force): 1 workers: 1 ready, 0 starting, 0 stopping"},
		{"generation 4 (target): 1 workers: 0 ready, 1 starting, 0 stopping"},
		{"PID", "SLOT", "GEN", "STATE", "AGE", "REQUESTS", "RSS", "STATUS"},
		{"5001", "0", "3", "ready", "1234", "12.0MiB", "serving"},
		{"5002", "1", "4", "starting", "0"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("status line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
}

func TestClientReloadWait(t *testing.T) {
	why := "reload rolled back: worker 0 (pid 123) exited with status 3 before it was ready"
	path, seen := fakeMaster(t, func(req supervisor.Request) (supervisor.Response, bool) {
		if req.Wait {
			return supervisor.Response{Error: why}, true
		}
		return supervisor.Response{OK: true, Message: "reload started (generation 2)"}, true
	})
	runClient(t, false, why, "reload", "--wait", "--control", path)
	if r, want := nextRequest(t, seen), (supervisor.Request{Command: "reload", Wait: true, Timeout: "5m0s"}); r != want {
		t.Errorf("the master got %+v, want %+v", r, want)
	}

	out := runClient(t, true, "", "reload", "--control", path)
	if strings.TrimSpace(out) != "reload started (generation 2)" {
		t.Errorf("reload printed %q, want the master's message", out)
	}
	if r, want := nextRequest(t, seen), (supervisor.Request{Command: "reload"}); r != want {
		t.Errorf("the master got %+v, want %+v", r, want)
	}
}

func TestClientReloadWaitTimeout(t *testing.T) {
	path, _ := fakeMaster(t, func(supervisor.Request) (supervisor.Response, bool) { return supervisor.Response{}, false })
	runClient(t, false, "reload --wait: no outcome within 300ms (the rollout may still be running; see supervisor status)",
		"reload", "--wait", "--timeout", "300ms", "--control", path)
}

func TestClientScaleAndStop(t *testing.T) {
	path, seen := fakeMaster(t, func(req supervisor.Request) (supervisor.Response, bool) {
		return supervisor.Response{OK: true, Message: "ok " + req.Command}, true
	})
	cases := []struct {
		args []string
		want supervisor.Request
	}{
		{[]string{"scale", "3", "--control", path}, supervisor.Request{Command: "scale", Scale: "3"}},
		{[]string{"scale", "+2", "--control", path}, supervisor.Request{Command: "scale", Scale: "+2"}},
		{[]string{"scale", "-1", "--control", path}, supervisor.Request{Command: "scale", Scale: "-1"}},
		{[]string{"scale", "--control", path, "--", "-2"}, supervisor.Request{Command: "scale", Scale: "-2"}},
		{[]string{"stop", "--control", path}, supervisor.Request{Command: "stop"}},
		{[]string{"stop", "--fast", "--control", path}, supervisor.Request{Command: "stop", Fast: true}},
	}
	for _, tc := range cases {
		out := runClient(t, true, "", tc.args...)
		if want := "ok " + tc.want.Command; strings.TrimSpace(out) != want {
			t.Errorf("%v printed %q, want %q", tc.args, out, want)
		}
		if r := nextRequest(t, seen); r != tc.want {
			t.Errorf("%v: the master got %+v, want %+v", tc.args, r, tc.want)
		}
	}

	refusing, _ := fakeMaster(t, func(supervisor.Request) (supervisor.Response, bool) {
		return supervisor.Response{Error: "scale -5: the pool has only 2 workers"}, true
	})
	runClient(t, false, "scale -5: the pool has only 2 workers", "scale", "-5", "--control", refusing)
}

func TestPrintStatus(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	st := &supervisor.Status{Pid: 4242, Phase: "running", Generation: 3, Target: 3, Workers: 2, Ready: 1,
		Started: now.Add(-time.Hour - 400*time.Millisecond),
		Pool: []supervisor.WorkerInfo{
			{Pid: 5001, Slot: 0, Generation: 3, State: "ready", Started: now.Add(-90*time.Second - 600*time.Millisecond), Requests: 1234, RSS: 9_876_543, Status: "serving"},
			{Pid: 15002, Slot: 1, Generation: 3, State: "starting"},
			{Pid: 4999, Slot: 1, Generation: 2, State: "stopping", Drain: "paused"},
		},
		Steer: []supervisor.SteerGroup{{Bind: "127.0.0.1:8080", Sockets: []supervisor.SteerSocket{
			{Inode: 77, Generation: 2, Paused: true, Queued: 1}, {Inode: 78, Generation: 3, Weight: 1}, {Inode: 79}}}}}
	var b strings.Builder
	if err := printStatus(&b, st, now); err != nil {
		t.Fatal(err)
	}
	want := `master 4242: running, generation 3, ready 1/2, up 1h0m0s, last reload: none
steer 127.0.0.1:8080: socket:[77] generation 2 weight 0 (paused) queued 1, socket:[78] generation 3 weight 1, socket:[79] idle
PID    SLOT  GEN  STATE            AGE    REQUESTS  RSS     STATUS
5001   0     3    ready            1m31s  1234      9.4MiB  serving
15002  1     3    starting         -      0         -
4999   1     2    stopping/paused  -      0         -
`
	if got := b.String(); got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
}
