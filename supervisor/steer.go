package supervisor

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/supervisor-dev/supervisor/listener"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
)

// Steered generations (DESIGN §8). With steer: auto, every TCP bind the
// master opens with SO_REUSEPORT is a reuseport group: socket 0 is the
// bind's own (kept in the upgrade store and systemd's fd store), and each
// generation's workers get a socket of the group to themselves, so the
// kernel queues a generation's connections apart from the others'. A
// classic BPF program on the group picks the socket of each new connection:
// generations get new connections in proportion to their ready workers,
// and a generation whose worker is about to be asked to stop gets none
// until nothing waits for it (drain.go).
//
// A socket is never closed while its generation has workers. A generation
// that is gone leaves its socket idle (no weight, empty queue) for the next
// generation to take. A group has two sockets from the start, so that
// reloads take turns on them and open nothing; more only while more
// generations live at once, and idle ones at the end of the group are
// closed again: the only removal that renumbers nobody. So the master
// always knows the index of every socket, which is what the program is
// written in.

// steerGroup is what the master uses of a listener.Group; the simulator
// has a fake.
type steerGroup interface {
	Len() int
	Socket(i int) *listener.Socket
	Add() (*listener.Socket, int, error)
	Remove(i int) error
	Attach(listener.Steer) error
	QueueLen(i int) (int, error)
	Close()
}

// steered is one bind that steers.
type steered struct {
	key      string
	group    steerGroup
	gens     []int    // by socket index: the generation whose workers have it; 0: idle
	attached []uint32 // the weights attached last; nil: none since this master took charge
	// attachedProbe is the canary probe's source port in the program
	// attached last; 0: none.
	attachedProbe uint16
	next          []uint32 // applyWeights' scratch: the weights as they are now
}

// inherited is a steered bind's group as the master before an upgrade had
// it (its hello): the generation of each socket and the sockets after
// socket 0, which comes through the upgrade store.
type inherited struct {
	gens  []int
	socks []*listener.Socket
}

// newGroup is the real env.group.
func newGroup(first *listener.Socket, more []*listener.Socket) (steerGroup, error) {
	g, err := listener.NewGroup(first, more...)
	if err != nil {
		return nil, err
	}
	return g, nil
}

// steerBind makes the bind key, whose sockets the master just opened,
// steer when it can: steering is on (or the master before an upgrade
// steered it), and the bind is one plain-TCP socket with SO_REUSEPORT.
// Any other bind is shared by every generation, said once.
func (m *master) steerBind(key string, ss []*listener.Socket) {
	inh, ok := m.inherit[key]
	delete(m.inherit, key)
	if (!m.steerOn && !ok) || m.env.group == nil { // nil: a simulated master without sockets
		return
	}
	for _, s := range inh.socks {
		s.Name = ss[0].Name
	}
	var g steerGroup
	var err error
	if len(ss) == 1 {
		g, err = m.env.group(ss[0], inh.socks)
	} else {
		err = errSeveral
	}
	if err != nil {
		for _, s := range inh.socks {
			s.Close()
		}
		m.log.Info("bind shared by every generation: not steered", zap.String("bind", key), zap.String("why", err.Error()))
		return
	}
	st := &steered{key: key, group: g, gens: make([]int, g.Len())}
	copy(st.gens, inh.gens)
	for i := range g.Len() {
		m.noteInode(g.Socket(i))
	}
	for g.Len() < steerSockets {
		s, _, err := g.Add()
		if err != nil {
			g.Close()
			m.log.Info("bind shared by every generation: not steered", zap.String("bind", key), zap.String("why", err.Error()))
			return
		}
		st.gens = append(st.gens, 0)
		m.noteInode(s)
	}
	m.steer[key] = st
	if ok && !m.steerOn {
		m.log.Info("bind steered as the master before the upgrade did it, although steer is off: restart the service to stop steering", zap.String("bind", key))
	}
}

// steerSockets is how many sockets a group keeps at least: the one in
// force and one for the next generation.
const steerSockets = 2

// errSeveral: a "systemd" bind that stands for several sockets.
var errSeveral = errors.New("the bind stands for several sockets")

