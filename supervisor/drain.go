package supervisor

import (
	"slices"
	"time"

	"go.uber.org/zap"
)

// The drain before a stop (DESIGN §8). Some apps drop the connections they
// accepted and have not read when they get SIGTERM (uvicorn closes them).
// So a ready worker of a steered generation that the plan stops is not
// signalled at once; its drain goes through three phases:
//  1. waiting: its generation keeps its weight until the other generations
//     serve with at least `workers` workers, or until nothing that is
//     starting could add to them (in a rolling rollout whose max_surge is
//     below `workers` nothing can: then the pause costs capacity while it
//     lasts, and keeping it short is all there is to do);
//  2. paused: its generation gets no new connection. Once the generation's
//     queues have stayed empty for steerSettle (a connection the program
//     sent it just before may still be finishing its handshake) and the
//     worker's process group holds no accepted connection whose request it
//     has not read (workers.UnreadGroups: one dump for every worker being
//     drained), it gets stop_signal; at the latest after its
//     graceful_timeout.
//  3. signalled: its generation gets nothing until the worker no longer
//     waits for connections on the generation's sockets (workers.ListenScan:
//     uvicorn looks for a shutdown only every 100 ms and accepts
//     meanwhile), or it is gone, or unlistenCap has passed; then the
//     generation's other workers take their share again.
//
// Several stops of one generation share its pause, up to its first unread
// check; a stop chosen after that waits for the next pause, so that in a
// long rolling rollout the generation serves between rounds instead of
// staying paused while new stops keep joining. A stop that no other
// generation can stand in for (a recycle or a scale down of the only
// generation) is signalled at once, as without steering: pausing the only
// generation would leave new connections nowhere to go.

const (
	steerSettle  = 5 * time.Millisecond // queues empty this long before the unread check
	drainPoll    = 2 * time.Millisecond // how often a paused generation's queues are read
	unreadRetry  = 5 * time.Millisecond // the next unread check after one found a request
	unlistenPoll = 2 * time.Millisecond // how often signalled workers are checked for listening
	unlistenCap  = time.Second          // a signalled worker's generation waits no longer for it
)

// drainPhase is where a worker chosen to stop is in its drain.
type drainPhase int

const (
	drainWaiting   drainPhase = iota // its generation keeps its weight for now
	drainPaused                      // its generation gets no connection; not signalled yet
	drainSignalled                   // signalled; its generation waits until it stops listening
)

// drain is one worker on its way out through its generation's drain.
type drain struct {
	pid   int
	gen   int
	w     *worker // nil: the old master's worker, in an upgrade
	phase drainPhase
	since time.Time // when it entered its phase
}

// pause is a generation that gets no new connection.
type pause struct {
	began   time.Time
	emptyAt time.Time // its queues were seen empty from then on; zero while not
	// closed: its drains' first unread check has begun. A stop chosen
	// after that waits for the generation's next pause, so one pause
	// lasts one round of checks, however many stops a long rolling
	// rollout feeds it meanwhile (its other workers serve in between).
	closed bool
}

// drainCheck is what an off-loop check found for the drains it was taken
// of: an unread check (groups holding requests not read yet) or a listen
// check (groups still waiting for connections on their sockets).
type drainCheck struct {
	unread bool
	pids   []int
	found  map[int]bool
	err    error
}

// drainState is the loop's record of the drains under way.
type drainState struct {
	drains     map[int]*drain // by pid
	pauses     map[int]*pause // by generation
	checks     chan drainCheck
	unreadBusy bool // an unread check is under way
	listenBusy bool // a listen check is under way
	nextUnread time.Time
	nextListen time.Time
	listenFrom time.Time // when the listen check under way began
	nextPoll   time.Time // while a generation is paused: its queues' next reading
	noUnread   bool      // the unread check failed once (said once): the settle alone decides
}

func newDrainState() drainState {
	return drainState{drains: map[int]*drain{}, pauses: map[int]*pause{}, checks: make(chan drainCheck, 2)}
}

// retire stops a worker the plan no longer wants: through a drain when it
// serves a steered generation, else at once.
func (m *master) retire(w *worker) {
	if w.state != wReady || !m.steeredGen(w.gen) {
		m.stop(w, w.cfg.StopSig, w.cfg.GracefulTimeout)
		return
	}
	w.setState(wStopping)
	m.dr.drains[w.proc.Pid] = &drain{pid: w.proc.Pid, gen: w.gen, w: w, phase: drainWaiting, since: m.env.now()}
}

