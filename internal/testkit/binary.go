package testkit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// public is the copy PublicBinary makes, once per process.
var public struct {
	sync.Mutex
	dir, path string // "" until made, and after removal
	err       error  // why there is no copy: every caller fails
}

// PublicBinary returns the path of a copy of the test binary that any user
// can run (mode 0755, in a 0755 temporary directory of its own), for a test
// that runs it as another user: go test builds the binary in a directory
// only its user may enter. The copy is made at the first call and shared by
// every later one, parallel tests included; Main removes it when the tests
// end. A test must not write into its directory. It fails t when the copy
// cannot be made.
func PublicBinary(t testing.TB) string {
	t.Helper()
	public.Lock()
	defer public.Unlock()
	if public.path == "" && public.err == nil {
		public.dir, public.path, public.err = copyTestBinary()
	}
	if public.err != nil {
		t.Fatalf("testkit: a copy of the test binary other users can run: %v", public.err)
	}
	return public.path
}

func copyTestBinary() (dir, path string, err error) {
	exe, err := os.Executable()
	if err != nil {
		return "", "", err
	}
	dir, err = os.MkdirTemp("", "testkit-bin-")
	if err != nil {
		return "", "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", "", err
	}
	path = filepath.Join(dir, filepath.Base(exe))
	if err := copyFile(exe, path); err != nil {
		return "", "", fmt.Errorf("copy %s: %w", exe, err)
	}
	return dir, path, nil
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// removePublicBinary removes PublicBinary's copy, if one was made.
func removePublicBinary() {
	public.Lock()
	defer public.Unlock()
	if public.dir != "" {
		os.RemoveAll(public.dir)
	}
	public.dir, public.path = "", ""
	public.err = errors.New("the tests have ended")
}
