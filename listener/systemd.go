package listener

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// listenFDsStart is the first descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// maxListenFDs bounds LISTEN_FDS to something a process can hold.
const maxListenFDs = 1 << 16

// Systemd describes the sockets systemd passed to this process
// (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES). Zero value: none passed.
type Systemd struct {
	FDs   []int    // 3, 4, ...
	Names []string // same length as FDs; "unknown" where systemd gave none
}

// FromEnv reads systemd's variables through getenv for a process whose pid is
// pid; a LISTEN_PID that is not pid means nothing was passed to us.
//
// As sd_listen_fds(3): LISTEN_PID or LISTEN_FDS unset or empty, or a
// LISTEN_PID of another process, gives the zero Systemd and no error; a
// LISTEN_PID that is not a number, or a LISTEN_FDS that is not a count >= 1,
// is an error. The descriptors are 3 .. 3+LISTEN_FDS-1. LISTEN_FDNAMES is
// colon-separated; when it is unset or its count differs from LISTEN_FDS
// every name is "unknown", and an empty entry is "unknown". FromEnv neither
// touches the descriptors nor unsets the variables (the caller does).
func FromEnv(getenv func(string) string, pid int) (Systemd, error) {
	p := getenv("LISTEN_PID")
	if p == "" {
		return Systemd{}, nil
	}
	if n, err := strconv.Atoi(p); err != nil || !digits(p) || n <= 0 {
		return Systemd{}, fmt.Errorf("LISTEN_PID=%q is not a process id", p)
	} else if n != pid {
		return Systemd{}, nil
	}
	c := getenv("LISTEN_FDS")
	if c == "" {
		return Systemd{}, nil
	}
	n, err := strconv.Atoi(c)
	if err != nil || !digits(c) || n < 1 || n > maxListenFDs {
		return Systemd{}, fmt.Errorf("LISTEN_FDS=%q is not a count of descriptors 1-%d", c, maxListenFDs)
	}
	names := strings.Split(getenv("LISTEN_FDNAMES"), ":")
	if len(names) != n {
		names = make([]string, n)
	}
	sd := Systemd{FDs: make([]int, n), Names: names}
	for i := range n {
		sd.FDs[i] = listenFDsStart + i
		if sd.Names[i] == "" {
			sd.Names[i] = "unknown"
		}
	}
	return sd, nil
}

func (sd Systemd) name(i int) string {
	if i < len(sd.Names) && sd.Names[i] != "" {
		return sd.Names[i]
	}
	return "unknown"
}

// systemd opens a "systemd" or "systemd:NAME" address: from the store when
// the previous master kept it (keys key+"/0", key+"/1", ... and the names,
// colon-separated, in a memfd under key+"/names"), else from sd, skipping
// the sockets under fd-store names (fdStoreNamed), which only their own
// bind adopts.
func (o *opener) systemd(a Addr, key string) ([]*Socket, error) {
	bind := "--bind " + a.Raw
	if socks, err := o.systemdFromStore(key); socks != nil || err != nil {
		if err != nil {
			err = fmt.Errorf("%s: %w", bind, err)
		}
		return socks, err
	}
	if len(o.sd.FDs) == 0 {
		return nil, fmt.Errorf("%s: no sockets passed by systemd (LISTEN_FDS unset or LISTEN_PID is not this process): start under a .socket unit or systemd-socket-activate", bind)
	}
	var socks []*Socket
	var names []string
	for i, fd := range o.sd.FDs {
		name := o.sd.name(i)
		if fdStoreNamed(name) || a.Name != "" && name != a.Name {
			continue // the master's own, back from the fd store: its bind's
		}
		s, err := o.inherit(fd, name, a.Raw, fmt.Sprintf("%s: systemd socket %q (fd %d)", bind, name, fd))
		if err != nil {
			return socks, err
		}
		o.keep(key+"/"+strconv.Itoa(len(socks)), fd)
		socks, names = append(socks, s), append(names, name)
	}
	if len(socks) == 0 {
		passed := make([]string, len(o.sd.FDs))
		for i := range passed {
			passed[i] = o.sd.name(i)
		}
		if a.Name == "" {
			return nil, fmt.Errorf("%s: systemd passed no socket of a .socket unit, only the master's own from its fd store (%s): give the service a .socket unit, or bind addresses instead", bind, strings.Join(passed, ", "))
		}
		return nil, fmt.Errorf("%s: systemd passed no socket named %q (passed: %s)", bind, a.Name, strings.Join(passed, ", "))
	}
	if o.store != nil {
		o.adds = append(o.adds, func() error { return addNames(o.store, key+"/names", names) })
	}
	return socks, nil
}

func (o *opener) systemdFromStore(key string) ([]*Socket, error) {
	if o.store == nil {
		return nil, nil
	}
	f, err := o.store.File(key + "/names")
	if err != nil || f == nil {
		return nil, err
	}
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("read socket names kept by the previous master: %w", err)
	}
	var socks []*Socket
	for i, name := range strings.Split(string(b), ":") {
		fd, ok, err := o.fromStore(key + "/" + strconv.Itoa(i))
		if err == nil && !ok {
			err = fmt.Errorf("the previous master kept no socket %d (%q)", i, name)
		}
		if err != nil {
			return socks, err
		}
		socks = append(socks, &Socket{Name: name, Addr: sockname(fd), fd: fd})
	}
	return socks, nil
}

// addNames keeps names in the store as a memfd: a Store holds descriptors
// only, and the next master has no LISTEN_FDNAMES.
func addNames(store Store, key string, names []string) error {
	fd, err := unix.MemfdCreate("supervisor-listen-fdnames", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd for %s: %w", key, err)
	}
	f := os.NewFile(uintptr(fd), key)
	defer f.Close()
	if _, err := f.WriteString(strings.Join(names, ":")); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return store.AddFile(key, f)
}