// retireRemote is retire for one of the old master's workers, which the
// old master is asked to stop (stopRemote) when its drain allows.
func (m *master) retireRemote(pid int) {
	u := m.upgrade
	if !u.committed || u.stopSent[pid] || m.parent == nil || m.dr.drains[pid] != nil {
		return
	}
	v := u.remote[pid]
	if v.state != wReady || !m.steeredGen(v.gen) {
		m.stopRemote(pid)
		return
	}
	v.state = wStopping
	u.remote[pid] = v
	m.dr.drains[pid] = &drain{pid: pid, gen: v.gen, phase: drainWaiting, since: m.env.now()}
}

// signalDrain asks d's worker to stop, now.
func (m *master) signalDrain(d *drain) {
	if d.w != nil {
		m.stop(d.w, d.w.cfg.StopSig, d.w.cfg.GracefulTimeout)
		return
	}
	m.stopRemote(d.pid)
}

// drainGrace is how long d's pause may wait for its queue and unread
// requests: the worker's graceful_timeout.
func (m *master) drainGrace(d *drain) time.Duration {
	if d.w != nil {
		return d.w.cfg.GracefulTimeout
	}
	return m.cfg().GracefulTimeout
}

// standIns is how many serving workers the generations other than gen
// have while they get connections, and whether more could join them: a
// worker that is starting, or a ready one of a generation paused for
// another stop, which gets its weight back when that pause ends.
func (m *master) standIns(gen int) (serving int, growing bool) {
	seen := map[int]bool{gen: true}
	for _, st := range m.steer {
		for _, g := range st.gens {
			if !seen[g] {
				seen[g] = true
				serving += m.weight(g)
			}
		}
	}
	for _, w := range m.workers {
		if w.gen != gen && (w.state == wStarting || (w.state == wReady && m.dr.pauses[w.gen] != nil)) {
			growing = true
		}
	}
	return serving, growing
}

// advanceDrains moves every drain on as far as it can go now, and starts
// the off-loop checks that are due. It runs at the end of every turn,
// after the plan.
func (m *master) advanceDrains(now time.Time) {
	dr := &m.dr
	if len(dr.drains) == 0 && len(dr.pauses) == 0 {
		dr.nextPoll = time.Time{}
		return
	}
	pids := make([]int, 0, len(dr.drains))
	for pid := range dr.drains {
		pids = append(pids, pid)
	}
	slices.Sort(pids) // the same order every time, for the simulator
	// standIns by generation, read once a turn and again only after a
	// pause begins: a big rolling rollout has hundreds of stops waiting.
	type standIn struct {
		serving int
		growing bool
	}
	stand := map[int]standIn{}
	for _, pid := range pids {
		d := dr.drains[pid]
		if d.phase != drainWaiting {
			continue
		}
		if p := dr.pauses[d.gen]; p != nil && p.closed {
			continue // the next pause
		}
		if dr.pauses[d.gen] == nil {
			s, ok := stand[d.gen]
			if !ok {
				s.serving, s.growing = m.standIns(d.gen)
				stand[d.gen] = s
			}
			switch serving := s.serving; {
			case serving >= m.configs[m.target].Workers || (serving > 0 && !s.growing):
				dr.pauses[d.gen] = &pause{began: now}
				clear(stand) // the paused generation stands in for no other now
				m.log.Debug("steering: generation paused", zap.Int("generation", d.gen), zap.Int("others_serving", serving))
			case serving == 0 && !s.growing:
				// Nobody to stand in: stop it as if not steered.
				m.signalDrain(d)
				delete(dr.drains, pid)
				clear(stand) // its generation weighs one less
				continue
			default:
				continue // wait for the starting workers
			}
		}
		d.phase, d.since = drainPaused, now
	}
	for gen, p := range dr.pauses {
		if m.queued(gen) > 0 {
			p.emptyAt = time.Time{}
		} else if p.emptyAt.IsZero() {
			p.emptyAt = now
		}
	}
	var settled, signalled []int
	for _, pid := range pids {
		d := dr.drains[pid]
		if d == nil {
			continue
		}
		switch p := dr.pauses[d.gen]; {
		case d.phase == drainPaused && !now.Before(p.began.Add(m.drainGrace(d))):
			m.log.Warn("steering: the generation did not drain within the graceful timeout; stopping the worker anyway",
				zap.Int("pid", pid), zap.Int("generation", d.gen), zap.Int("queued", m.queued(d.gen)))
			m.signalDrain(d)
			d.phase, d.since = drainSignalled, now
			signalled = append(signalled, pid)
		case d.phase == drainPaused && !p.emptyAt.IsZero() && !now.Before(p.emptyAt.Add(steerSettle)):
			settled = append(settled, pid)
		case d.phase == drainSignalled && !now.Before(d.since.Add(unlistenCap)):
			delete(dr.drains, pid) // still listening: its generation waited long enough
		case d.phase == drainSignalled:
			signalled = append(signalled, pid)
		}
	}
	if len(settled) > 0 && !dr.unreadBusy && !now.Before(dr.nextUnread) {
		dr.unreadBusy = true
		for _, pid := range settled {
			dr.pauses[dr.drains[pid].gen].closed = true
		}
		m.check(true, settled)
	}
	if len(signalled) > 0 && !dr.listenBusy && !now.Before(dr.nextListen) {
		dr.listenBusy, dr.listenFrom, dr.nextListen = true, now, now.Add(unlistenPoll)
		m.check(false, signalled)
	}
	ended := m.endPauses(now)
	dr.nextPoll = time.Time{}
	if len(dr.pauses) > 0 || ended && len(dr.drains) > 0 { // a stop that waited for the pause's end starts its own
		dr.nextPoll = now.Add(drainPoll)
	}
	for _, p := range dr.pauses { // a settle ends on time, not at the next poll
		if end := p.emptyAt.Add(steerSettle); !p.emptyAt.IsZero() && end.After(now) && end.Before(dr.nextPoll) {
			dr.nextPoll = end
		}
	}
}

