// Command smr-cri is the smr-cri node binary; see internal/cli for its
// subcommands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/smr-io/smr-cri/internal/cli"
	"github.com/smr-io/smr-cri/internal/exitcode"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	go func() {
		// The first signal starts a graceful stop; a second one kills at once.
		<-ctx.Done()
		stop()
	}()
	err := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitcode.Of(err))
}
