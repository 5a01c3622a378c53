package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The link between the two masters of an upgrade: a SOCK_SEQPACKET
// socketpair. The old master keeps one end; the other reaches the new master
// through tableflip's store under LinkName. A socketpair because nothing
// else can reach it (the notify and control sockets have addresses any
// local process of the right user finds), it carries both directions, keeps
// message boundaries, and its end of file says that the other master is
// gone, whichever way it died.

// LinkName is the name of the new master's end of the link in the
// upgrader's store.
const LinkName = "upgrade:link"

const (
	linkMaxMsg       = 4 << 20 // bytes; a status of thousands of workers fits
	linkWriteTimeout = 2 * time.Second
	linkHelloTimeout = 5 * time.Second
)

// linkMsg is one packet on the link: a JSON object with one field set.
type linkMsg struct {
	// Hello is the old master's first message: who it is and the last
	// generation it numbered, which the new master continues from.
	Hello *linkHello `json:"hello,omitempty"`
	// Status is the sender's status, sent whenever its pool changed: the
	// new master plans with the old one's workers, and either shows the
	// other in `supervisor status`.
	Status *Status `json:"status,omitempty"`
	// Stop (new to old, after the commit) asks the old master to stop
	// one of its workers gracefully, as a rollout would.
	Stop int `json:"stop,omitempty"`
	// StopAll (new to old) says the new master is stopping: the old one
	// stops its workers too.
	StopAll bool `json:"stop_all,omitempty"`
	// Committed (new to old) is the new master's pid, once it called
	// tableflip's Ready: it takes over. It arrives before any Stop.
	Committed int `json:"committed,omitempty"`
	// Fail (new to old, before the commit) is why the new master gives up.
	Fail string `json:"fail,omitempty"`
	// Result is written by the old master into the new master's end of the
	// link, so that it arrives after everything the new master sent: the
	// outcome of tableflip's Upgrade, "" when the new master committed.
	Result *string `json:"result,omitempty"`

	// fds came with the packet (SCM_RIGHTS, close-on-exec): a hello's
	// steered sockets. The receiver owns them.
	fds []int
}

type linkHello struct {
	Pid     int `json:"pid"`
	LastGen int `json:"last_generation"`
	// Steer is each steered bind's group (steer.go): the generation of
	// each socket by index. Socket 0 is the bind's own, which the new
	// master takes from the upgrade store; the others come with the hello
	// as fds, group after group, in index order.
	Steer []linkGroup `json:"steer,omitempty"`
}

// linkGroup is one steered bind's group in a hello.
type linkGroup struct {
	Key  string `json:"key"`
	Gens []int  `json:"generations"`
}

// linkMaxFDs is the most descriptors one packet carries (the kernel's
// SCM_MAX_FD).
const linkMaxFDs = 253

// link is this master's end. Messages read arrive on in, which is closed
// at end of file (or a read error).
type link struct {
	conn *net.UnixConn
	in   chan linkMsg
	done chan struct{} // closed when the reader returns
}

// newLink adopts f, this master's end, and starts reading it; f is closed.
func newLink(f *os.File) (*link, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("upgrade link: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("upgrade link: %T is not a unix socket", c)
	}
	_ = uc.SetWriteBuffer(linkMaxMsg)
	_ = uc.SetReadBuffer(linkMaxMsg)
	l := &link{conn: uc, in: make(chan linkMsg, 16), done: make(chan struct{})}
	go l.read()
	return l, nil
}

// read sends every message on in until end of file, then closes in.
func (l *link) read() {
	defer close(l.done)
	defer close(l.in)
	buf := make([]byte, linkMaxMsg)
	oob := make([]byte, unix.CmsgSpace(linkMaxFDs*4))
	for {
		n, oobn, _, _, err := l.conn.ReadMsgUnix(buf, oob) // close-on-exec fds (MSG_CMSG_CLOEXEC)
		if err != nil || n == 0 {
			return
		}
		fds := parseRights(oob[:oobn])
		var msg linkMsg
		if json.Unmarshal(buf[:n], &msg) != nil {
			closeFDs(fds)
			continue
		}
		msg.fds = fds
		l.in <- msg
	}
}

