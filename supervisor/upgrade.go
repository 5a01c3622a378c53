package supervisor

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// A master upgrade (USR2, `supervisor upgrade`), seen from the old master.
// The new master is started by tableflip with every socket; until it
// commits (its canary is ready and it called tableflip's Ready) this
// master changes nothing: it starts no worker, refuses reloads, scaling
// and another upgrade, and still answers the control socket. From the
// commit it answers nothing new: it stops the workers the new master names
// over the link, one per new worker ready, and exits once its last worker
// is gone, after telling systemd MAINPID=<new>. If the new master fails
// before the commit, this master carries on as if nothing happened; if it
// dies after, this master takes the control socket back and refills its
// pool. Upgrader is what it needs of tableflip.

// Upgrader starts the next master: *tableflip.Upgrader.
type Upgrader interface {
	// AddFile keeps a duplicate of f for the next master under name.
	AddFile(name string, f *os.File) error
	// Upgrade starts the next master with everything kept and returns
	// once it called Ready (nil) or failed: it exited, or timed out.
	Upgrade() error
	// Stop kills a next master that has not called Ready yet, and
	// refuses upgrades from then on.
	Stop()
}

// upgrade is a master upgrade under way, on either side.
type upgrade struct {
	old       bool // this is the old master
	peerPid   int  // the other master; 0 until the new one said who it is
	began     time.Time
	committed bool    // the new master took over (Committed)
	readied   bool    // old master: tableflip saw the new master's Ready
	peer      *Status // the other master as it last reported, for status
	sent      string  // the pool fingerprint this master last reported

	// The old master's side.
	waiters []chan Response // upgrade --wait callers
	reason  string          // the new master's own reason for failing (Fail)

	// The new master's side.
	remote   map[int]wview // the old master's workers
	stopSent map[int]bool  // remote workers asked to stop
	peerGone bool          // the old master's end of the link closed
}

// callUpgrade is the control command: upgrade [--wait].
func (m *master) callUpgrade(c Call) { m.startUpgrade(c.Reply, c.Wait) }

// upgradeRefusal is why an upgrade cannot start now, or "".
func (m *master) upgradeRefusal() string {
	switch {
	case m.opts.Upgrader == nil:
		return "this master was started without an upgrader"
	case os.Getpid() == 1:
		return "the master is PID 1 (a container's init): the new master would be its child and die with it; roll out a new image instead"
	case m.upgrade != nil && m.upgrade.old:
		return fmt.Sprintf("an upgrade is under way (new master pid %d)", m.upgrade.peerPid)
	case m.upgrade != nil:
		return fmt.Sprintf("this master is still taking over from pid %d", m.upgrade.peerPid)
	case m.handedOver:
		return "this master handed over once and its new master died: restart the service to upgrade it"
	case m.phase != running:
		return "the master is " + m.phase.String()
	case m.rollout != nil:
		return fmt.Sprintf("a reload is under way (generation %d)", m.target)
	case m.upgradeNext != nil:
		return "an upgrade is about to start, once the workers being drained are stopped"
	}
	return ""
}

// pendingCall is a control call that waits for its turn.
type pendingCall struct {
	reply chan Response
	wait  bool
}

// startPendingUpgrade starts the upgrade that waited for the drains, once
// they are over; stopping abandons it.
func (m *master) startPendingUpgrade() {
	p := m.upgradeNext
	switch {
	case p == nil:
	case m.phase == stopping:
		m.upgradeNext = nil
		respond(p.reply, Response{Error: "upgrade abandoned: the master is stopping"})
	case len(m.dr.drains) == 0:
		m.upgradeNext = nil
		m.startUpgrade(p.reply, p.wait)
	}
}

