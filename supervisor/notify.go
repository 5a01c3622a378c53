package supervisor

import (
	"os"
	"sync"

	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// notifySockets are the master's notify sockets: one per uid its workers
// run as (workers.ListenPrivateNotify), each reachable by that uid and the
// master's only. One uid is the rule; a reload that changes --user adds a
// second, and both stay until Run returns, since the old generation keeps
// talking until its last worker is gone and a rollback brings it back.
// Each socket has a reader goroutine (readNotify) feeding one channel.
// The loop opens sockets; a scrape reads dropped.
type notifySockets struct {
	log   *zap.Logger
	notes chan []workers.Notification
	quit  chan struct{}
	wg    sync.WaitGroup

	mu    sync.Mutex                    // socks: the loop adds, a scrape reads
	socks map[int]*workers.NotifySocket // by the workers' uid
}

func newNotifySockets(log *zap.Logger) *notifySockets {
	return &notifySockets{
		log:   log,
		notes: make(chan []workers.Notification, 4),
		quit:  make(chan struct{}),
		socks: map[int]*workers.NotifySocket{},
	}
}

// workerUID is the uid and gid workers of cfg run as.
func workerUID(cfg *Resolved) (uid, gid int) {
	if c := cfg.Credential; c != nil {
		return int(c.Uid), int(c.Gid)
	}
	return os.Geteuid(), os.Getegid()
}

// open makes sure workers of cfg have a socket: it binds one for their uid
// unless one is open already.
func (s *notifySockets) open(cfg *Resolved) error {
	uid, gid := workerUID(cfg)
	s.mu.Lock()
	_, ok := s.socks[uid]
	s.mu.Unlock()
	if ok {
		return nil
	}
	ns, err := workers.ListenPrivateNotify(uid, gid)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.socks[uid] = ns
	s.mu.Unlock()
	s.log.Info("notify socket", zap.String("path", ns.Addr()), zap.Int("uid", uid))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		readNotify(ns, s.notes, s.quit, s.log)
	}()
	return nil
}

// addr is the NOTIFY_SOCKET for workers of cfg: "" when open was not called
// for their uid (the simulated master of the unit tests).
func (s *notifySockets) addr(cfg *Resolved) string {
	if s == nil {
		return ""
	}
	uid, _ := workerUID(cfg)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns := s.socks[uid]; ns != nil {
		return ns.Addr()
	}
	return ""
}

// dropped is the sum of every socket's Dropped. Safe from any goroutine.
func (s *notifySockets) dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, ns := range s.socks {
		n += ns.Dropped()
	}
	return n
}

// close closes every socket (removing its directory) and waits for the
// readers.
func (s *notifySockets) close() {
	close(s.quit)
	s.mu.Lock()
	for _, ns := range s.socks {
		ns.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
