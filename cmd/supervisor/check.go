package main

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/supervisor-dev/supervisor/supervisor"
	"gopkg.in/yaml.v3"
)

// newCheckCommand builds `check`: load the settings exactly as `run` would
// (defaults < --config file < flags), validate them, and print the
// effective settings as YAML on stdout: every key, durations as strings, a
// file `--config` accepts. An invalid setting is the command's one-line
// error (non-zero exit); nothing is started or bound.
func newCheckCommand() *cobra.Command {
	cfg := supervisor.Defaults()
	c := &cobra.Command{
		Use:   "check [--config FILE] [flags] [-- COMMAND [ARGS...]]",
		Short: "Validate the config file and flags, print the effective settings",
		Args:  cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if c.ArgsLenAtDash() != 0 && len(args) > 0 {
				return fmt.Errorf("unknown argument %q: put the app to run after --, e.g. supervisor check --config FILE -- %s", args[0], strings.Join(args, " "))
			}
			flagCfg := cfg
			flagCfg.Command = args
			eff, err := effectiveConfig(c.Flags(), flagCfg, configPath(c.Flags()))
			if err != nil {
				return err
			}
			res, err := eff.Validate()
			if err != nil {
				return err
			}
			out, err := settingsYAML(res)
			if err != nil {
				return err
			}
			_, err = c.OutOrStdout().Write(out)
			return err
		},
	}
	addRunFlags(c.Flags(), &cfg)
	return c
}

// settingsYAML renders r's Config as YAML (Config.MarshalYAML: every key
// in the order of supervisor.Settings), with the resolved surge as a
// comment.
func settingsYAML(r *supervisor.Resolved) ([]byte, error) {
	var doc yaml.Node
	if err := doc.Encode(r.Config); err != nil {
		return nil, fmt.Errorf("print settings: %w", err)
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == "max_surge" {
			doc.Content[i+1].LineComment = fmt.Sprintf("= %d with workers: %d", r.Surge, r.Workers)
		}
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("print settings: %w", err)
	}
	return out.Bytes(), enc.Close()
}