// parseRights returns the descriptors in a packet's control data.
func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, cm := range msgs {
		if got, err := unix.ParseUnixRights(&cm); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// send writes one message, with msg.fds (which stay the caller's); an
// error means the other master is gone or stuck.
func (l *link) send(msg linkMsg) error {
	if len(msg.fds) == 0 {
		return sendLink(l.conn, msg)
	}
	if len(msg.fds) > linkMaxFDs {
		return fmt.Errorf("%d sockets to hand over, at most %d in one message", len(msg.fds), linkMaxFDs)
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	_ = l.conn.SetWriteDeadline(time.Now().Add(linkWriteTimeout))
	_, _, err = l.conn.WriteMsgUnix(b, unix.UnixRights(msg.fds...), nil)
	return err
}

// close closes this end and waits for the reader. Messages not taken
// from in are dropped.
func (l *link) close() {
	l.conn.Close()
	for msg := range l.in {
		closeFDs(msg.fds)
	}
	<-l.done
}

// sendLink writes msg as one packet on c.
func sendLink(c interface {
	SetWriteDeadline(time.Time) error
	Write([]byte) (int, error)
}, msg linkMsg) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	_ = c.SetWriteDeadline(time.Now().Add(linkWriteTimeout))
	_, err = c.Write(b)
	return err
}

// FailUpgrade tells the old master, through f (this master's end of the
// link, from the upgrader's store), why this new master gives up before it
// could take over: for failures before Run, such as an invalid config.
func FailUpgrade(f *os.File, reason string) error {
	return sendLink(f, linkMsg{Fail: reason})
}

// readHello reads the old master's first message from the new master's
// end, before the loop starts.
func readHello(l *link) (linkHello, *Status, []int, error) {
	t := time.NewTimer(linkHelloTimeout)
	defer t.Stop()
	select {
	case msg, ok := <-l.in:
		if !ok {
			return linkHello{}, nil, nil, errors.New("upgrade link: the old master closed it before saying hello")
		}
		if msg.Hello == nil {
			closeFDs(msg.fds)
			return linkHello{}, nil, nil, errors.New("upgrade link: the old master's first message is not a hello")
		}
		return *msg.Hello, msg.Status, msg.fds, nil
	case <-t.C:
		return linkHello{}, nil, nil, fmt.Errorf("upgrade link: no hello from the old master within %s", linkHelloTimeout)
	}
}

// linkPair is the old master's side of the link while it may upgrade: its
// own end, read by the loop, and a copy of the new master's end, which the
// store hands to each new master and into which the old master writes the
// outcome of each attempt.
type linkPair struct {
	*link
	peer *os.File // the new master's end; nil once handed over for good
}

// newLinkPair makes the socketpair and puts the new master's end in store.
func newLinkPair(store Upgrader) (*linkPair, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("upgrade link: socketpair: %w", err)
	}
	peer := os.NewFile(uintptr(fds[1]), LinkName)
	if err := store.AddFile(LinkName, peer); err != nil {
		unix.Close(fds[0])
		peer.Close()
		return nil, fmt.Errorf("upgrade link: %w", err)
	}
	l, err := newLink(os.NewFile(uintptr(fds[0]), "upgrade link"))
	if err != nil {
		peer.Close()
		return nil, err
	}
	return &linkPair{link: l, peer: peer}, nil
}

// drainPeer discards what a new master that died left unread at its end,
// so the next one starts with this master's hello.
func (p *linkPair) drainPeer() {
	raw, err := p.peer.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, linkMaxMsg)
	_ = raw.Read(func(fd uintptr) bool {
		for {
			if _, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT); err != nil {
				return true
			}
		}
	})
}

// result writes an attempt's outcome into peer, the new master's end (a
// copy the loop may close meanwhile: then it is lost, as the loop no longer
// needs it): it reaches the loop after whatever that master sent.
func result(peer *os.File, err error) {
	r := ""
	if err != nil {
		r = err.Error()
		if r == "" {
			r = "unknown error"
		}
	}
	_ = sendLink(peer, linkMsg{Result: &r})
}

// handedOver closes this master's copy of the new master's end once the
// new master committed: from then on end of file on the link means the
// new master is gone.
func (p *linkPair) handedOver() {
	if p.peer != nil {
		p.peer.Close()
		p.peer = nil
	}
}
