package supervisor

import (
	"fmt"
	"strconv"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// rollout is a move of every slot to the target generation.
type rollout struct {
	// rollback: back to the stable generation after a failed rollout; its
	// workers' failures are crashes, not a reason to give up.
	rollback bool
	// handover: a new master taking over from the old master's pool;
	// its workers' failures are crashes, and it ends with the old master.
	handover bool
	began    time.Time
	waiters  []chan Response // reload --wait callers, answered at the end
}

// reload starts a rollout of the config as it is now (HUP, `supervisor
// reload`). The config is re-read first; if it cannot be read, or a new bind
// cannot be opened, nothing changes and the failure is reported. A reload
// during a rollout merges into it: the newest config becomes the target and
// earlier waiters get the outcome of the merged rollout. reply, when not
// nil, is answered at once, or at the end of the rollout with wait.
func (m *master) reload(reply chan Response, wait bool) {
	if m.phase != running || m.upgrade != nil {
		msg := "reload refused: the master is " + m.phase.String()
		if m.upgrade != nil {
			msg = "reload refused: a master upgrade is under way"
		}
		m.log.Warn(msg)
		m.metrics.reloads.WithLabelValues(reloadRefused).Inc()
		respond(reply, Response{Error: msg})
		return
	}
	// systemd (Type=notify-reload) waits for RELOADING=1, then READY=1.
	m.tellSystemd("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10))
	cfg, socks, err := m.loadGeneration(m.lastGen + 1)
	if err != nil {
		msg := "reload failed, the running config stays in force: " + err.Error()
		m.log.Error("reload failed", zap.Error(err))
		m.metrics.reloads.WithLabelValues(reloadConfigFail).Inc()
		m.lastReload = msg
		m.tellSystemd("READY=1\nSTATUS=" + msg)
		respond(reply, Response{Error: msg})
		return
	}
	m.lastGen++
	gen := m.lastGen
	m.configs[gen], m.genSockets[gen] = cfg, socks
	var waiters []chan Response
	if m.rollout != nil && !m.rollout.rollback {
		waiters = m.rollout.waiters
		m.metrics.reloads.WithLabelValues(reloadSuperseded).Inc()
		m.log.Info("reload merges into the rollout under way", zap.Int("replaced_target", m.target))
	}
	m.rollout = &rollout{began: m.env.now(), waiters: waiters}
	m.target = gen
	clear(m.restarts)
	clear(m.crashes)
	m.log.Info("reload", zap.Int("generation", gen), zap.Int("workers", cfg.Workers), zap.Int("max_surge", cfg.Surge), zap.String("command", commandLine(cfg)))
	switch {
	case reply == nil:
	case wait:
		m.rollout.waiters = append(m.rollout.waiters, reply)
	default:
		respond(reply, Response{OK: true, Message: fmt.Sprintf("reload started: generation %d", gen)})
	}
}

// loadGeneration reads the config for generation gen, opens any bind it
// adds and returns the sockets of its workers.
func (m *master) loadGeneration(gen int) (*Resolved, []*listener.Socket, error) {
	cfg := m.cfg()
	if m.opts.Load != nil {
		var err error
		if cfg, err = m.opts.Load(); err != nil {
			return nil, nil, fmt.Errorf("config: %w", err)
		}
	}
	if m.notify != nil {
		// A new --user: its workers get a socket of their own.
		if err := m.notify.open(cfg); err != nil {
			return nil, nil, fmt.Errorf("notify socket: %w", err)
		}
	}
	socks, err := m.socketsFor(gen, cfg.Addrs)
	if err != nil {
		return nil, nil, err
	}
	return cfg, socks, nil
}

// socketsFor returns the sockets of generation gen's workers for a bind
// list (socketsOf), opening the binds not open yet: a kept bind keeps its
// socket, and a port-0 bind its port. A bind is known by
// listener.Addr.Key, the name listener.Open keeps its socket under for a
// master upgrade too. A TCP bind is opened for steering when steering is
// on (taken at start, whatever a reloaded config says). On error the binds
// it opened are retired.
func (m *master) socketsFor(gen int, addrs []listener.Addr) ([]*listener.Socket, error) {
	var opened []string
	undo := func() {
		for _, k := range opened {
			m.unsteer(k)
			m.retireSockets(m.sockets[k])
			delete(m.sockets, k)
		}
	}
	for _, a := range addrs {
		key := a.Key()
		if _, ok := m.sockets[key]; ok {
			continue
		}
		a.ReusePort = m.steerOn && a.Kind == listener.KindTCP
		ss, err := m.opts.Open([]listener.Addr{a})
		if err != nil {
			undo()
			return nil, err
		}
		for _, s := range ss {
			if ino, err := workers.SocketInode(s.RawFD()); err == nil {
				m.inodes[s.RawFD()] = ino
			}
			m.log.Info("listening", zap.String("address", s.Addr), zap.String("name", s.Name), zap.Int("fd", s.RawFD()))
			if st := m.opts.FDStore; st != nil {
				if err := st.Add(s); err != nil {
					m.log.Warn("socket not kept in systemd's fd store", zap.String("bind", s.Name), zap.Error(err))
				}
			}
		}
		m.sockets[key] = ss
		opened = append(opened, key)
		m.steerBind(key, ss)
	}
	socks, err := m.socketsOf(gen, addrs)
	if err != nil {
		undo()
		return nil, fmt.Errorf("a socket of its own for generation %d: %w", gen, err)
	}
	return socks, nil
}

func (m *master) retireSockets(ss []*listener.Socket) {
	for _, s := range ss {
		delete(m.inodes, s.RawFD())
		if st := m.opts.FDStore; st != nil {
			if err := st.Remove(s); err != nil {
				m.log.Warn("socket not removed from systemd's fd store", zap.String("bind", s.Name), zap.Error(err))
			}
		}
		_ = s.Retire()
	}
}

// settle ends a rollout that has arrived: every slot runs a ready target
// worker and no other generation serves.
func (m *master) settle() {
	r := m.rollout
	if r == nil {
		return
	}
	ready := 0
	for _, w := range m.workers {
		switch {
		case w.state == wStopping:
		case w.gen != m.target || w.state != wReady || w.recycleReason != "":
			return
		default:
			ready++
		}
	}
	cfg := m.configs[m.target]
	if ready < cfg.Workers {
		return
	}
	if r.handover {
		if m.handoverDone() {
			m.rollout = nil
		}
		return
	}
	m.rollout = nil
	took := m.env.now().Sub(r.began)
	if r.rollback {
		m.log.Info("rolled back", zap.Int("generation", m.stable), zap.Duration("took", took))
		return
	}
	m.stable = m.target
	m.metrics.reloads.WithLabelValues(reloadSucceeded).Inc()
	m.metrics.reloadDuration.WithLabelValues(reloadSucceeded).Observe(took.Seconds())
	m.metrics.lastReloadOK.Set(unixSeconds(m.env.now()))
	m.lastReload = fmt.Sprintf("generation %d serving, rolled out in %s", m.stable, took.Round(time.Millisecond))
	m.log.Info("reload succeeded", zap.Int("generation", m.stable), zap.Duration("took", took))
	m.tellSystemd(fmt.Sprintf("READY=1\nSTATUS=generation %d: %d workers ready", m.stable, cfg.Workers))
	for _, c := range r.waiters {
		respond(c, Response{OK: true, Message: m.lastReload})
	}
}

// abort rolls a failed forward rollout back to the stable generation and
// reports why (invariant 3).
func (m *master) abort(reason string) {
	failed := m.target
	msg := fmt.Sprintf("reload rolled back: generation %d failed: %s", failed, reason)
	m.log.Error("reload failed; rolling back", zap.Int("generation", failed), zap.Int("back_to", m.stable), zap.String("reason", reason))
	m.lastReload = msg
	m.metrics.reloads.WithLabelValues(reloadRolledBack).Inc()
	m.metrics.reloadDuration.WithLabelValues(reloadRolledBack).Observe(m.env.now().Sub(m.rollout.began).Seconds())
	m.tellSystemd("READY=1\nSTATUS=" + msg)
	for _, c := range m.rollout.waiters {
		respond(c, Response{Error: msg})
	}
	m.rollout = &rollout{rollback: true, began: m.env.now()}
	m.target = m.stable
	clear(m.restarts)
	clear(m.crashes)
}

// release forgets generations nobody uses any more and retires the sockets
// that only they used (a bind removed on reload closes after its last
// worker is gone).
func (m *master) release() {
	live := map[int]bool{m.stable: true, m.target: true}
	for _, w := range m.workers {
		live[w.gen] = true
	}
	for _, v := range m.remoteViews(0) {
		live[v.gen] = true
	}
	for gen := range m.configs {
		if !live[gen] {
			delete(m.configs, gen)
			delete(m.genSockets, gen)
		}
	}
	for gen := range m.probed {
		if !live[gen] {
			delete(m.probed, gen)
		}
	}
	m.releaseSockets(live)
	used := map[string]bool{}
	for _, cfg := range m.configs {
		for _, a := range cfg.Addrs {
			used[a.Key()] = true
		}
	}
	for key, ss := range m.sockets {
		if !used[key] {
			m.log.Info("closing a removed bind", zap.String("bind", key))
			m.unsteer(key)
			m.retireSockets(ss)
			delete(m.sockets, key)
		}
	}
}

func respond(c chan Response, r Response) {
	if c != nil {
		c <- r
	}
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
