// Command raftnode runs one standalone raftcore ordering process (tests,
// benchmarks). See package test/lab/raft/raftnode for the flags and HTTP API.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/smr-io/smr-cri/test/lab/raft/raftnode"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := raftnode.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "raftnode:", err)
		os.Exit(1)
	}
}