// noteInode records a socket's inode, by which listen readiness and the
// drain's listen check know it in a worker's fds.
func (m *master) noteInode(s *listener.Socket) {
	if ino, err := workers.SocketInode(s.RawFD()); err == nil {
		m.inodes[s.RawFD()] = ino
	}
}

// slotFor returns the socket of st that generation gen's workers get:
// the one gen has already, else an idle one (the first that holds
// connections, which its workers then serve: the bind's own socket
// adopted from systemd's fd store after a crash, with what queued while
// no master ran; else the first), else a new one added to the group.
func (m *master) slotFor(st *steered, gen int) (*listener.Socket, error) {
	if i := slices.Index(st.gens, gen); i >= 0 {
		return st.group.Socket(i), nil
	}
	idle := -1
	for i, g := range st.gens {
		if g != 0 {
			continue
		}
		if n, _ := st.group.QueueLen(i); n > 0 {
			idle = i
			break
		}
		if idle < 0 {
			idle = i
		}
	}
	if idle >= 0 {
		st.gens[idle] = gen
		return st.group.Socket(idle), nil
	}
	s, i, err := st.group.Add()
	if err != nil {
		return nil, err
	}
	st.gens = append(st.gens, gen)
	m.noteInode(s)
	m.log.Debug("steering: a socket added to the group", zap.String("bind", st.key), zap.Int("index", i), zap.Int("generation", gen))
	return s, nil
}

// socketsOf returns the sockets of generation gen's workers, in bind
// order: a steered bind's socket of gen, or the bind's own sockets.
func (m *master) socketsOf(gen int, addrs []listener.Addr) ([]*listener.Socket, error) {
	var socks []*listener.Socket
	for _, a := range addrs {
		key := a.Key()
		st := m.steer[key]
		if st == nil {
			socks = append(socks, m.sockets[key]...)
			continue
		}
		s, err := m.slotFor(st, gen)
		if err != nil {
			return nil, err
		}
		socks = append(socks, s)
	}
	return socks, nil
}

// ownsSteering reports whether this master writes the groups' programs:
// not an old master once its new master committed, nor a new master
// before its commit (while the old master's old program still steers).
func (m *master) ownsSteering() bool {
	u := m.upgrade
	switch {
	case m.phase == handingOver:
		return false
	case u == nil:
		return true
	case u.old:
		return !u.committed
	}
	return u.committed || u.peerGone
}

// releaseSockets marks idle the sockets of generations no longer live and
// closes the idle ones at the end of each group beyond steerSockets (no
// socket is renumbered). An idle socket that still holds connections
// (their generation's workers all died with them queued) is closed
// wherever it is but at index 0, so that they are reset (or moved by the
// kernel to a socket that serves, with tcp_migrate_req) rather than left
// waiting for nobody; the last socket takes its index, which the next
// program follows. Nothing is closed during an upgrade: the other master
// knows the group by its numbering.
func (m *master) releaseSockets(live map[int]bool) {
	for _, st := range m.steer {
		for i, g := range st.gens {
			if g != 0 && !live[g] {
				st.gens[i] = 0
			}
		}
		if m.upgrade != nil {
			continue
		}
		for i := len(st.gens) - 1; i > 0; i-- {
			if st.gens[i] != 0 {
				continue
			}
			n, _ := st.group.QueueLen(i)
			if n == 0 && (i < len(st.gens)-1 || len(st.gens) <= steerSockets) {
				continue // idle: kept for the next generation
			}
			if n > 0 {
				m.log.Warn("steering: closing the socket of a generation gone with connections in its queue", zap.String("bind", st.key), zap.Int("index", i), zap.Int("queued", n))
			}
			s := st.group.Socket(i)
			delete(m.inodes, s.RawFD())
			if err := st.group.Remove(i); err != nil {
				m.log.Warn("steering: closing a socket", zap.String("bind", st.key), zap.Error(err))
			}
			last := len(st.gens) - 1
			st.gens[i] = st.gens[last]
			st.gens = st.gens[:last]
		}
	}
}

