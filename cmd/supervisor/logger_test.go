package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// In both formats only DPanic and above carry a stack trace.
func TestLoggerStacktraceOnlyForPanics(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		log, err := newLogger("debug", format)
		if err != nil {
			t.Fatal(err)
		}
		core, logs := observer.New(zapcore.DebugLevel)
		log = log.WithOptions(zap.WrapCore(func(zapcore.Core) zapcore.Core { return core }))
		log.Warn("warn")
		log.Error("error")
		func() {
			defer func() { _ = recover() }() // DPanic panics in development mode (console)
			log.DPanic("dpanic")
		}()
		for _, e := range logs.All() {
			if got, want := e.Stack != "", e.Level >= zapcore.DPanicLevel; got != want {
				t.Errorf("%s: %s entry has a stack trace: %v, want %v", format, e.Level, got, want)
			}
		}
		if n := logs.Len(); n != 3 {
			t.Errorf("%s: %d entries, want 3", format, n)
		}
	}
}

// A bind that fails at start ends in one-line log entries and the final
// "supervisor: ..." line: no stack trace, no goroutine frames.
func TestStartErrorIsOneLine(t *testing.T) {
	busy := listenTCP(t)
	consoleLine := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\S+\t(\x1b\[\d+m)?(DEBUG|INFO|WARN|ERROR)(\x1b\[0m)?\t[^\t]+(\t\{.*\})?$`)
	frame := regexp.MustCompile(`\.go:\d+|goroutine \d+ \[`)
	for _, format := range []string{"json", "console"} {
		t.Run(format, func(t *testing.T) {
			out, code := runToEnd(t, command(t, "--bind", busy.Addr().String(), "--log-format", format, "--", "/bin/sleep", "60"))
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			last := lines[len(lines)-1]
			if code == 0 || !strings.HasPrefix(last, "supervisor: ") || !strings.Contains(last, "address already in use") {
				t.Fatalf("exit %d, last line %q; want non-zero and 'supervisor: ...address already in use...'", code, last)
			}
			errors := 0
			for _, line := range lines[:len(lines)-1] {
				if frame.MatchString(line) {
					t.Errorf("a stack frame: %q", line)
				}
				switch format {
				case "json":
					var entry map[string]any
					if err := json.Unmarshal([]byte(line), &entry); err != nil {
						t.Errorf("not a JSON log entry: %q", line)
					} else if _, ok := entry["stacktrace"]; ok {
						t.Errorf("a stacktrace key: %q", line)
					} else if entry["level"] == "error" {
						errors++
					}
				case "console":
					if !consoleLine.MatchString(line) {
						t.Errorf("not a console log entry: %q", line)
					} else if strings.Contains(line, "ERROR") {
						errors++
					}
				}
			}
			if errors == 0 {
				t.Errorf("no error entry before the last line; output:\n%s", out)
			}
		})
	}
}
