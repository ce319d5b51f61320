// Package cli implements the smr-cri command line: Run dispatches a
// subcommand and is kept apart from main so it can be tested.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"

	"github.com/smr-io/smr-cri/internal/exitcode"
)

// version is set at build time with -ldflags "-X github.com/smr-io/smr-cri/internal/cli.version=...".
var version = "dev"

func usageErrorf(format string, args ...any) error {
	return &exitcode.UsageError{Err: fmt.Errorf(format, args...)}
}

type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"serve":     {"run the CRI proxy between kubelet and the container runtime", runServe},
		"install":   {"install smr-cri on this node and point kubelet at it", runInstall},
		"uninstall": {"restore kubelet's runtime and remove smr-cri from this node", runUninstall},
		"status":    {"print this node's raft members: role, log positions, replica state, log size", runStatus},
		"trace":     {"print (and with --follow, stream) this node's ordering traces", runTrace},
		"pki":       {"create the cluster CA or issue a member certificate (mutual TLS between ordering nodes)", runPKI},
		"version":   {"print the version", runVersion},
		"help":      {"show this help", runHelp},
	}
}

// Run runs the smr-cri command line args (without the program name). Errors
// are printed to stderr by Run; the caller only maps them to an exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := dispatch(ctx, args, stdout, stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, "smr-cri: %v\n", err)
		var ue *exitcode.UsageError
		if errors.As(err, &ue) {
			fmt.Fprintln(stderr)
			if ue.Usage != nil {
				ue.Usage(stderr)
			} else {
				usage(stderr)
			}
		}
	}
	return err
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErrorf("no subcommand given")
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		name = "help"
	}
	cmd, ok := commands()[name]
	if !ok {
		return usageErrorf("unknown subcommand %q", name)
	}
	return cmd.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "smr-cri: transparent state machine replication for Kubernetes pods.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: smr-cri <subcommand> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Subcommands:")
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'smr-cri <subcommand> --help' for the flags of a subcommand.")
}

func runHelp(_ context.Context, args []string, stdout, _ io.Writer) error {
	if len(args) > 0 {
		return usageErrorf("help takes no arguments, run 'smr-cri %s --help'", strings.Join(args, " "))
	}
	usage(stdout)
	return nil
}

func runVersion(_ context.Context, args []string, stdout, _ io.Writer) error {
	if len(args) > 0 {
		return usageErrorf("version takes no arguments")
	}
	fmt.Fprintf(stdout, "smr-cri %s (CRI runtime.v1, %s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
