package listener

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// passedNamed returns the index in sd of the first passed socket called
// name, or -1.
func (o *opener) passedNamed(name string) int {
	for i := range o.sd.FDs {
		if o.sd.name(i) == name {
			return i
		}
	}
	return -1
}

// fromFDStore adopts passed socket i, which systemd kept in its fd store
// under a's name: as it is, after checking it is a listening socket.
func (o *opener) fromFDStore(a Addr, name string, i int) (*Socket, error) {
	fd := o.sd.FDs[i]
	s, err := o.inherit(fd, "", a.Raw, fmt.Sprintf("%s %s: socket %q from systemd's fd store (fd %d)", a.flag(), a.Raw, name, fd))
	if err != nil {
		return nil, fmt.Errorf("%w: stop the service and start it again to empty its fd store", err)
	}
	s.fdStored = true
	if a.Kind == KindUnix {
		s.Addr, s.unlink = a.Address, a.Address
	}
	return s, nil
}

// ReleaseUnclaimed lets go of the sockets systemd passed back from its fd
// store that no address of addrs will adopt, such as a bind removed from
// the config while no master ran. Call it once at start, before the first
// Open, with every address the master will open then (its binds and its
// own sockets), so that such a socket frees its port before a bind that
// needs it ("0.0.0.0:8080" replaced by ":8080") is made.
//
// A passed socket is the fd store's when its name is an fd-store name
// (fdStorePrefixes); the others are left alone. Of those, the first under
// the fd-store name of one of addrs is kept for Open to adopt. Each other
// one is released: when no address has its name, st is told to drop the
// name (FDSTOREREMOVE=1); then it is shut down (so every copy stops
// listening and its queued connections are refused, as a bind removed on
// reload; systemd also drops a socket that hangs up) and closed. rest is
// sd without the released sockets; released lists their names, in order.
// A nil st only closes. err joins the sends that failed; the sockets are
// released whatever it says.
func ReleaseUnclaimed(sd Systemd, addrs []Addr, st *FDStore) (rest Systemd, released []string, err error) {
	claims := map[string]bool{}
	for _, a := range addrs {
		if name := a.fdStoreName(); name != "" {
			claims[name] = true
		}
	}
	kept, removed := map[string]bool{}, map[string]bool{}
	for i, fd := range sd.FDs {
		name := sd.name(i)
		switch {
		case !fdStoreNamed(name):
		case claims[name] && !kept[name]:
			kept[name] = true
		default:
			if !claims[name] && !removed[name] {
				removed[name] = true
				err = errors.Join(err, st.remove(name, "unclaimed socket "+name))
			}
			_ = unix.Shutdown(fd, unix.SHUT_RDWR)
			_ = unix.Close(fd)
			released = append(released, name)
			continue
		}
		rest.FDs, rest.Names = append(rest.FDs, fd), append(rest.Names, name)
	}
	return rest, released, err
}

// Forget returns sd without the descriptors that socks adopted from
// systemd's fd store. Once adopted, a descriptor belongs to its Socket,
// which closes it when its bind is removed; a later Open (a reload adding
// the bind again) must bind afresh, not adopt a number the process may
// have reused for something else since.
func (sd Systemd) Forget(socks []*Socket) Systemd {
	adopted := map[int]bool{}
	for _, s := range socks {
		if s.fdStored {
			adopted[s.RawFD()] = true
		}
	}
	if len(adopted) == 0 {
		return sd
	}
	var rest Systemd
	for i, fd := range sd.FDs {
		if !adopted[fd] {
			rest.FDs, rest.Names = append(rest.FDs, fd), append(rest.Names, sd.name(i))
		}
	}
	return rest
}
