// Package cmdmain is the main function the commands under hack/ share (hack/cluster, hack/lab):
// each has a run(ctx, args, stdout, stderr) error that its tests call directly, and main only
// wires it to the process.
package cmdmain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// ErrQuiet fails a command without another message (it has printed what went wrong).
var ErrQuiet = errors.New("failed")

// Run is a command's body: its arguments (without the program name) and where output goes.
type Run func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Main runs run with os.Args[1:] and a context cancelled by SIGINT or SIGTERM (so cleanups
// run on ^C), then exits with the code Report gives.
func Main(name string, run Run) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(Report(name, err, os.Stderr))
}

// Report prints "name: err" to stderr unless err is nil or ErrQuiet, and returns the exit
// code: 0 for nil, 1 otherwise.
func Report(name string, err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if !errors.Is(err, ErrQuiet) {
		fmt.Fprintln(stderr, name+":", err)
	}
	return 1
}
