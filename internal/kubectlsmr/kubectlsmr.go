// Package kubectlsmr is the kubectl plugin `kubectl smr` (binary
// kubectl-smr on PATH): `kubectl smr status` shows every replicated member of
// the cluster, one row each, grouped by group, leader marked, unhealthy rows
// highlighted.
//
// How it reaches the nodes: through the API server, with the caller's own
// credentials. For each smr-cri DaemonSet pod it runs `smr-cri status -o json`
// in the pod's trace container (pods/exec, authorised by the API server
// against the caller's RBAC), which reads the node's root-only status unix
// socket mounted there. Nothing listens on the node network for it
// (docs/security.md).
package kubectlsmr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/kubecore"
	"github.com/smr-io/smr-cri/internal/nodestatus"
)

// Defaults: where the DaemonSet runs and what it is called (manifests/).
const (
	DefaultSystemNamespace = "smr-system"
	DefaultSelector        = "app.kubernetes.io/name=smr-cri"
	DefaultContainer       = "trace"
	// DefaultSocket is the status socket as the trace container sees it
	// (the node's /run/smr-cri is mounted at the same path).
	DefaultSocket = "/run/smr-cri/" + nodestatus.SocketName
	// DefaultBinary is smr-cri in the DaemonSet's image.
	DefaultBinary = "/usr/local/bin/smr-cri"
)

const usage = `kubectl smr: smr-cri's view of the cluster's replicated pods.

Usage:
  kubectl smr status [GROUP] [-n NAMESPACE | -A] [--watch] [flags]

Prints every raft member of the replicated pods, one row per member grouped
by group: node, role, term, leader, commit/applied index, lag, sessions,
replica state, last snapshot, log bytes. The leader's member ID is marked '*';
an unhealthy member (not serving, or no leader) is red and says why. GROUP is
the StatefulSet/group name (or namespace.group).

It runs 'smr-cri status -o json' in each smr-cri DaemonSet pod through the
API server with your credentials: you need get/list pods and create
pods/exec in the DaemonSet's namespace (docs/security.md).

Flags:
`

// Options are the parsed flags of `kubectl smr status`.
type Options struct {
	Kubeconfig, Context string
	Namespace           string // "" with AllNamespaces
	AllNamespaces       bool
	Group               string
	Watch               bool
	Interval            time.Duration
	Output              string // table, json
	Color               string // auto, always, never
	SystemNamespace     string
	Selector            string
	Container           string
	Socket              string
	Binary              string
	Timeout             time.Duration
}

