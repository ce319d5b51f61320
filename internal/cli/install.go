package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/install"
)

const installHelp = `Usage: smr-cri install --host-root /host [flags]

Installs smr-cri on this node (run by the DaemonSet's privileged init
container, with the node's / mounted at --host-root, hostPID and
hostNetwork): copies this binary to /usr/local/bin/smr-cri, writes and starts
the systemd unit smr-cri.service (smr-cri serve in front of the runtime
kubelet uses now, logging to /var/log/smr-cri/smr-cri.log), waits until it
answers CRI Version, points kubelet at unix:///run/smr-cri/smr-cri.sock
(KubeletConfiguration containerRuntimeEndpoint, kubeadm-flags.env or a
systemd drop-in, whichever sets it; originals kept as <file>.smr-cri.orig),
restarts kubelet and waits until the node is Ready again. Running it again
changes nothing. If a step fails, every completed step is undone.

Flags:
`

const uninstallHelp = `Usage: smr-cri uninstall --host-root /host [flags]

Restores kubelet's original files byte for byte, restarts kubelet, waits until
the node is Ready, then stops and removes smr-cri.service, the binary, the
backups, the logs and the install state. On a node without smr-cri it does
nothing. If a step fails, every completed step is undone.

Flags:
`

// installOptions are the parsed flags of install/uninstall.
type installOptions struct {
	install.Options
	Healthz string
}

func parseInstall(name, help string, args []string, stdout io.Writer) (installOptions, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	root := fs.String("host-root", "", "where the node's / is mounted (required; \"/\" when run on the node itself)")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for smr-cri to answer and for the node to be Ready")
	healthz := fs.String("kubelet-healthz", "http://127.0.0.1:10248/healthz",
		"kubelet's healthz URL (the pod must be in the node's network namespace: hostNetwork)")
	var binary *string
	var force *bool
	if name == "install" {
		binary = fs.String("binary", "", "smr-cri binary to install (default: this executable)")
	} else {
		force = fs.Bool("force", false, "restore kubelet's original files even if they changed since install")
	}
	printHelp, err := parseFlags(fs, name, help, args, stdout)
	if err != nil {
		return installOptions{}, err
	}
	if *root == "" {
		return installOptions{}, &exitcode.UsageError{Err: fmt.Errorf("%s: --host-root is required", name), Usage: printHelp}
	}
	if *timeout <= 0 {
		return installOptions{}, &exitcode.UsageError{Err: fmt.Errorf("%s: --timeout must be positive", name), Usage: printHelp}
	}
	o := installOptions{Healthz: *healthz}
	o.HostRoot = *root
	o.Timeout = *timeout
	if binary != nil {
		o.Binary = *binary
		if o.Binary == "" {
			exe, err := os.Executable()
			if err != nil {
				return installOptions{}, fmt.Errorf("%s: find this executable: %w", name, err)
			}
			o.Binary = exe
		}
	}
	if force != nil {
		o.Force = *force
	}
	return o, nil
}

// parseFlags parses a subcommand's flags: --help prints help to stdout,
// and a bad flag or a stray argument is a UsageError showing that help.
func parseFlags(fs *flag.FlagSet, name, help string, args []string, stdout io.Writer) (printHelp func(io.Writer), err error) {
	printHelp = func(w io.Writer) {
		fmt.Fprint(w, help)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(stdout)
			return printHelp, err
		}
		return printHelp, &exitcode.UsageError{Err: fmt.Errorf("%s: %w", name, err), Usage: printHelp}
	}
	if fs.NArg() > 0 {
		return printHelp, &exitcode.UsageError{Err: fmt.Errorf("%s: unexpected arguments %q", name, fs.Args()), Usage: printHelp}
	}
	return printHelp, nil
}

// wire fills in the real executor and checkers.
func (o installOptions) wire(stderr io.Writer) install.Options {
	opts := o.Options
	opts.Exec = install.HostRunner{Root: o.HostRoot}
	opts.CRI = install.GRPCChecker{}
	opts.Node = install.KubeletReady{HealthzURL: o.Healthz, Socket: filepath.Join(o.HostRoot, install.SocketPath)}
	opts.Log = stderr
	return opts
}

func runInstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseInstall("install", installHelp, args, stdout)
	if err != nil {
		return err
	}
	return install.Install(ctx, o.wire(stderr))
}

func runUninstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseInstall("uninstall", uninstallHelp, args, stdout)
	if err != nil {
		return err
	}
	return install.Uninstall(ctx, o.wire(stderr))
}
