package workers

import (
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// embeddedShimImage is the embedded exec shim for this GOARCH
// (shim_embed_amd64.go); nil where there is none.
var embeddedShimImage []byte

// EmbeddedShim loads the embedded exec shim, a static executable of a few
// hundred bytes that does what RunShim does with no runtime to start
// (workers/shimsrc), and returns the Spec.Shim prefix that runs it:
// ["/proc/self/fd/N", ShimArg]. Call it once, at master start; it costs
// one memfd.
//
// The image goes into a memfd (close-on-exec, so no other child inherits
// it) that is sealed against writes, resizing and further seals, and that
// stays open for the life of the process: the prefix is valid as long as
// the process is. Anyone may execute it (the memfd's mode is 0777), so
// workers run with --user may too. Start hands the fd to each worker as
// its own fd (see Spec.Shim) and the shim closes it before it execs.
//
// It returns an error, and no fd stays open, when there is no embedded
// shim for this GOARCH, when the kernel refuses executable memfds
// (vm.memfd_noexec=2) or memfd_create, or when writing or sealing fails;
// the caller then falls back to the binary itself run as ShimArg.
func EmbeddedShim() ([]string, error) {
	if embeddedShimImage == nil {
		return nil, errors.New("no embedded exec shim for this architecture")
	}
	const flags = unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	fd, err := unix.MemfdCreate("supervisor-exec-shim", flags|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // before Linux 6.3: no MFD_EXEC, and every memfd may be executed
		fd, err = unix.MemfdCreate("supervisor-exec-shim", flags)
	}
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := writeShim(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	path := "/proc/self/fd/" + strconv.Itoa(fd)
	if err := unix.Access(path, unix.X_OK); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("the exec shim's memfd is not executable: %w", err)
	}
	return []string{path, ShimArg}, nil
}

func writeShim(fd int) error {
	for b := embeddedShimImage; len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err != nil {
			return fmt.Errorf("write the exec shim to its memfd: %w", err)
		}
		b = b[n:]
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("seal the exec shim's memfd: %w", err)
	}
	return nil
}
