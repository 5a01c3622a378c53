// Command supervisor is the command line: cobra commands that turn flags
// into a supervisor.Config, the hidden exec shim, and the built-in example
// app. It is the only place that calls os.Exit or builds the tableflip
// Upgrader.
package main
