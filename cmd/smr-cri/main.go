// Command smr-cri is the smr-cri node binary; see internal/cli for its
// subcommands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/smr-io/smr-cri/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.ExitCode(err))
}
