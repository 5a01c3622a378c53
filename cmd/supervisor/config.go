package main

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// addRunFlags binds a flag to cfg's field for every setting of
// supervisor.Settings that has one (all but command), each flag's default
// being cfg's value, and adds --config, read back with configPath.
func addRunFlags(f *pflag.FlagSet, cfg *supervisor.Config) {
	f.StringP("config", "c", "", "YAML config file: every flag below as a snake_case key; flags override it; re-read on every reload")
	for _, s := range supervisor.Settings() {
		name := s.Flag()
		if name == "" {
			continue
		}
		switch p := s.Field(cfg).(type) {
		case *string:
			f.StringVarP(p, name, s.Short, *p, s.Usage)
		case *int:
			f.IntVarP(p, name, s.Short, *p, s.Usage)
		case *time.Duration:
			f.DurationVarP(p, name, s.Short, *p, s.Usage)
		case *[]string:
			f.StringArrayVarP(p, name, s.Short, *p, s.Usage)
		default:
			panic(fmt.Sprintf("--%s: a setting of unsupported type %T", name, p))
		}
	}
}

// configPath returns the --config value of a flag set built by
// addRunFlags ("" when not given).
func configPath(fs *pflag.FlagSet) string {
	p, _ := fs.GetString("config")
	return p
}

// effectiveConfig layers the settings: supervisor.Defaults(), then every
// key the config file at path sets (skipped when path is ""), then every
// flag of fs the user set (fs.Changed), taken from flagCfg, the Config that
// addRunFlags bound to fs. A non-empty flagCfg.Command (the COMMAND after
// --) overrides the file's command. It reads the file on each call and has
// no other input or effect, so it serves at start and on every reload. The
// result is not validated: call Validate. The error is LoadFile's.
func effectiveConfig(fs *pflag.FlagSet, flagCfg supervisor.Config, path string) (supervisor.Config, error) {
	cfg := supervisor.Defaults()
	if path != "" {
		file, err := supervisor.LoadFile(path)
		if err != nil {
			return supervisor.Config{}, err
		}
		cfg = file.Apply(cfg)
	}
	flags := supervisor.Layer{Config: flagCfg, Set: map[string]bool{}}
	for _, s := range supervisor.Settings() {
		if name := s.Flag(); name != "" && fs.Changed(name) {
			flags.Set[s.Key] = true
		}
	}
	if len(flagCfg.Command) > 0 {
		flags.Set["command"] = true
	}
	return flags.Apply(cfg), nil
}