// check runs an unread or a listen check of pids off the loop; its result
// comes back on dr.checks (buffered: one of each kind at a time).
func (m *master) check(unread bool, pids []int) {
	if unread && m.dr.noUnread {
		m.dr.checks <- drainCheck{unread: true, pids: pids}
		return
	}
	watch := map[int][]uint64{}
	if !unread {
		for _, pid := range pids {
			watch[pid] = m.genInodes(m.dr.drains[pid].gen)
		}
	}
	e, out := m.env, m.dr.checks
	m.env.async(func() {
		c := drainCheck{unread: unread, pids: pids}
		if unread {
			c.found, c.err = e.unread(pids)
		} else {
			listening, _ := e.listening(watch) // a group that cannot be read counts as not listening
			c.found = map[int]bool{}
			for _, pid := range listening {
				c.found[pid] = true
			}
		}
		out <- c
	})
}

// onDrainCheck applies a check's result: a paused worker with no unread
// request, whose generation's queues are still empty, is signalled; a
// signalled worker no longer listening ends its part of the pause.
func (m *master) onDrainCheck(c drainCheck) {
	dr := &m.dr
	now := m.env.now()
	if !c.unread {
		dr.listenBusy = false
		// The next check waits at least as long as this one took: on a
		// busy machine, with many workers signalled, back-to-back scans
		// of /proc would take a core from the workers that serve.
		if next := now.Add(now.Sub(dr.listenFrom)); next.After(dr.nextListen) {
			dr.nextListen = next
		}
		for _, pid := range c.pids {
			if d := dr.drains[pid]; d != nil && d.phase == drainSignalled && !c.found[pid] {
				delete(dr.drains, pid)
			}
		}
		return
	}
	dr.unreadBusy = false
	if c.err != nil && !dr.noUnread {
		dr.noUnread = true
		m.log.Warn("steering: cannot see the requests workers have not read (sock_diag); a worker is stopped once its generation's queue has been empty for the settle alone", zap.Error(c.err))
	}
	retry := false
	for _, pid := range c.pids {
		d := dr.drains[pid]
		if d == nil || d.phase != drainPaused {
			continue
		}
		if p := dr.pauses[d.gen]; p == nil || c.found[pid] || m.queued(d.gen) > 0 {
			retry = true
			continue
		}
		m.signalDrain(d)
		d.phase, d.since = drainSignalled, now
	}
	if retry {
		dr.nextUnread = now.Add(unreadRetry)
	}
}

// endPauses ends the pause of every generation with no worker paused or
// signalled left: its serving workers get their weight back. It reports
// whether it ended any.
func (m *master) endPauses(now time.Time) (ended bool) {
	for gen, p := range m.dr.pauses {
		busy := false
		for _, d := range m.dr.drains {
			if d.gen == gen && d.phase != drainWaiting {
				busy = true
				break
			}
		}
		if !busy {
			delete(m.dr.pauses, gen)
			m.metrics.pauses.Observe(now.Sub(p.began).Seconds())
			m.log.Debug("steering: generation resumed", zap.Int("generation", gen), zap.Duration("paused", now.Sub(p.began)))
			ended = true
		}
	}
	return ended
}

// drainOf is where pid is in its drain, for status (WorkerInfo.Drain).
func (m *master) drainOf(pid int) string {
	d := m.dr.drains[pid]
	if d == nil {
		return ""
	}
	return [...]string{"serving", "paused", "signalled"}[d.phase]
}

// forgetDrain drops pid's drain: it exited.
func (m *master) forgetDrain(pid int) { delete(m.dr.drains, pid) }

// dropDrains forgets every drain and pause: the master stops everything.
func (m *master) dropDrains() {
	clear(m.dr.drains)
	clear(m.dr.pauses)
}
