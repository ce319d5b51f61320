package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/install"
	"github.com/smr-io/smr-cri/internal/nodestatus"
)

const statusHelp = `Usage: smr-cri status [-o table|json] [flags]

Prints this node's raft members, one row each: group, member ID, pod, role,
term, leader, commit and applied index, lag (committed entries the app has
not executed yet), open client sessions, replica state (serving, rebuilding,
broken), last snapshot index and the bytes of its log on disk. The leader's
member ID is marked with '*'; an unhealthy row ends with what is wrong.

It asks smr-cri serve on its status socket (root only, mode 0600, beside
the CRI socket). For every node of a cluster at once, use kubectl smr status.

Flags:
`

type statusOptions struct {
	Socket  string
	Output  string
	Timeout time.Duration
	Color   bool
}

func parseStatus(args []string, stdout io.Writer) (statusOptions, error) {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := statusOptions{}
	fs.StringVar(&o.Socket, "socket", nodestatus.DefaultSocket(install.SocketPath), "serve's status socket (serve --status-socket)")
	fs.StringVar(&o.Output, "o", "table", "output format: table or json")
	fs.StringVar(&o.Output, "output", "table", "output format: table or json")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Second, "how long to wait for serve's answer")
	fs.BoolVar(&o.Color, "color", false, "highlight unhealthy rows (red) and leaders (bold) with terminal colours")
	printHelp, err := parseFlags(fs, "status", statusHelp, args, stdout)
	if err != nil {
		return o, err
	}
	if o.Output != "table" && o.Output != "json" {
		return o, &exitcode.UsageError{Err: fmt.Errorf("status: -o %q: want table or json", o.Output), Usage: printHelp}
	}
	if o.Timeout <= 0 {
		return o, &exitcode.UsageError{Err: errors.New("status: --timeout must be positive"), Usage: printHelp}
	}
	return o, nil
}

func runStatus(ctx context.Context, args []string, stdout, _ io.Writer) error {
	o, err := parseStatus(args, stdout)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	r, err := nodestatus.Fetch(ctx, o.Socket)
	if err != nil {
		return err
	}
	if o.Output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	return nodestatus.WriteTable(stdout, r.Members, nodestatus.TableOptions{Color: o.Color})
}