// unsteer closes the sockets a removed bind added to its group; the bind's
// own socket is the caller's.
func (m *master) unsteer(key string) {
	st := m.steer[key]
	if st == nil {
		return
	}
	for i := 1; i < st.group.Len(); i++ {
		s := st.group.Socket(i)
		delete(m.inodes, s.RawFD())
		_ = s.Retire()
	}
	delete(m.steer, key)
}

// applyWeights attaches to each group the program of the weights as they
// are now, when they changed: each generation's socket weighs its serving
// workers (weight). With no weight anywhere (a boot, a pool that crashed),
// new connections queue at the target generation's socket for the workers
// it is starting.
func (m *master) applyWeights() {
	if len(m.steer) == 0 || !m.ownsSteering() {
		return
	}
	for _, st := range m.steer {
		ws := append(st.next[:0], make([]uint32, len(st.gens))...)
		st.next = ws
		var sum uint32
		for i, g := range st.gens {
			ws[i] = uint32(m.weight(g))
			sum += ws[i]
		}
		if sum == 0 {
			i := slices.Index(st.gens, m.target)
			if i < 0 {
				i = slices.Index(st.gens, m.stable)
			}
			if i < 0 {
				continue
			}
			ws[i] = 1
		}
		s := listener.Steer{Weights: ws}
		if p := m.probe; p != nil && p.key == st.key && p.port != 0 {
			if i := slices.Index(st.gens, p.w.gen); i >= 0 {
				s.ProbePort, s.ProbeIndex = p.port, uint32(i)
			}
		}
		if slices.Equal(ws, st.attached) && s.ProbePort == st.attachedProbe {
			continue
		}
		if err := st.group.Attach(s); err != nil {
			m.log.Warn("steering: attaching the program", zap.String("bind", st.key), zap.Error(err))
			continue
		}
		st.attached, st.attachedProbe = slices.Clone(ws), s.ProbePort
		m.log.Debug("steering", zap.String("bind", st.key), zap.String("weights", weightsString(st.gens, ws)))
	}
}

// weight is how many serving workers generation gen has, this master's
// and, in an upgrade, the old master's: ready ones, and those chosen to
// stop whose generation is not paused yet; 0 while it is paused.
func (m *master) weight(gen int) int {
	if gen == 0 || m.dr.pauses[gen] != nil {
		return 0
	}
	n := 0
	for _, w := range m.workers {
		if w.gen == gen && w.state == wReady {
			n++
		}
	}
	if u := m.upgrade; u != nil && !u.old {
		for _, v := range u.remote {
			if v.gen == gen && v.state == wReady {
				n++
			}
		}
	}
	for _, d := range m.dr.drains {
		if d.gen == gen && d.phase == drainWaiting {
			n++
		}
	}
	return n
}

// steeredGen reports whether generation gen has a socket of its own in
// some group.
func (m *master) steeredGen(gen int) bool {
	for _, st := range m.steer {
		if slices.Contains(st.gens, gen) {
			return true
		}
	}
	return false
}

// queued is the number of connections waiting in generation gen's own
// sockets; an error reads as none.
func (m *master) queued(gen int) int {
	n := 0
	for _, st := range m.steer {
		if i := slices.Index(st.gens, gen); i >= 0 {
			q, _ := st.group.QueueLen(i)
			n += q
		}
	}
	return n
}

// genInodes are the inodes of generation gen's own sockets.
func (m *master) genInodes(gen int) []uint64 {
	var inos []uint64
	for _, st := range m.steer {
		if i := slices.Index(st.gens, gen); i >= 0 {
			if ino := m.inodes[st.group.Socket(i).RawFD()]; ino != 0 {
				inos = append(inos, ino)
			}
		}
	}
	return inos
}

