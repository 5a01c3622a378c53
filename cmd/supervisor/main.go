package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/supervisor-dev/supervisor/workers"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// The exec shim runs before anything else: it is on every worker's path.
	if len(os.Args) > 1 && os.Args[1] == workers.ShimArg {
		os.Exit(workers.RunShim(os.Args[2:]))
	}
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "supervisor: "+err.Error())
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	run := newRunCommand("run [flags] -- COMMAND [ARGS...]", "Run COMMAND as a pool of workers on shared sockets (the default command)")
	root := newRunCommand("supervisor [run] [flags] -- COMMAND [ARGS...]", "A zero-downtime process supervisor for any HTTP or TCP app")
	root.Use = "supervisor"
	root.SilenceErrors, root.SilenceUsage = true, true
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())
	})
	root.AddCommand(newCheckCommand())
	root.AddCommand(newReloadCommand(), newStatusCommand(), newScaleCommand(), newStopCommand(), newUpgradeCommand())
	root.AddCommand(run, newDemoCommand(), newExampleAppCommand(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), "supervisor", version) },
	})
	return root
}
