package main

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// newLogger builds the master's logger on stderr: console on a terminal,
// json otherwise, unless format says which. An entry is one line: only
// DPanic and above carry a stack trace (zap's presets add one from Error
// or Warn up, which hung cobra's frames under an operator's mistake).
func newLogger(level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	if format == "" {
		format = "json"
		if _, err := unix.IoctlGetTermios(2, unix.TCGETS); err == nil {
			format = "console"
		}
	}
	var cfg zap.Config
	switch format {
	case "json":
		cfg = zap.NewProductionConfig()
		cfg.Sampling = nil
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	default:
		return nil, fmt.Errorf("--log-format %q: want json or console", format)
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.DisableCaller = true
	cfg.EncoderConfig.EncodeDuration = zapcore.StringDurationEncoder
	cfg.OutputPaths, cfg.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	cfg.DisableStacktrace = true
	return cfg.Build(zap.AddStacktrace(zapcore.DPanicLevel))
}