// steerStatus is the groups as status shows them, by bind.
func (m *master) steerStatus() []SteerGroup {
	if len(m.steer) == 0 {
		return nil
	}
	var out []SteerGroup
	for _, key := range slices.Sorted(maps.Keys(m.steer)) {
		st := m.steer[key]
		g := SteerGroup{Bind: key}
		for i, gen := range st.gens {
			s := SteerSocket{Inode: m.inodes[st.group.Socket(i).RawFD()], Generation: gen, Paused: gen != 0 && m.dr.pauses[gen] != nil}
			if i < len(st.attached) {
				s.Weight = st.attached[i]
			}
			s.Queued, _ = st.group.QueueLen(i)
			g.Sockets = append(g.Sockets, s)
		}
		out = append(out, g)
	}
	return out
}

// steerAgain makes the next turn attach every group's program: this master
// takes the groups back from a new master that died after its commit, and
// whatever that one attached last is not this master's.
func (m *master) steerAgain() {
	for _, st := range m.steer {
		st.attached, st.attachedProbe = nil, 0
	}
}

// dropInherited closes the sockets of groups an old master handed over
// whose bind this master's config no longer has: kept, they would queue
// connections for nobody once the old master is gone.
func (m *master) dropInherited() {
	for key, inh := range m.inherit {
		for _, s := range inh.socks {
			s.Close()
		}
		delete(m.inherit, key)
	}
}

// closeSteering closes every socket the groups added, at the master's end.
func (m *master) closeSteering() {
	for _, st := range m.steer {
		st.group.Close()
	}
	m.dropInherited()
}

// migrateReqPath is the sysctl that makes the kernel move the connections
// queued in a closing listener to another socket of its group.
const migrateReqPath = "/proc/sys/net/ipv4/tcp_migrate_req"

// adviseMigrate says once, at start, when steering could use
// net.ipv4.tcp_migrate_req and it is 0. The master never sets it.
func (m *master) adviseMigrate() {
	if len(m.steer) == 0 {
		return
	}
	b, err := os.ReadFile(migrateReqPath)
	if err != nil || strings.TrimSpace(string(b)) != "0" {
		return
	}
	m.log.Info("net.ipv4.tcp_migrate_req is 0: connections still queued in a generation's socket when it closes (a master that dies, or its workers all crashed) are reset; with 1 the kernel moves them to another socket of the bind: sysctl -w net.ipv4.tcp_migrate_req=1")
}

// weightsString is "gen:weight" per socket, for the debug log.
func weightsString(gens []int, ws []uint32) string {
	var b strings.Builder
	for i := range gens {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(gens[i]) + ":" + strconv.Itoa(int(ws[i])))
	}
	return b.String()
}

// steerHello is what a new master needs of the groups (linkHello.Steer):
// each group's generations by index, and the fds of every socket but the
// bind's own, group after group.
func (m *master) steerHello() ([]linkGroup, []int) {
	keys := slices.Sorted(maps.Keys(m.steer))
	var groups []linkGroup
	var fds []int
	for _, key := range keys {
		st := m.steer[key]
		groups = append(groups, linkGroup{Key: key, Gens: slices.Clone(st.gens)})
		for i := 1; i < st.group.Len(); i++ {
			fds = append(fds, st.group.Socket(i).RawFD())
		}
	}
	return groups, fds
}

// adoptGroups keeps the groups of an old master's hello, with their
// sockets (fds, which it owns), until socketsFor opens their binds. The
// old master's generations stay in the numbering as they are: its
// workers keep their sockets.
func (m *master) adoptGroups(groups []linkGroup, fds []int) error {
	need := 0
	for _, g := range groups {
		need += max(len(g.Gens)-1, 0)
	}
	if need != len(fds) {
		closeFDs(fds)
		return fmt.Errorf("upgrade link: the old master's hello names %d steered sockets and carries %d", need, len(fds))
	}
	for _, g := range groups {
		inh := inherited{gens: g.Gens}
		for range max(len(g.Gens)-1, 0) {
			s, err := listener.Adopt(fds[0], g.Key)
			fds = fds[1:]
			if err != nil {
				closeFDs(fds)
				for _, s := range inh.socks {
					s.Close()
				}
				return fmt.Errorf("upgrade link: %w", err)
			}
			inh.socks = append(inh.socks, s)
		}
		m.inherit[g.Key] = inh
	}
	return nil
}
