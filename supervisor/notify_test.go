package supervisor

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// Workers of each uid get a socket of their own, opened once: a reload that
// changes --user adds one and keeps the first (the old generation still
// talks, a rollback brings it back). Datagrams from every socket reach the
// one channel, drops are summed, and close removes every directory.
func TestNotifySocketsPerUID(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	s := newNotifySockets(zap.NewNop())
	closed := false
	defer func() {
		if !closed {
			s.close()
		}
	}()
	own := &Resolved{}
	if got := s.addr(own); got != "" {
		t.Errorf("addr before open = %q, want \"\"", got)
	}
	if err := s.open(own); err != nil {
		t.Fatal(err)
	}
	first := s.addr(own)
	if err := s.open(own); err != nil || s.addr(own) != first {
		t.Fatalf("second open: %v, addr %q; want the same socket %q", err, s.addr(own), first)
	}
	if filepath.Dir(filepath.Dir(first)) != os.Getenv("XDG_RUNTIME_DIR") {
		t.Errorf("own workers' socket %s, want it under $XDG_RUNTIME_DIR", first)
	}
	addrs := []string{first}
	if os.Geteuid() == 0 {
		nobody := &Resolved{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if err := s.open(nobody); err != nil {
			t.Fatal(err)
		}
		second := s.addr(nobody)
		if second == "" || second == first || s.addr(own) != first {
			t.Fatalf("nobody's socket %q, own %q; want two sockets", second, s.addr(own))
		}
		if fi, err := os.Stat(second); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
			t.Errorf("nobody's socket %s: %v, want it owned by nobody", second, err)
		}
		addrs = append(addrs, second)
	}

	for _, a := range addrs {
		for _, msg := range []string{"not a message", "STATUS=" + a} {
			if err := workers.Notify(a, msg); err != nil {
				t.Fatal(err)
			}
		}
	}
	seen := map[string]bool{}
	for len(seen) < len(addrs) {
		for _, n := range testkit.Recv(t, s.notes, 5*time.Second, "a batch of notifications") {
			seen[n.Msg.Status] = true
		}
	}
	for _, a := range addrs {
		if !seen[a] {
			t.Errorf("nothing from %s: got %v", a, seen)
		}
	}
	// Each bad datagram was read, and counted, before the good one after it.
	if got := s.dropped(); got != uint64(len(addrs)) {
		t.Errorf("dropped() = %d, want %d: one per socket, summed", got, len(addrs))
	}

	s.close()
	closed = true
	for _, a := range addrs {
		if _, err := os.Lstat(filepath.Dir(a)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after close, %s: %v; want it removed", filepath.Dir(a), err)
		}
	}
}

// A datagram from a process that is neither a worker nor in a worker's
// group changes nothing, whatever it claims, and is counted as ignored; the
// loop then skips the rest of its turn (onNotifies says nothing changed).
// One of a worker's own in the same batch still counts.
func TestSimNotifyFromNonWorkerIgnored(t *testing.T) {
	s := boot(t, 2, nil)
	before := s.m.status()
	spawned := s.spawned
	claims := workers.Message{Ready: true, Stopping: true, Watchdog: true, Status: "pwned", HasStatus: true, Requests: 1 << 40, HasRequests: true}
	stranger := workers.Notification{PID: 99_999, PGID: 99_998, Msg: claims}
	if s.m.onNotifies([]workers.Notification{stranger, stranger}) {
		t.Error("onNotifies(two from a stranger) = true, want false: nothing changed")
	}
	s.advance()
	if got := testutil.ToFloat64(s.m.metrics.notifyIgnored); got != 2 {
		t.Errorf("notify_datagrams_ignored_total = %v, want 2", got)
	}
	after := s.m.status()
	if s.spawned != spawned || len(after.Pool) != len(before.Pool) {
		t.Fatalf("pool %+v after a stranger's claims, want %+v", after.Pool, before.Pool)
	}
	for i, w := range after.Pool {
		if b := before.Pool[i]; w.Pid != b.Pid || w.State != b.State || w.Status != "" || w.Requests != 0 {
			t.Errorf("worker %d: %+v, want it as it was: %+v", i, w, b)
		}
	}
	pid := after.Pool[0].Pid
	own := workers.Notification{PID: pid, PGID: pid, Msg: workers.Message{Status: "mine", HasStatus: true}}
	if !s.m.onNotifies([]workers.Notification{stranger, own}) {
		t.Error("onNotifies(a stranger's, a worker's) = false, want true")
	}
	if got := s.m.workers[pid].status; got != "mine" {
		t.Errorf("worker %d status %q, want mine", pid, got)
	}
	if got := testutil.ToFloat64(s.m.metrics.notifyIgnored); got != 3 {
		t.Errorf("notify_datagrams_ignored_total = %v, want 3", got)
	}
}
