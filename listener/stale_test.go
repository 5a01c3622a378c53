package listener

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// staleSocket leaves a socket file of network ("unix" or "unixgram") at
// path that nobody is bound to any more.
func staleSocket(t *testing.T, network, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, map[string]int{"unix": unix.SOCK_STREAM, "unixgram": unix.SOCK_DGRAM}[network], 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if network == "unix" {
		if err := unix.Listen(fd, 1); err != nil {
			t.Fatal(err)
		}
	}
}

func TestClearStale(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		setup   func(t *testing.T, path string)
		want    PathState // PID -1: this process
		wantErr string    // "": no error
		kept    bool      // the file is still there afterwards
	}{
		{name: "missing", setup: func(*testing.T, string) {}},
		{name: "stale stream", setup: func(t *testing.T, p string) { staleSocket(t, "unix", p) }},
		{name: "stale datagram", setup: func(t *testing.T, p string) { staleSocket(t, "unixgram", p) }},
		{name: "live stream", want: PathState{Live: true, PID: -1}, kept: true, setup: func(t *testing.T, p string) {
			ln, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
		}},
		{name: "live datagram", want: PathState{Live: true}, kept: true, setup: func(t *testing.T, p string) {
			c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}},
		{name: "regular file", wantErr: " exists and is not a socket: remove it or choose another path", kept: true,
			setup: func(t *testing.T, p string) {
				if err := os.WriteFile(p, []byte("keep me"), 0o600); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "directory", wantErr: " exists and is not a socket: remove it or choose another path", kept: true,
			setup: func(t *testing.T, p string) {
				if err := os.Mkdir(p, 0o700); err != nil {
					t.Fatal(err)
				}
			}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, string(rune('a'+i)))
			tc.setup(t, path)
			want := tc.want
			if want.PID == -1 {
				want.PID = os.Getpid()
			}
			got, err := ClearStale(path)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("ClearStale = %+v, %v; want %+v, nil", got, err, want)
			case tc.wantErr != "" && (err == nil || err.Error() != path+tc.wantErr || !errors.Is(err, errNotSocket)):
				t.Fatalf("ClearStale = %+v, %v; want the error %q", got, err, path+tc.wantErr)
			case tc.wantErr == "" && got != want:
				t.Errorf("ClearStale = %+v; want %+v", got, want)
			}
			if _, err := os.Lstat(path); (err == nil) != tc.kept {
				t.Errorf("after ClearStale: Lstat = %v; want the file kept: %v", err, tc.kept)
			}
		})
	}
}
