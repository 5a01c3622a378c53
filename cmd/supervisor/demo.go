package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/supervisor-dev/supervisor/supervisor"
)

// newDemoCommand runs the master with the built-in example app: the
// README's first command.
func newDemoCommand() *cobra.Command {
	cfg := supervisor.Defaults()
	cfg.Bind, cfg.Workers = []string{"127.0.0.1:8080"}, 2
	c := &cobra.Command{
		Use:   "demo [flags]",
		Short: "Run 2 workers of the built-in example app on 127.0.0.1:8080",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own binary: %w", err)
			}
			cfg.Command = []string{exe, "example-app"}
			return run(func() (supervisor.Config, error) { return cfg, nil })
		},
	}
	addRunFlags(c.Flags(), &cfg)
	return c
}
