package supervisor

import (
	"fmt"
	"os"
	"strconv"

	"go.uber.org/zap"
)

// A master upgrade seen from the new master. It boots as a master does,
// but plans its pool with the old master's workers in it, as workers of
// older generations: it starts one canary and, once the canary is ready,
// commits (OnReady: tableflip's Ready, the pid file, the control socket);
// then every worker of its own that becomes ready lets the pool plan stop
// one of the old master's, which the old master is asked to do over the
// link. So across both masters there are never fewer than `workers` ready
// nor more than `workers + max_surge` processes (planPool's invariants).
// Before the commit a failure is the boot's: the new master gives up (and
// says why over the link). After it, a worker that fails is a crash. The
// upgrade ends when the old master is gone: its end of the link closed.

// takeOver reads the old master's hello from parent and makes this master
// its successor: it continues the generation count and starts from the old
// master's pool.
func (m *master) takeOver(parent *link) error {
	hello, st, fds, err := readHello(parent)
	if err != nil {
		return err
	}
	if err := m.adoptGroups(hello.Steer, fds); err != nil {
		return err
	}
	gen := hello.LastGen + 1
	cfg := m.configs[m.stable]
	m.configs = map[int]*Resolved{gen: cfg}
	m.stable, m.target, m.lastGen = gen, gen, gen
	m.parent = parent
	m.upgrade = &upgrade{peerPid: hello.Pid, began: m.env.now(), remote: map[int]wview{}, stopSent: map[int]bool{}, sent: "-"}
	if st != nil {
		m.setRemote(st)
	}
	m.log.Info("upgrading from pid "+strconv.Itoa(hello.Pid)+": starting a canary",
		zap.Int("old_pid", hello.Pid), zap.Int("generation", gen), zap.Int("old_workers", len(m.upgrade.remote)))
	return nil
}

// onNewLink handles a message from the old master.
func (m *master) onNewLink(msg linkMsg) {
	if m.upgrade != nil && msg.Status != nil {
		m.setRemote(msg.Status)
	}
}

// setRemote takes the old master's status as the remote part of the pool.
func (m *master) setRemote(st *Status) {
	u := m.upgrade
	u.peer = st
	clear(u.remote)
	for _, w := range st.Pool {
		v := wview{pid: w.Pid, slot: w.Slot, gen: w.Generation, state: parseState(w.State), recycling: w.Recycle != "", born: w.Started}
		if u.stopSent[w.Pid] || m.dr.drains[w.Pid] != nil {
			v.state = wStopping
		}
		u.remote[w.Pid] = v
	}
	for pid := range u.stopSent {
		if _, ok := u.remote[pid]; !ok {
			delete(u.stopSent, pid)
		}
	}
	for pid, d := range m.dr.drains {
		if _, ok := u.remote[pid]; !ok && d.w == nil {
			m.forgetDrain(pid)
		}
	}
}

// onNewLinkClosed: the old master is gone (handed over, or died: its
// workers died with it). Nothing of it is left to plan with.
func (m *master) onNewLinkClosed() {
	m.parent.close()
	m.parent = nil
	if u := m.upgrade; u != nil {
		u.peerGone, u.peer = true, nil
		clear(u.remote)
		clear(u.stopSent)
		for pid, d := range m.dr.drains {
			if d.w == nil {
				m.forgetDrain(pid)
			}
		}
		if !u.committed {
			m.log.Warn("the old master is gone before this one took over", zap.Int("old_pid", u.peerPid))
		}
	}
}

// remoteViews are the old master's workers, for the pool plan, in a
// slice with room for that many more.
func (m *master) remoteViews(room int) []wview {
	u := m.upgrade
	if u == nil || u.old {
		return make([]wview, 0, room)
	}
	vs := make([]wview, 0, len(u.remote)+room)
	for _, v := range u.remote {
		vs = append(vs, v)
	}
	return vs
}

// remoteReady is how many of the old master's workers serve and are not
// being stopped: 0 but in a new master taking over.
func (m *master) remoteReady() int {
	n := 0
	if u := m.upgrade; u != nil && !u.old {
		for _, v := range u.remote {
			if v.state == wReady {
				n++
			}
		}
	}
	return n
}

// stopRemote asks the old master to stop one of its workers: only after
// the commit (before it, the old master is not to be touched).
func (m *master) stopRemote(pid int) {
	u := m.upgrade
	if !u.committed || u.stopSent[pid] || m.parent == nil {
		return
	}
	v := u.remote[pid]
	m.log.Info("handing over: asking the old master to stop a worker", zap.Int("pid", pid), zap.Int("slot", v.slot), zap.Int("generation", v.gen))
	// This master's status first: the old one then never counts fewer of
	// its ready workers than there are, for its own status.
	st := m.unsortedStatus()
	u.sent = fingerprint(st.Pool)
	if err := m.parent.send(linkMsg{Status: compact(st), Stop: pid}); err != nil {
		m.log.Warn("upgrade link: stop", zap.Error(err))
		return
	}
	u.stopSent[pid] = true
	v.state = wStopping
	u.remote[pid] = v
}

// commit is the new master's canary being ready: it takes over (OnReady:
// tableflip's Ready writes the pid file and tells the old master; the
// control socket and the metrics port are served from here on) and rolls
// the rest of the pool over as a handover.
func (m *master) commit() {
	u := m.upgrade
	u.committed = true
	m.phase = running
	m.rollout = &rollout{handover: true, began: u.began}
	if m.opts.OnReady != nil {
		if err := m.opts.OnReady(); err != nil {
			m.log.Warn("after ready", zap.Error(err))
		}
	}
	m.tellParent(linkMsg{Committed: os.Getpid()})
	m.serving(true)
	m.log.Info("upgrade committed: this master takes over", zap.Int("old_pid", u.peerPid), zap.Int("generation", m.stable))
}

// handoverDone ends the upgrade once the old master is gone and this
// master's pool is whole (settle checked the pool).
func (m *master) handoverDone() bool {
	u := m.upgrade
	if u == nil || !u.peerGone {
		return false
	}
	took := m.env.now().Sub(u.began)
	m.upgrade = nil
	m.metrics.upgrades.WithLabelValues(upgradeSucceeded).Inc()
	m.lastUpgrade = fmt.Sprintf("upgraded from pid %d in %s", u.peerPid, took.Round(1e6))
	m.log.Info("upgraded from pid "+strconv.Itoa(u.peerPid), zap.Int("old_pid", u.peerPid), zap.Duration("took", took), zap.Int("generation", m.stable))
	cfg := m.cfg()
	m.log.Info("ready", zap.Int("workers", cfg.Workers), zap.Int("generation", m.stable), zap.String("command", commandLine(cfg)))
	m.tellSystemd(fmt.Sprintf("READY=1\nSTATUS=%d workers ready (upgraded from pid %d)", cfg.Workers, u.peerPid))
	return true
}

// tellParent sends msg to the old master, if there is one.
func (m *master) tellParent(msg linkMsg) {
	if m.parent != nil {
		if err := m.parent.send(msg); err != nil {
			m.log.Warn("upgrade link", zap.Error(err))
		}
	}
}

func parseState(s string) wstate {
	switch s {
	case "ready":
		return wReady
	case "stopping":
		return wStopping
	}
	return wStarting
}
