// Command kubectl-smr is the kubectl plugin `kubectl smr` (put it on PATH):
// `kubectl smr status` shows every replicated member of the cluster. It is
// its own binary, not smr-cri under another name, so the node daemon does not
// carry kubectl's exec client (internal/kubectlsmr).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/kubectlsmr"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := kubectlsmr.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitcode.Of(err))
}