// startUpgrade starts the new master (USR2, `supervisor upgrade`). reply,
// when not nil, is answered at once, or with wait once the upgrade ended:
// the old master gone, or the new one failed.
func (m *master) startUpgrade(reply chan Response, wait bool) {
	if why := m.upgradeRefusal(); why != "" {
		msg := "upgrade refused: " + why
		m.log.Warn(msg)
		m.metrics.upgrades.WithLabelValues(upgradeRefused).Inc()
		respond(reply, Response{Error: msg})
		return
	}
	if len(m.dr.drains) > 0 {
		// The new master learns the groups from the hello; a drain under
		// way would be lost on the way. Drains end within a second.
		m.log.Info("upgrade: waiting for the workers being drained before their stop")
		m.upgradeNext = &pendingCall{reply: reply, wait: wait}
		return
	}
	if m.pair == nil {
		p, err := newLinkPair(m.opts.Upgrader)
		if err != nil {
			m.upgradeFailed("cannot link to a new master: " + err.Error())
			respond(reply, Response{Error: m.lastUpgrade})
			return
		}
		m.pair = p
	}
	m.pair.drainPeer()
	st := m.unsortedStatus()
	groups, fds := m.steerHello()
	if err := m.pair.send(linkMsg{Hello: &linkHello{Pid: os.Getpid(), LastGen: m.lastGen, Steer: groups}, Status: compact(st), fds: fds}); err != nil {
		m.upgradeFailed("cannot write to the link: " + err.Error())
		respond(reply, Response{Error: m.lastUpgrade})
		return
	}
	m.upgrade = &upgrade{old: true, began: m.env.now()}
	m.upgrade.sent = fingerprint(st.Pool)
	m.log.Info("upgrade: starting a new master", zap.String("binary", os.Args[0]))
	m.tellSystemd("STATUS=upgrading the master")
	peer, up := m.pair.peer, m.opts.Upgrader
	go func() { result(peer, up.Upgrade()) }()
	switch {
	case reply == nil:
	case wait:
		m.upgrade.waiters = append(m.upgrade.waiters, reply)
	default:
		respond(reply, Response{OK: true, Message: "upgrade started: a new master is starting"})
	}
}

// onOldLink handles a message to the old master.
func (m *master) onOldLink(msg linkMsg) {
	u := m.upgrade
	if u == nil {
		return // left over from an attempt that ended
	}
	if msg.Status != nil {
		u.peer, u.peerPid = msg.Status, msg.Status.Pid
	}
	switch {
	case msg.Fail != "":
		u.reason = msg.Fail
	case msg.Committed != 0 && !u.committed:
		u.peerPid = msg.Committed
		m.oldCommitted()
	case msg.Result != nil && *msg.Result == "":
		// tableflip saw Ready: Committed, with the new master's pid,
		// comes next, unless the new master dies first, which the end of
		// the link will say once this master's copy is closed.
		u.readied = true
		m.pair.handedOver()
	case msg.Result != nil && !u.committed:
		why := *msg.Result
		if u.reason != "" {
			why = u.reason
		}
		m.upgradeFailed("the new master failed before taking over: " + why)
	case msg.Stop != 0 && u.committed:
		if w := m.workers[msg.Stop]; w != nil && w.state != wStopping {
			m.log.Info("handing over: stopping worker", w.fields()...)
			m.stop(w, w.cfg.StopSig, w.cfg.GracefulTimeout)
		}
	case msg.StopAll:
		m.log.Info("the new master is stopping; stopping too")
		m.stopAll(m.cfg().StopSig, m.cfg().GracefulTimeout)
	}
}

// oldCommitted: the new master is ready and takes over the control
// socket and the metrics port; this master only stops what it is told to.
func (m *master) oldCommitted() {
	u := m.upgrade
	u.committed = true
	m.pair.handedOver() // from now on, the end of the link is the new master's death
	if m.phase == running {
		m.phase = handingOver
	}
	m.serving(false)
	m.log.Info("upgrade committed: the new master takes over; handing over workers", zap.Int("new_pid", u.peerPid))
}

// upgradeFailed ends an upgrade that did not take: this master carries on.
func (m *master) upgradeFailed(why string) {
	m.lastUpgrade = "upgrade failed, pid " + strconv.Itoa(os.Getpid()) + " carries on: " + why
	m.log.Error("upgrade failed; this master carries on", zap.String("reason", why))
	m.metrics.upgrades.WithLabelValues(upgradeFailed).Inc()
	if u := m.upgrade; u != nil {
		for _, c := range u.waiters {
			respond(c, Response{Error: m.lastUpgrade})
		}
	}
	m.upgrade = nil
	m.tellSystemd("STATUS=" + m.lastUpgrade)
}

// onOldLinkClosed: after the commit, the new master died. Its workers died
// with it; this master takes the control socket, the metrics port and the
// pid file back and refills its pool.
func (m *master) onOldLinkClosed() {
	m.pair.close()
	m.pair = nil
	u := m.upgrade
	if u == nil || !(u.committed || u.readied) {
		return
	}
	m.handedOver = true // tableflip upgrades once
	if m.phase == handingOver {
		m.phase = running
	}
	m.steerAgain()
	m.serving(true)
	if m.opts.OnReady != nil {
		if err := m.opts.OnReady(); err != nil { // the pid file names this master again
			m.log.Warn("taking the pool back", zap.Error(err))
		}
	}
	m.upgradeFailed(fmt.Sprintf("the new master (pid %d) died after it took over; this master takes its pool back", u.peerPid))
}

