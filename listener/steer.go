package listener

import (
	"errors"
	"fmt"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Steering (DESIGN §8): every generation listens on its own SO_REUSEPORT
// socket, all in one reuseport group, and one classic BPF program on the
// group picks the socket of each new connection. The kernel runs it on the
// SYN and takes its return value as an index into the group, in the order
// the sockets joined it (a closed socket's index goes to the last one); an
// index past the group's size falls back to the kernel's own hash.

// skfNetOff is linux/filter.h's SKF_NET_OFF: loads relative to it read the
// network header. A reuseport program's packet starts after the TCP header.
const skfNetOff = -0x100000

// Steer is what the group's program does with a new connection.
type Steer struct {
	// Weights are by socket index: a new connection goes to index i with
	// probability Weights[i]/sum (a generation's ready workers, say). A
	// zero weight gets none. At least one weight must be non-zero.
	Weights []uint32
	// ProbePort, when non-zero, sends every connection from that TCP
	// source port to ProbeIndex, whatever the weights: a probe of a
	// generation that has no weight yet. The program finds the TCP header
	// after the IP header of the packet's own version (20 bytes of IPv4
	// without options, as a SYN from Linux has them, or 40 of IPv6), so a
	// dual-stack group takes probes of either family.
	ProbePort  uint16
	ProbeIndex uint32
}

// maxSteerSockets keeps the program well under the kernel's 4,096
// instructions (BPF_MAXINSNS): each socket costs two.
const maxSteerSockets = 1024

// Program is the steering program, ready for Attach.
func (s Steer) Program() ([]unix.SockFilter, error) {
	var sum uint64
	for _, w := range s.Weights {
		sum += uint64(w)
	}
	switch {
	case len(s.Weights) == 0 || sum == 0:
		return nil, errors.New("steer: no socket has a weight")
	case len(s.Weights) > maxSteerSockets:
		return nil, fmt.Errorf("steer: %d sockets, at most %d", len(s.Weights), maxSteerSockets)
	case sum > 1<<31:
		return nil, fmt.Errorf("steer: weights sum to %d, at most 2^31", sum)
	}
	var prog []bpf.Instruction
	if s.ProbePort != 0 {
		net := uint32(skfNetOff & 0xffffffff) // the negative offset as the kernel reads it
		prog = append(prog,
			bpf.LoadAbsolute{Off: net, Size: 1},                                       // the IP header's first byte
			bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 4},                        // its version
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 6, SkipTrue: 2},                      // IPv6: to its load
			bpf.LoadAbsolute{Off: net + 20, Size: 2},                                  // IPv4: the TCP source port
			bpf.Jump{Skip: 1},                                                         // IPv4: over the IPv6 load
			bpf.LoadAbsolute{Off: net + 40, Size: 2},                                  // IPv6: the TCP source port
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(s.ProbePort), SkipTrue: 1}, // not the probe: skip its return
			bpf.RetConstant{Val: s.ProbeIndex},
		)
	}
	// A = random % sum; the first socket whose cumulative weight exceeds
	// A takes the connection. Sockets of weight 0 never match.
	prog = append(prog,
		bpf.LoadExtension{Num: bpf.ExtRand},
		bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(sum)},
	)
	last := 0
	for i, w := range s.Weights {
		if w > 0 {
			last = i
		}
	}
	var cum uint32
	for i, w := range s.Weights[:last] {
		if w == 0 {
			continue
		}
		cum += w
		// if A < cum: return i (the RetConstant right after), else go on.
		prog = append(prog,
			bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: cum, SkipTrue: 1},
			bpf.RetConstant{Val: uint32(i)},
		)
	}
	prog = append(prog, bpf.RetConstant{Val: uint32(last)})
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("steer: %w", err)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// Attach sets prog as the program of the reuseport group that fd belongs
// to (any member will do; it replaces the one before).
func Attach(fd int, prog []unix.SockFilter) error {
	if len(prog) == 0 {
		return errors.New("steer: empty program")
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog); err != nil {
		return fmt.Errorf("steer: setsockopt SO_ATTACH_REUSEPORT_CBPF: %w", err)
	}
	return nil
}

// QueueLen is the number of connections in the accept queue of listening
// TCP socket fd, established and not yet accepted (TCP_INFO's tcpi_unacked,
// which on a listener counts the accept queue): a generation whose socket
// gets no new connections is drained once it reaches 0.
func QueueLen(fd int) (int, error) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, fmt.Errorf("getsockopt TCP_INFO: %w", err)
	}
	const tcpListen = 10 // include/net/tcp_states.h
	if ti.State != tcpListen {
		return 0, fmt.Errorf("fd %d is not a listening TCP socket (state %d)", fd, ti.State)
	}
	return int(ti.Unacked), nil
}
