// Command cluster starts and stops the local multi-node Kubernetes cluster (test/lab/cluster):
//
//	go run ./hack/cluster up   [--dir DIR] [--nodes N]   clean leftovers, build what is missing, start, wait Ready
//	go run ./hack/cluster down [--dir DIR] [--keep-logs DIR]  stop everything and remove what it made
//	go run ./hack/cluster stop [--dir DIR]               stop everything but keep the state directory
//	go run ./hack/cluster start [--dir DIR] [--nodes N]  start a stopped (or crashed) cluster on its state
//	go run ./hack/cluster demo [--dir DIR]               up, then examples/redis replicated: write, read every replica, kill the leader
//	go run ./hack/cluster rss  [--dir DIR]               resident memory of the running cluster
//	go run ./hack/cluster env  [--dir DIR]               print KUBECONFIG=... and the kubectl path
//
// Needs root. The state directory defaults to $SMR_CLUSTER_DIR, else <repo>/_out/cluster.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/smr-io/smr-cri/hack/internal/cmdmain"
	"github.com/smr-io/smr-cri/test/lab/cluster"
)

func main() { cmdmain.Main("cluster", run) }

const usage = `usage: cluster up|down|stop|start|demo|rss|env [--dir DIR] [--nodes N] [--keep-logs DIR]`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "state directory (default $SMR_CLUSTER_DIR or <repo>/_out/cluster)")
	nodes := fs.Int("nodes", 3, "number of worker nodes (1..9)")
	keepLogs := fs.String("keep-logs", "", "down: copy the process logs here before removing the state directory")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q\n%s", fs.Args(), usage)
	}
	cfg := cluster.Config{Dir: *dir, Nodes: *nodes}
	switch args[0] {
	case "up", "start", "stop", "down", "demo":
		// An e2e run owns the cluster while it runs: wait for it rather than pull the cluster
		// from under its tests.
		release, err := cluster.LockSession(stderr)
		if err != nil {
			return err
		}
		defer release()
	}
	switch args[0] {
	case "up", "start":
		t0 := time.Now()
		boot := cluster.Up
		if args[0] == "start" {
			boot = cluster.Start
		}
		cl, err := boot(ctx, cfg, stdout)
		if err != nil {
			if cl != nil {
				fmt.Fprintf(stderr, "cluster up failed; logs in %s; `make cluster-down` removes it\n", cl.LogDir())
			}
			return err
		}
		fmt.Fprintf(stdout, "cluster %s in %.1fs\n  export KUBECONFIG=%s\n  alias kubectl=%s\n",
			args[0], time.Since(t0).Seconds(), cl.AdminKubeconfig(), cl.KubectlPath())
		return nil
	case "down":
		return cluster.Down(ctx, cfg, stdout, cluster.DownOptions{KeepLogsIn: *keepLogs})
	case "stop":
		return cluster.Stop(ctx, cfg, stdout)
	case "demo":
		return demo(ctx, cfg, stdout)
	case "rss":
		c, err := cfg.Resolve()
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, cluster.MeasureRSS(c))
		return nil
	case "env":
		c, err := cfg.Resolve()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "KUBECONFIG=%s\nKUBECTL=%s\n", c.AdminKubeconfig(), c.KubectlPath())
		return nil
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}