// oldExit is the old master's last act after a committed upgrade: systemd
// is told the new master's pid while this one still lives (systemd takes
// MAINPID= only from the main pid), and waiters learn the outcome.
func (m *master) oldExit() {
	u := m.upgrade
	if u == nil || !u.old || !u.committed {
		return
	}
	m.tellSystemd("MAINPID=" + strconv.Itoa(u.peerPid))
	msg := fmt.Sprintf("upgraded: master pid %d took over from pid %d in %s", u.peerPid, os.Getpid(), m.env.now().Sub(u.began).Round(time.Millisecond))
	m.log.Info("upgrade: handed over; exiting", zap.Int("new_pid", u.peerPid))
	for _, c := range u.waiters {
		respond(c, Response{OK: true, Message: msg})
	}
	u.waiters = nil
}

// report sends this master's status to the other master when its pool
// changed since the last report.
func (m *master) report() {
	u := m.upgrade
	l := m.upgradeLink()
	if u == nil || l == nil {
		return
	}
	st := m.unsortedStatus()
	if fp := fingerprint(st.Pool); fp != u.sent {
		u.sent = fp
		if err := l.send(linkMsg{Status: compact(st)}); err != nil {
			m.log.Warn("upgrade link: report", zap.Error(err))
		}
	}
}

// upgradeLink is this master's end of the link, or nil.
func (m *master) upgradeLink() *link {
	switch {
	case m.pair != nil:
		return m.pair.link
	case m.parent != nil:
		return m.parent
	}
	return nil
}

// linkIn is the channel the loop reads link messages from (nil: none).
func (m *master) linkIn() <-chan linkMsg {
	if l := m.upgradeLink(); l != nil {
		return l.in
	}
	return nil
}

// onLink dispatches a link message, or the link's end of file (ok false).
func (m *master) onLink(msg linkMsg, ok bool) {
	closeFDs(msg.fds) // only a hello carries any, read before the loop
	switch {
	case m.pair != nil && ok:
		m.onOldLink(msg)
	case m.pair != nil:
		m.onOldLinkClosed()
	case ok:
		m.onNewLink(msg)
	default:
		m.onNewLinkClosed()
	}
}

// compact is st as the other master needs it: the pool without what
// changes with every request.
func compact(st Status) *Status {
	pool := make([]WorkerInfo, len(st.Pool))
	for i, w := range st.Pool {
		pool[i] = WorkerInfo{Pid: w.Pid, Slot: w.Slot, Generation: w.Generation, State: w.State, Started: w.Started, Recycle: w.Recycle}
	}
	st.Pool, st.Peer, st.Upgrade = pool, nil, ""
	sortPool(st.Pool)
	return &st
}

// fingerprint identifies a pool by what the other master plans with.
func fingerprint(pool []WorkerInfo) string {
	c := compact(Status{Pool: pool})
	b := make([]byte, 0, 24*len(c.Pool))
	for _, w := range c.Pool {
		b = strconv.AppendInt(b, int64(w.Pid), 10)
		b = append(b, w.State[0], ',')
	}
	return string(b)
}

// describe is the upgrade under way in one line, for status.
func (u *upgrade) describe() string {
	switch {
	case u.old && !u.committed:
		return "starting a new master (its canary must be ready first)"
	case u.old:
		return fmt.Sprintf("handing over to the new master, pid %d", u.peerPid)
	case !u.committed:
		return fmt.Sprintf("taking over from pid %d: canary starting", u.peerPid)
	}
	return fmt.Sprintf("taking over from pid %d: %d of its workers left", u.peerPid, len(u.remote))
}

// stopUpgrade, as this master starts stopping: an old master abandons an
// upgrade that has not committed (tableflip kills the new master, whose
// workers die with it); a new master that took over asks the old one to
// stop too.
func (m *master) stopUpgrade() {
	u := m.upgrade
	switch {
	case u == nil:
	case u.old && !u.committed:
		m.opts.Upgrader.Stop()
		m.upgradeFailed("abandoned: this master is stopping")
	case !u.old && u.committed:
		m.tellParent(linkMsg{StopAll: true})
	}
}
