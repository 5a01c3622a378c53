package workers

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/supervisor-dev/supervisor/listener"
)

// NotifyDirPrefix begins the name of every directory ListenPrivateNotify
// makes; the socket in it is NotifySocketName.
const (
	NotifyDirPrefix  = "supervisor-notify-"
	NotifySocketName = "notify"
)

// longestNotifyDir is the longest name os.MkdirTemp gives for
// NotifyDirPrefix+"*": its random part is a uint32 in decimal.
const longestNotifyDir = NotifyDirPrefix + "4294967295"

// ListenPrivateNotify binds a notify socket that only the workers' user
// (uid, and gid its group: the credential workers run with) and the
// master's own user can reach. An abstract socket has no permission check:
// any local user finds its name in /proc/net/unix and may send to it. A path
// socket is checked like a file: connecting or sending needs search
// permission on every directory above it and write permission on the
// socket itself.
//
// The socket is DIR/notify in a fresh directory DIR (NotifyDirPrefix and a
// random number), which Close removes with the socket:
//
//   - Workers of the master's own uid: DIR is 0700 (the socket 0600), under
//     $XDG_RUNTIME_DIR when it is set, else os.TempDir().
//   - Workers of another uid (a root master with --user; only root may
//     switch users): DIR is the master's, 0711 (anyone may pass through it,
//     nobody else may list it or create in it), under os.TempDir(), since
//     $XDG_RUNTIME_DIR is its own user's alone; the socket is chowned to
//     uid:gid, mode 0600. Root passes any permission check. Every directory
//     above DIR must be searchable by uid:gid, or the next candidate is
//     tried.
//
// A candidate whose socket path would pass the 107 bytes of sun_path, or
// where the directory cannot be made, gives way to the next one, /tmp last;
// when none is left the error names each candidate and why.
//
// Defence in depth: the socket also drops (and counts in Dropped) every
// datagram whose SCM_CREDENTIALS uid is neither uid nor the master's, for a
// socket reached all the same (the workers' user owns it and may chmod it).
// The check costs one comparison of credentials already parsed, and spares
// the master the rest of the work for such a datagram.
//
// Before it makes DIR, it removes the directories left in the same place by
// masters that died without Close (SIGKILL): a NotifyDirPrefix directory
// of this process's euid holding a socket that nobody is bound to any more
// (listener.ClearStale's probe). A live master's socket answers the probe
// and is left alone, whichever pid namespace it runs in.
func ListenPrivateNotify(uid, gid int) (*NotifySocket, error) {
	own := uid == os.Geteuid()
	var candidates []string
	if x := os.Getenv("XDG_RUNTIME_DIR"); own && filepath.IsAbs(x) {
		candidates = append(candidates, x)
	}
	candidates = append(candidates, os.TempDir(), "/tmp")
	var why []string
	tried := map[string]bool{}
	for _, base := range candidates {
		base = filepath.Clean(base)
		if tried[base] {
			continue
		}
		tried[base] = true
		n, err := listenPrivateIn(base, uid, gid, own)
		if err == nil {
			return n, nil
		}
		why = append(why, err.Error())
	}
	return nil, fmt.Errorf("no directory for the notify socket of uid %d: %s", uid, strings.Join(why, "; "))
}

// listenPrivateIn is ListenPrivateNotify in one base directory.
func listenPrivateIn(base string, uid, gid int, own bool) (*NotifySocket, error) {
	if l := len(filepath.Join(base, longestNotifyDir, NotifySocketName)); l > listener.MaxUnixPath {
		return nil, fmt.Errorf("%s: a socket path there takes up to %d bytes, over the %d of a unix socket address: set TMPDIR to a shorter directory", base, l, listener.MaxUnixPath)
	}
	if !own {
		if err := searchable(base, uid, gid); err != nil {
			return nil, err
		}
	}
	RemoveStaleNotifyDirs(base)
	dir, err := os.MkdirTemp(base, NotifyDirPrefix+"*") // 0700
	if err != nil {
		return nil, fmt.Errorf("%s: %w", base, err)
	}
	path := filepath.Join(dir, NotifySocketName)
	n, err := ListenNotify(path)
	if err == nil {
		n.dir = dir
		n.allow = []uint32{uint32(uid), uint32(os.Getuid()), uint32(os.Geteuid())}
		err = lockNotify(dir, path, uid, gid, own)
		if err != nil {
			n.Close() // removes path and dir
			return nil, err
		}
		return n, nil
	}
	os.Remove(dir)
	return nil, fmt.Errorf("%s: %w", base, err)
}

// lockNotify sets the modes and owners ListenPrivateNotify promises. The
// directory stays 0700 until the socket is locked, so nobody else can reach
// the socket in between.
func lockNotify(dir, path string, uid, gid int, own bool) error {
	if err := os.Chmod(path, 0o600); err != nil {
		return err
	}
	if own {
		return nil
	}
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("give the notify socket to uid %d: %w", uid, err)
	}
	return os.Chmod(dir, 0o711)
}

// searchable says whether a process of uid:gid (and no other group: workers
// run with no supplementary groups) may pass through dir and every directory
// above it, from their mode bits.
func searchable(dir string, uid, gid int) error {
	if uid == 0 {
		return nil
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	for p := real; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		var bit fs.FileMode = 0o001
		switch {
		case int(st.Uid) == uid:
			bit = 0o100
		case int(st.Gid) == gid:
			bit = 0o010
		}
		if !fi.IsDir() || fi.Mode().Perm()&bit == 0 {
			return fmt.Errorf("%s: workers of uid %d gid %d may not pass through %s (mode %04o, owner %d:%d): set TMPDIR to a directory every user may enter, such as /tmp",
				dir, uid, gid, p, fi.Mode().Perm(), st.Uid, st.Gid)
		}
		if p == "/" {
			return nil
		}
	}
}

// RemoveStaleNotifyDirs removes from base the notify directories of this
// euid whose socket nobody is bound to any more, as ListenPrivateNotify
// does before it makes one, and returns how many it removed. Anything else
// is left alone: another user's directory, one without a socket yet (a
// master between MkdirTemp and bind), one with anything more in it.
func RemoveStaleNotifyDirs(base string) int {
	entries, err := os.ReadDir(base)
	if err != nil {
		return 0
	}
	removed := 0
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), NotifyDirPrefix) {
			continue
		}
		dir := filepath.Join(base, e.Name())
		fi, err := os.Lstat(dir)
		if err != nil || int(fi.Sys().(*syscall.Stat_t).Uid) != os.Geteuid() {
			continue
		}
		sock := filepath.Join(dir, NotifySocketName)
		if si, err := os.Lstat(sock); err != nil || si.Mode().Type() != fs.ModeSocket {
			continue
		}
		if st, err := listener.ClearStale(sock); err != nil || st.Live {
			continue
		}
		if os.Remove(dir) == nil { // fails when something else is in it: then it is not only ours
			removed++
		}
	}
	return removed
}