func parse(args []string, stdout io.Writer) (Options, error) {
	fs := flag.NewFlagSet("kubectl smr status", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o Options
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&o.Context, "context", "", "kubeconfig context (default: the current one)")
	fs.StringVar(&o.Namespace, "n", "", "only groups of this namespace (default: the context's namespace)")
	fs.StringVar(&o.Namespace, "namespace", "", "same as -n")
	fs.BoolVar(&o.AllNamespaces, "A", false, "groups of every namespace")
	fs.BoolVar(&o.AllNamespaces, "all-namespaces", false, "same as -A")
	fs.BoolVar(&o.Watch, "watch", false, "refresh every --interval until interrupted")
	fs.BoolVar(&o.Watch, "w", false, "same as --watch")
	fs.DurationVar(&o.Interval, "interval", 2*time.Second, "refresh period of --watch")
	fs.StringVar(&o.Output, "o", "table", "output: table or json")
	fs.StringVar(&o.Output, "output", "table", "same as -o")
	fs.StringVar(&o.Color, "color", "auto", "highlight unhealthy rows: auto (a terminal without NO_COLOR), always, never")
	fs.StringVar(&o.SystemNamespace, "smr-namespace", DefaultSystemNamespace, "namespace of the smr-cri DaemonSet")
	fs.StringVar(&o.Selector, "selector", DefaultSelector, "label selector of the smr-cri DaemonSet's pods")
	fs.StringVar(&o.Container, "container", DefaultContainer, "container of those pods to run smr-cri status in")
	fs.StringVar(&o.Socket, "status-socket", DefaultSocket, "the status socket's path inside that container")
	fs.StringVar(&o.Binary, "binary", DefaultBinary, "smr-cri's path inside that container")
	fs.DurationVar(&o.Timeout, "timeout", 20*time.Second, "how long one node may take to answer")
	help := func(w io.Writer) {
		fmt.Fprint(w, usage)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		help(stdout)
		if len(args) == 0 {
			return o, &exitcode.UsageError{Err: errors.New("no command given (want: status)")}
		}
		return o, flag.ErrHelp
	}
	if args[0] != "status" {
		return o, &exitcode.UsageError{Err: fmt.Errorf("unknown command %q (want: status)", args[0])}
	}
	// Flags may come before or after GROUP, as with kubectl.
	rest := args[1:]
	var positional []string
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				help(stdout)
				return o, err
			}
			return o, &exitcode.UsageError{Err: err}
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	switch {
	case len(positional) > 1:
		return o, &exitcode.UsageError{Err: fmt.Errorf("one GROUP at most, got %q", positional)}
	case len(positional) == 1:
		o.Group = positional[0]
	}
	switch {
	case o.Output != "table" && o.Output != "json":
		return o, &exitcode.UsageError{Err: fmt.Errorf("-o %q: want table or json", o.Output)}
	case o.Color != "auto" && o.Color != "always" && o.Color != "never":
		return o, &exitcode.UsageError{Err: fmt.Errorf("--color %q: want auto, always or never", o.Color)}
	case o.AllNamespaces && o.Namespace != "":
		return o, &exitcode.UsageError{Err: errors.New("-A and -n exclude each other")}
	case o.Interval <= 0 || o.Timeout <= 0:
		return o, &exitcode.UsageError{Err: errors.New("--interval and --timeout must be positive")}
	case o.Watch && o.Output == "json":
		return o, &exitcode.UsageError{Err: errors.New("--watch prints tables only")}
	}
	return o, nil
}

// NodeFetcher reads one smr-cri DaemonSet pod's node status.
type NodeFetcher interface {
	Fetch(ctx context.Context, pod corev1.Pod) (nodestatus.Report, error)
}

// PodLister lists the DaemonSet's pods (*kubecore.Client).
type PodLister interface {
	ListPods(ctx context.Context, ns, labelSelector string) (*corev1.PodList, error)
}

// Run runs `kubectl smr` with args (without the program name).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parse(args, stdout)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "kubectl smr: %v\n", err)
		}
		return err
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.Kubeconfig, Precedence: clientcmd.NewDefaultClientConfigLoadingRules().Precedence},
		&clientcmd.ConfigOverrides{CurrentContext: o.Context})
	if !o.AllNamespaces && o.Namespace == "" {
		if o.Namespace, _, err = cc.Namespace(); err != nil {
			err = fmt.Errorf("kubeconfig: %w", err)
			fmt.Fprintf(stderr, "kubectl smr: %v\n", err)
			return err
		}
	}
	cfg, err := cc.ClientConfig()
	if err != nil {
		err = fmt.Errorf("kubeconfig: %w", err)
		fmt.Fprintf(stderr, "kubectl smr: %v\n", err)
		return err
	}
	cfg.UserAgent = "kubectl-smr"
	client, err := kubecore.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "kubectl smr: %v\n", err)
		return err
	}
	err = Status(ctx, o, client, &execFetcher{cfg: cfg, client: client, container: o.Container, socket: o.Socket, binary: o.Binary}, stdout, stderr)
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "kubectl smr: %v\n", err)
	}
	return err
}

// Status prints the cluster's members once, or with o.Watch until ctx ends.
func Status(ctx context.Context, o Options, pods PodLister, nodes NodeFetcher, stdout, stderr io.Writer) error {
	color := o.Color == "always" || (o.Color == "auto" && isTerminal(stdout) && os.Getenv("NO_COLOR") == "")
	for {
		ms, nodeErrs, err := Collect(ctx, o, pods, nodes)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if o.Watch {
			if color {
				buf.WriteString("\x1b[H\x1b[2J") // clear the terminal
			}
			fmt.Fprintf(&buf, "%s  every %s\n\n", time.Now().UTC().Format(time.RFC3339), o.Interval)
		}
		if o.Output == "json" {
			enc := json.NewEncoder(&buf)
			enc.SetIndent("", "  ")
			if err := enc.Encode(ms); err != nil {
				return err
			}
		} else if err := nodestatus.WriteTable(&buf, ms, nodestatus.TableOptions{Node: true, Color: color}); err != nil {
			return err
		}
		// Nodes that did not answer: after the table, or on stderr beside JSON.
		errOut := io.Writer(&buf)
		if o.Output == "json" {
			errOut = stderr
		}
		for _, e := range nodeErrs {
			fmt.Fprintf(errOut, "! %v\n", e)
		}
		if _, err := stdout.Write(buf.Bytes()); err != nil {
			return err
		}
		if !o.Watch {
			if len(nodeErrs) > 0 {
				return fmt.Errorf("%d node(s) did not answer", len(nodeErrs))
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.Interval):
		}
	}
}

