package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Each bad input: a non-zero exit and one last line that names the problem
// and the fix.
func TestBadInput(t *testing.T) {
	busy := listenTCP(t)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "app")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	app := []string{"--", "/bin/sleep", "60"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unparseable bind", append([]string{"--bind", "localhost"}, app...), `bad --bind "localhost"`},
		{"duplicate bind", append([]string{"--bind", "127.0.0.1:8080", "--bind", "127.0.0.1:8080"}, app...), "duplicate"},
		{"address in use", append([]string{"--bind", busy.Addr().String()}, app...), "address already in use"},
		{"missing command", []string{"--bind", "127.0.0.1:0"}, "no command"},
		{"command without --", []string{"--bind", "127.0.0.1:0", "/bin/sleep"}, "put the app to run after --"},
		{"command not found", []string{"--bind", "127.0.0.1:0", "--", "no-such-app-xyz"}, `command "no-such-app-xyz" not found in PATH`},
		{"command not executable", []string{"--bind", "127.0.0.1:0", "--", notExec}, "not executable"},
		{"zero workers", append([]string{"--bind", "127.0.0.1:0", "--workers", "0"}, app...), "--workers 0: must be at least 1"},
		{"negative workers", append([]string{"--bind", "127.0.0.1:0", "--workers", "-3"}, app...), "--workers -3: must be at least 1"},
		{"unknown user", append([]string{"--bind", "127.0.0.1:0", "--user", "no-such-user-xyz"}, app...), "no such user"},
		{"unknown group", append([]string{"--bind", "127.0.0.1:0", "--group", "no-such-group-xyz"}, app...), "no such group"},
		{"unknown signal", append([]string{"--bind", "127.0.0.1:0", "--stop-signal", "BOGUS"}, app...), "unknown signal"},
		{"unknown flag", append([]string{"--bind", "127.0.0.1:0", "--no-such-flag"}, app...), "unknown flag: --no-such-flag"},
		{"bad duration", append([]string{"--bind", "127.0.0.1:0", "--graceful-timeout", "soon"}, app...), "graceful-timeout"},
		{"worker exits before ready", []string{"--bind", "127.0.0.1:0", "--", "/bin/sh", "-c", "echo booting >&2; exit 3"}, "exited with status 3 before it was ready: /bin/sh -c"},
		{"worker never ready", []string{"--bind", "127.0.0.1:0", "--ready-timeout", "500ms", "--", "/bin/sleep", "60"}, "was not ready within 500ms"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, code := runToEnd(t, command(t, tc.args...))
			if code == 0 {
				t.Fatalf("exit code 0, want non-zero; output:\n%s", out)
			}
			last := lastLine(out)
			if !strings.HasPrefix(last, "supervisor: ") || !strings.Contains(last, tc.want) {
				t.Fatalf("last line %q, want 'supervisor: ...%s...'; output:\n%s", last, tc.want, out)
			}
		})
	}
}

// Binding a port below 1024 as an unprivileged user is refused clearly.
func TestBadInputPermissionDenied(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the master as nobody")
	}
	cmd := command(t, "--bind", "127.0.0.1:80", "--", "/bin/sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, code := runToEnd(t, cmd)
	if code == 0 || !strings.Contains(lastLine(out), "permission denied") {
		t.Fatalf("exit %d, output:\n%s\nwant a non-zero exit and 'permission denied'", code, out)
	}
}

// runToEnd runs cmd to its end (killing it after 30 s) and returns its
// output (stdout and stderr together) and exit code.
func runToEnd(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	var out syncBuffer
	code := runWith(t, cmd, &out, &out)
	return out.String(), code
}

// runWith runs cmd to its end with its stdout and stderr written to those
// buffers, killing it after 30 s, and returns its exit code.
func runWith(t *testing.T, cmd *exec.Cmd, stdout, stderr *syncBuffer) int {
	t.Helper()
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("supervisor did not exit within 30s; stderr:\n%s", stderr.String())
	}
	return 0
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}
