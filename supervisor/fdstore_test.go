package supervisor

import (
	"errors"
	"slices"
	"testing"

	"github.com/supervisor-dev/supervisor/listener"
)

// recordingStore is Options.FDStore that records what it is given and
// fails every call with err when set.
type recordingStore struct {
	added, removed []string // Socket.Name of each call
	err            error
}

func (r *recordingStore) Add(s *listener.Socket) error {
	r.added = append(r.added, s.Name+" "+s.Addr)
	return r.err
}

func (r *recordingStore) Remove(s *listener.Socket) error {
	r.removed = append(r.removed, s.Name+" "+s.Addr)
	return r.err
}

// Every socket a reload opens is added to the fd store, and removed from
// it when a later reload drops its bind (once its last worker is gone);
// a store that fails changes nothing but a warning.
func TestSimFDStoreFollowsTheBinds(t *testing.T) {
	for _, failing := range []bool{false, true} {
		s := boot(t, 1, nil)
		rec := &recordingStore{}
		if failing {
			rec.err = errors.New("send to NOTIFY_SOCKET: connection refused")
		}
		var socks []*listener.Socket
		t.Cleanup(func() {
			for _, sk := range socks {
				sk.Close()
			}
		})
		s.m.opts.FDStore = rec
		s.m.opts.Open = func(addrs []listener.Addr) ([]*listener.Socket, error) {
			ss, err := listener.Open(addrs, nil, listener.Systemd{})
			socks = append(socks, ss...)
			return ss, err
		}
		reloadTo := func(binds ...string) {
			t.Helper()
			s.load = func() (*Resolved, error) {
				c := s.m.cfg().Config
				c.Bind = binds
				return c.Validate()
			}
			reply := s.call(Request{Command: "reload", Wait: true})
			s.drive(func() {})
			if r := answer(t, reply); !r.OK {
				t.Fatalf("reload to %q: %+v", binds, r)
			}
		}
		reloadTo("127.0.0.1:0", "127.0.0.1:0")
		if len(socks) != 1 {
			t.Fatalf("the reload opened %d sockets, want 1", len(socks))
		}
		added := socks[0].Name + " " + socks[0].Addr
		if !slices.Equal(rec.added, []string{added}) || len(rec.removed) != 0 {
			t.Fatalf("store after adding a bind: added %q, removed %q; want %q added", rec.added, rec.removed, added)
		}
		reloadTo("127.0.0.1:0")
		if !slices.Equal(rec.removed, []string{added}) || socks[0].RawFD() >= 0 {
			t.Errorf("store after removing the bind: removed %q (socket fd %d); want %q removed and closed", rec.removed, socks[0].RawFD(), added)
		}
		if got, want := s.logs.FilterMessage("socket not kept in systemd's fd store").Len()+s.logs.FilterMessage("socket not removed from systemd's fd store").Len(), map[bool]int{false: 0, true: 2}[failing]; got != want {
			t.Errorf("failing store %v: %d warnings, want %d", failing, got, want)
		}
	}
}