// Collect asks every running DaemonSet pod for its node's members, in
// parallel, and keeps those of o's namespace and group. A node that does not
// answer is an error in nodeErrs; the others are still shown.
func Collect(ctx context.Context, o Options, pods PodLister, nodes NodeFetcher) (ms []nodestatus.Member, nodeErrs []error, err error) {
	list, err := pods.ListPods(ctx, o.SystemNamespace, o.Selector)
	if err != nil {
		return nil, nil, fmt.Errorf("find the smr-cri DaemonSet pods: %w", err)
	}
	if len(list.Items) == 0 {
		return nil, nil, fmt.Errorf("no pods match %q in namespace %s: is smr-cri installed (kubectl apply -k manifests/)?", o.Selector, o.SystemNamespace)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, pod := range list.Items {
		if pod.Status.Phase != corev1.PodRunning {
			nodeErrs = append(nodeErrs, fmt.Errorf("node %s: pod %s is %s", pod.Spec.NodeName, pod.Name, pod.Status.Phase))
			continue
		}
		wg.Go(func() {
			fctx, cancel := context.WithTimeout(ctx, o.Timeout)
			defer cancel()
			r, err := nodes.Fetch(fctx, pod)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				nodeErrs = append(nodeErrs, fmt.Errorf("node %s (pod %s): %w", pod.Spec.NodeName, pod.Name, err))
				return
			}
			for _, m := range r.Members {
				if keep(o, m) {
					m.Node = r.Node
					ms = append(ms, m)
				}
			}
		})
	}
	wg.Wait()
	ms = nodestatus.AddMissing(ms)
	slices.SortFunc(nodeErrs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return ms, nodeErrs, nil
}

// keep filters by namespace (the pod's) and group (name or namespace.name).
func keep(o Options, m nodestatus.Member) bool {
	ns, _, _ := strings.Cut(m.Pod, "/")
	if !o.AllNamespaces && ns != o.Namespace {
		return false
	}
	if o.Group == "" {
		return true
	}
	return m.Group == o.Group || m.Group == ns+"."+o.Group
}

// execFetcher runs `smr-cri status -o json` (binary) in the pod's container through
// the API server (pods/exec): WebSocket first, SPDY for older servers, as
// kubectl exec does.
type execFetcher struct {
	cfg               *rest.Config
	client            *kubecore.Client
	container, socket string
	binary            string
}

func (f *execFetcher) Fetch(ctx context.Context, pod corev1.Pod) (nodestatus.Report, error) {
	req := f.client.ExecRequest(pod.Namespace, pod.Name, &corev1.PodExecOptions{Container: f.container,
		Command: []string{f.binary, "status", "-o", "json", "--socket", f.socket}, Stdout: true, Stderr: true})
	ws, err := remotecommand.NewWebSocketExecutor(f.cfg, "GET", req.URL().String())
	if err != nil {
		return nodestatus.Report{}, fmt.Errorf("exec: %w", err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(f.cfg, "POST", req.URL())
	if err != nil {
		return nodestatus.Report{}, fmt.Errorf("exec: %w", err)
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return nodestatus.Report{}, fmt.Errorf("exec: %w", err)
	}
	var out, errOut bytes.Buffer
	if err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut}); err != nil {
		if msg := strings.TrimSpace(errOut.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return nodestatus.Report{}, fmt.Errorf("smr-cri status in container %s: %w", f.container, err)
	}
	return nodestatus.Decode(out.Bytes())
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
