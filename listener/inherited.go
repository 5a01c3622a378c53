package listener

import (
	"fmt"
	"net"
	"os"
)

// Inherited is the app side of the contract: it returns net.Listeners for the
// fds 3.. a worker inherited, checking LISTEN_PID and LISTEN_FDS, in order,
// with their LISTEN_FDNAMES names. It unsets those variables.
//
// Nothing passed (LISTEN_PID unset or another process's) gives nil, nil,
// nil. Each descriptor must be a listening socket. It is wrapped with
// net.FileListener, which duplicates it (close-on-exec) and puts the shared
// open file description in non-blocking mode, as every Go listener is; the
// original descriptor is then closed. That flag change is fine in a worker,
// whose siblings' runtimes cope with either mode, but is exactly what the
// master must never do (DESIGN §5). On error every listener made so far is
// closed. The variables are unset in every case; call it once.
func Inherited() ([]net.Listener, []string, error) {
	defer func() {
		for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
			os.Unsetenv(k)
		}
	}()
	sd, err := FromEnv(os.Getenv, os.Getpid())
	if err != nil {
		return nil, nil, err
	}
	var lns []net.Listener
	for i, fd := range sd.FDs {
		ln, err := fileListener(fd, sd.Names[i])
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, nil, err
		}
		lns = append(lns, ln)
	}
	return lns, sd.Names, nil
}

func fileListener(fd int, name string) (net.Listener, error) {
	if err := listening(fd); err != nil {
		return nil, fmt.Errorf("inherited fd %d (%s) %w", fd, name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited fd %d (%s): %w", fd, name, err)
	}
	return ln, nil
}
