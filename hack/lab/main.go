// Command lab drives the node lab by hand and from hack/*.sh scripts:
//
//	lab images OUT.tar [REF...]              build the lab images into a docker-archive
//	lab containerd-up [--owner PID] DIR      start a private containerd in DIR and import the images
//	lab containerd-down DIR                  remove its pods, stop it, clean up mounts, bridge, slot
//	lab sweep                                stop labs whose owner process is gone
//	lab critest-report DIRECT.json VIA.json  compare two critest (ginkgo JSON) reports; the last
//	                                         line is the summary; exit 1 if the passed sets differ
//
// containerd-up prints the socket path on stdout; progress goes to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/smr-io/smr-cri/hack/internal/cmdmain"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

func main() { cmdmain.Main("lab", run) }

const usage = `usage:
  lab images OUT.tar [REF...]
  lab containerd-up [--owner PID] DIR
  lab containerd-down DIR
  lab sweep
  lab critest-report DIRECT.json VIA.json`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "images":
		if len(args) < 2 {
			return errors.New(usage)
		}
		return nodelab.BuildImages(ctx, args[1], args[2:]...)
	case "containerd-up":
		fs := flag.NewFlagSet("containerd-up", flag.ContinueOnError)
		fs.SetOutput(stderr)
		owner := fs.Int("owner", 0, "pid whose death lets `lab sweep` stop this lab (0: never)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New(usage)
		}
		c, err := nodelab.StartContainerd(ctx, nodelab.ContainerdOptions{Dir: fs.Arg(0), Detach: true, Owner: *owner, Log: stderr})
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, c.Socket())
		return nil
	case "containerd-down":
		if len(args) != 2 {
			return errors.New(usage)
		}
		return nodelab.StopContainerd(ctx, args[1], stderr)
	case "sweep":
		return nodelab.SweepStale(ctx, stderr)
	case "critest-report":
		if len(args) != 3 {
			return errors.New(usage)
		}
		direct, err := nodelab.ParseCritestReportFile(args[1])
		if err != nil {
			return err
		}
		via, err := nodelab.ParseCritestReportFile(args[2])
		if err != nil {
			return err
		}
		if !nodelab.CompareCritest(stdout, direct, via) {
			return cmdmain.ErrQuiet // the DIFFERENCE lines are printed; the summary stays the last line
		}
		return nil
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}
