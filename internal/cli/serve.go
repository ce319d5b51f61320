package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smr-io/smr-cri/cri"
	"github.com/smr-io/smr-cri/internal/daemon"
	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/nodestatus"
	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication"
)

// Defaults of `smr-cri serve`.
const (
	DefaultListen          = "/run/smr-cri/smr-cri.sock"
	DefaultRuntimeEndpoint = "unix:///run/containerd/containerd.sock"
	DefaultLogLevel        = "info"
	DefaultShutdownTimeout = "10s"
	DefaultDataDir         = daemon.DefaultDataDir
	DefaultTraceFile       = "-"
)

// serveOptions are the resolved settings of `smr-cri serve`.
type serveOptions struct {
	Listen          string
	RuntimeEndpoint string
	LogLevel        slog.Level
	MetricsAddr     string
	ShutdownTimeout time.Duration
	// StatusSocket is the root-only unix socket `smr-cri status` reads
	// (internal/nodestatus); "-": none.
	StatusSocket string
	// PprofAddr serves net/http/pprof on a loopback address ("": off).
	PprofAddr   string
	Replication replicationOptions
}

// replicationOptions are serve's replication settings.
type replicationOptions struct {
	Enabled    bool   // false: the LoggingReplicator only logs labelled pods
	DataDir    string // raft WAL, snapshots and progress of every member
	Kubeconfig string // "" : static smr.io/peers only
	NodeName   string // "" : the host name
	TraceFile  string // "-" : stdout
	// ProbeSource is the comma list of --probe-source values (validated by
	// daemon.ParseProbeSources): addresses whose connections bypass the
	// redirect, "auto" or "none".
	ProbeSource string
	// PKIDir holds (or caches) the cluster CA of raft mutual TLS; "" with
	// InsecureRaft (plaintext raft).
	PKIDir       string
	InsecureRaft bool
	// ClientMemoryMiB is the node-wide budget of client connection memory
	// (replication.ClientBudget).
	ClientMemoryMiB int
	// Audit tunes the ordered audit of every group (--audit-*).
	Audit replication.AuditConfig
	// ContainerPoll is --container-poll-interval (negative: off).
	ContainerPoll time.Duration
	// SerialApply is --app-pipeline=false.
	SerialApply bool
}

// DefaultPKIDir is where serve keeps the cluster CA (docs/security.md).
const DefaultPKIDir = DefaultDataDir + "/pki"

// DefaultProbeSource: no bypass (see internal/daemon, "Kubelet probes").
const DefaultProbeSource = daemon.ProbeSourceNone

var defaultReplication = replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: DefaultTraceFile,
	ProbeSource: DefaultProbeSource, PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB,
	Audit: defaultAudit, ContainerPoll: daemon.DefaultExitPollInterval}

// intFlag is n as a flag value, "" (not set) for 0.
func intFlag(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}

// DefaultClientMemoryMiB is --client-memory-mib's default.
const DefaultClientMemoryMiB = replication.DefaultClientBudgetBytes >> 20

// maxClientMemoryMiB keeps --client-memory-mib's bytes far from overflow.
const maxClientMemoryMiB = 1 << 20

// defaultAudit is what the --audit-* flags give when not set.
var defaultAudit = replication.AuditConfig{Interval: replication.DefaultAuditInterval, Every: replication.DefaultAuditEvery,
	MaxKeys: replication.DefaultAuditMaxKeys}

const serveHelp = `Usage: smr-cri serve [flags]

Runs the CRI proxy: kubelet talks to smr-cri's socket as if it were the
container runtime, and smr-cri forwards every RuntimeService and ImageService
call unchanged to the runtime (containerd). Pods labelled smr.io/replicate=true
are handed to replication once their sandbox runs: each replica's raft member
listens at its pod IP and smr.io/raft-port, keeps its log under --data-dir, and
every replica writes one ordering trace line per applied request to
--trace-file. Members talk raft over mutual TLS with certificates issued from
the cluster CA in --pki-dir (and the Secret smr-system/smr-cri-ca with
--kubeconfig), loaded or created when the first member starts. At start (and whenever the runtime comes back) the running
replicated sandboxes are re-attached, resuming where their apps are. Point
kubelet at it with --container-runtime-endpoint=unix://<listen socket>.

Settings come from, in increasing priority: the defaults, the --config file,
the command line flags. SIGTERM or SIGINT stops it gracefully and removes the
socket.

Flags:
`

func serveFlags(fs *flag.FlagSet) (listen, endpoint, config, logLevel, metricsAddr, shutdown *string) {
	listen = fs.String("listen", DefaultListen,
		"path of the unix socket kubelet connects to. Its directory is created (mode 0750) if missing; a stale\n"+
			"socket left by a dead process is removed, but a path another live server answers on, or a path that\n"+
			"is not a socket, is an error. The socket gets mode 0660.")
	endpoint = fs.String("runtime-endpoint", DefaultRuntimeEndpoint,
		"CRI endpoint of the container runtime to forward to (unix:///path or an absolute path). smr-cri\n"+
			"connects lazily and reconnects by itself; while the runtime is down calls fail at once with Unavailable.")
	config = fs.String("config", "",
		"optional YAML file (apiVersion: "+ConfigAPIVersion+", kind: "+ConfigKind+") with the fields listen,\n"+
			"runtimeEndpoint, logLevel, metricsAddr, shutdownTimeout, dataDir, kubeconfig, nodeName, traceFile,\n"+
			"probeSources (a list), pkiDir, insecureRaft (a boolean), statusSocket.\n"+
			"Unknown fields are errors. Flags given on the\n"+
			"command line override the file.")
	logLevel = fs.String("log-level", DefaultLogLevel, "log level: debug, info, warn or error. Logs go to stderr.")
	metricsAddr = fs.String("metrics-addr", "",
		"host:port to serve Prometheus metrics on at /metrics (e.g. 127.0.0.1:9810). Empty (the default): metrics\n"+
			"only on the root-only --status-socket, which `smr-cri trace --health-addr` re-exports.")
	shutdown = fs.String("shutdown-timeout", DefaultShutdownTimeout,
		"on SIGTERM/SIGINT, how long to wait for calls in flight before cancelling them (long streams such as\n"+
			"GetContainerEvents never end by themselves).")
	return
}

// listFlag is a repeatable string flag: its values (each may itself be a
// comma list) are joined with commas into *dst, the first use replacing the
// default.
type listFlag struct {
	dst *string
	set bool
}

func (l *listFlag) String() string {
	if l.dst == nil {
		return ""
	}
	return *l.dst
}

func (l *listFlag) Set(v string) error {
	if l.set {
		*l.dst += "," + v
	} else {
		*l.dst, l.set = v, true
	}
	return nil
}

func replicationFlags(fs *flag.FlagSet) (enabled *bool, dataDir, kubeconfig, nodeName, traceFile, probeSource, clientMemory *string) {
	enabled = fs.Bool("replication", true,
		"replicate pods labelled smr.io/replicate=true. false only logs them (the proxy alone, an escape hatch).")
	dataDir = fs.String("data-dir", DefaultDataDir,
		"directory of every replica's raft log (WAL, snapshots) and applied position, one sub-directory per\n"+
			"<namespace>.<group>/member-<id>. Must be an absolute path and survive restarts.")
	kubeconfig = fs.String("kubeconfig", "",
		"kubeconfig of the API server, for smr.io/membership=kubernetes (members found and followed from the\n"+
			"pods of the group). Empty: only static smr.io/peers membership. The file may appear after serve\n"+
			"started (the DaemonSet writes it): it is then read at the first attach of such a pod.")
	nodeName = fs.String("node-name", "", "this node's name, in logs (default: the host name).")
	traceFile = fs.String("trace-file", DefaultTraceFile,
		"where the ordering trace lines go (one per applied request): \"-\" is stdout (the installed unit appends\n"+
			"it to the log file that `smr-cri trace --follow` tails), or a file appended to.")
	probeSource = new(string)
	*probeSource = DefaultProbeSource
	fs.Var(&listFlag{dst: probeSource}, "probe-source",
		"source addresses whose connections to a replicated pod's service ports bypass the redirect and reach\n"+
			"the app directly, for kubelet's tcpSocket/httpGet probes (repeatable, or a comma list): IPv4 addresses,\n"+
			"\"auto\" (per pod: the gateway of the pod's default route and the node's source address for its route\n"+
			"to the pod IP), or \"none\". Any client connecting from such an address (processes on the node,\n"+
			"Service traffic the node masquerades) also bypasses replication, hence the default \"none\".")
	clientMemory = fs.String("client-memory-mib", strconv.Itoa(DefaultClientMemoryMiB),
		"memory budget, in MiB, of the client connections of every replicated pod on this node together: each\n"+
			"open connection costs its 64 KiB of buffers, a request being received its bytes so far. When it is\n"+
			"spent, new connections and growing requests are refused with an error (smr_bad_requests_total{reason=\n"+
			"\"client_budget\"}) instead of serve growing until the node kills it, and the CRI path with it.")
	return
}

func raftSecurityFlags(fs *flag.FlagSet) (pkiDir *string, insecureRaft *bool) {
	pkiDir = fs.String("pki-dir", DefaultPKIDir,
		"directory of the cluster CA (ca.crt, ca.key 0600) from which each raft member's mutual-TLS certificate\n"+
			"is issued. With --kubeconfig the CA is the Secret smr-system/smr-cri-ca (created from this directory's CA,\n"+
			"or a new one, if missing) and cached here; without, it is created here if missing (on several nodes,\n"+
			"make it once with `smr-cri pki init` and copy it). Read when the first member starts: a bad directory\n"+
			"fails that pod's attach (retried at each reconcile) with an error naming it. Must be an absolute path.")
	insecureRaft = fs.Bool("insecure-raft", false,
		"plaintext, unauthenticated raft traffic between members: any process that reaches a raft port can inject\n"+
			"entries into a group's log. Tests and benchmarks only; logged at WARN. Excludes --pki-dir.")
	return
}

// parseServe resolves defaults, config file and flags.
func parseServe(args []string, stdout io.Writer) (serveOptions, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	listen, endpoint, config, logLevel, metricsAddr, shutdown := serveFlags(fs)
	replicate, dataDir, kubeconfig, nodeName, traceFile, probeSource, clientMemory := replicationFlags(fs)
	pkiDir, insecureRaft := raftSecurityFlags(fs)
	auditInterval := fs.String("audit-interval", replication.DefaultAuditInterval.String(),
		"the ordered audit: while a group has writes, its leader orders an audit at least this often (and every\n"+
			"--audit-every client entries) at which every replica digests its app and a replica whose digest differs\n"+
			"from the majority's is repaired. \"0\" turns it off. A Redis replica captures its state copy-on-write\n"+
			"(BGSAVE: the group waits for the fork only, which replaces the app's dump file; see --audit-copy-on-write).")
	auditEvery := fs.Uint64("audit-every", replication.DefaultAuditEvery, "client entries between two audits (see --audit-interval).")
	auditMaxKeys := fs.Int("audit-max-keys", replication.DefaultAuditMaxKeys,
		"bound of the command digest (the fallback when a copy-on-write capture is impossible, which reads every key\n"+
			"while the group waits: 0.65 s per 100k small Redis keys here): an app with more keys is not digested\n"+
			"(it reports \"skipped\", said once in the log).")
	auditCOW := fs.Bool("audit-copy-on-write", true,
		"capture a Redis app's state for the audit with BGSAVE (copy-on-write fork; the dump file is read through\n"+
			"/proc/<pid>/cwd). It replaces the app's own dump file and needs disk for one copy of the dataset;\n"+
			"false: every audit reads the keys through commands (bounded by --audit-max-keys).")
	appPipeline := fs.Bool("app-pipeline", true,
		"write each replica's committed entries to its app as an ordered pipeline: runs of entries go out on one\n"+
			"app connection and their responses are matched in order; sessions in the same connection state share\n"+
			"that connection, a request that changes it runs on the session's own (see replication/pipeline.go).\n"+
			"false: one app round trip per entry and one app connection per client session (the old executor).")
	containerPoll := fs.Duration("container-poll-interval", daemon.DefaultExitPollInterval,
		"how often the containers of replicated pods are polled (CRI ContainerStatus) for exits: an exited app\n"+
			"container fences its replica at once (repair cause container-exit), before kubelet re-creates it empty.\n"+
			"At least 100ms; \"0\" turns polling off (a restart is then seen only when the container is created again).")
	statusSocket := fs.String("status-socket", "",
		"unix socket (mode 0600, root only) that `smr-cri status` reads this node's members from. Default: "+nodestatus.SocketName+"\n"+
			"beside --listen; \"-\" turns it off. Never a TCP port: cluster-wide views go through the API server.")
	pprofAddr := fs.String("pprof-addr", "",
		"loopback host:port (e.g. 127.0.0.1:6060) to serve Go's profiles on at /debug/pprof/ (CPU:\n"+
			"/debug/pprof/profile?seconds=30, then `go tool pprof -top <file>`), for debugging and `make bench`'s\n"+
			"SMR_BENCH_PROFILE. Empty (the default): off. Only a literal loopback IP is accepted; flag only, not in --config.")
	printHelp := func(w io.Writer) {
		fmt.Fprint(w, serveHelp)
		fs.VisitAll(func(f *flag.Flag) {
			kind := "string"
			if _, ok := f.Value.(interface{ IsBoolFlag() bool }); ok {
				kind = "bool"
			}
			fmt.Fprintf(w, "  --%s %s\n", f.Name, kind)
			for _, line := range strings.Split(f.Usage, "\n") {
				fmt.Fprintf(w, "      %s\n", line)
			}
			if f.DefValue != "" {
				fmt.Fprintf(w, "      (default %q)\n", f.DefValue)
			}
		})
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(stdout)
			return serveOptions{}, err
		}
		return serveOptions{}, &exitcode.UsageError{Err: fmt.Errorf("serve: %w", err), Usage: printHelp}
	}
	if fs.NArg() > 0 {
		return serveOptions{}, &exitcode.UsageError{Err: fmt.Errorf("serve: unexpected arguments %q", fs.Args()), Usage: printHelp}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *config != "" {
		c, err := loadConfig(*config)
		if err != nil {
			return serveOptions{}, err
		}
		// A value from the file applies unless the flag was given.
		for name, p := range map[string]struct {
			dst *string
			val string
		}{
			"listen":            {listen, c.Listen},
			"runtime-endpoint":  {endpoint, c.RuntimeEndpoint},
			"log-level":         {logLevel, c.LogLevel},
			"metrics-addr":      {metricsAddr, c.MetricsAddr},
			"shutdown-timeout":  {shutdown, c.ShutdownTimeout},
			"data-dir":          {dataDir, c.DataDir},
			"kubeconfig":        {kubeconfig, c.Kubeconfig},
			"node-name":         {nodeName, c.NodeName},
			"trace-file":        {traceFile, c.TraceFile},
			"probe-source":      {probeSource, strings.Join(c.ProbeSources, ",")},
			"status-socket":     {statusSocket, c.StatusSocket},
			"pki-dir":           {pkiDir, c.PKIDir},
			"client-memory-mib": {clientMemory, intFlag(c.ClientMemoryMiB)},
			"audit-interval":    {auditInterval, c.AuditInterval},
		} {
			if !set[name] && p.val != "" {
				*p.dst = p.val
				set[name] = true
			}
		}
		if !set["insecure-raft"] && c.InsecureRaft != nil {
			*insecureRaft = *c.InsecureRaft
		}
	}
	level, err := parseLogLevel(*logLevel)
	if err != nil {
		return serveOptions{}, err
	}
	timeout, err := parseTimeout(*shutdown)
	if err != nil {
		return serveOptions{}, err
	}
	if _, err := cri.ParseEndpoint(*endpoint); err != nil {
		return serveOptions{}, fmt.Errorf("%w: --runtime-endpoint: %w", ErrBadConfig, err)
	}
	audit, err := parseAuditInterval(*auditInterval)
	if err != nil {
		return serveOptions{}, err
	}
	if *containerPoll != 0 && *containerPoll < 100*time.Millisecond {
		return serveOptions{}, fmt.Errorf("%w: --container-poll-interval %s must be 0 (off) or at least 100ms", ErrBadConfig, *containerPoll)
	}
	if *containerPoll == 0 {
		*containerPoll = -1 // off
	}
	if *auditEvery == 0 || *auditMaxKeys <= 0 {
		return serveOptions{}, fmt.Errorf("%w: --audit-every and --audit-max-keys must be positive", ErrBadConfig)
	}
	if *listen == "" {
		return serveOptions{}, fmt.Errorf("%w: --listen must not be empty", ErrBadConfig)
	}
	if *replicate && !filepath.IsAbs(*dataDir) {
		return serveOptions{}, fmt.Errorf("%w: --data-dir %q must be an absolute path", ErrBadConfig, *dataDir)
	}
	if *statusSocket == "" {
		*statusSocket = nodestatus.DefaultSocket(*listen)
	}
	if *statusSocket != "-" && !filepath.IsAbs(*statusSocket) {
		return serveOptions{}, fmt.Errorf("%w: --status-socket %q must be an absolute path (or \"-\")", ErrBadConfig, *statusSocket)
	}
	if *statusSocket == *listen {
		return serveOptions{}, fmt.Errorf("%w: --status-socket must differ from --listen", ErrBadConfig)
	}
	if *traceFile == "" {
		return serveOptions{}, fmt.Errorf("%w: --trace-file must not be empty (\"-\" is stdout)", ErrBadConfig)
	}
	if _, err := daemon.ParseProbeSources(strings.Split(*probeSource, ",")); err != nil {
		return serveOptions{}, fmt.Errorf("%w: --probe-source: %w", ErrBadConfig, err)
	}
	if err := checkPprofAddr(*pprofAddr); err != nil {
		return serveOptions{}, err
	}
	clientMiB, err := strconv.Atoi(*clientMemory)
	if err != nil || clientMiB < 1 || clientMiB > maxClientMemoryMiB {
		return serveOptions{}, fmt.Errorf("%w: --client-memory-mib %q: want a whole number of MiB in [1, %d]",
			ErrBadConfig, *clientMemory, maxClientMemoryMiB)
	}
	switch {
	case *insecureRaft && set["pki-dir"]:
		return serveOptions{}, fmt.Errorf("%w: --insecure-raft and --pki-dir exclude each other (plaintext raft has no CA)", ErrBadConfig)
	case *insecureRaft:
		*pkiDir = ""
	case *replicate && !filepath.IsAbs(*pkiDir):
		return serveOptions{}, fmt.Errorf("%w: --pki-dir %q must be an absolute path", ErrBadConfig, *pkiDir)
	}
	return serveOptions{
		Listen:          *listen,
		RuntimeEndpoint: *endpoint,
		LogLevel:        level,
		MetricsAddr:     *metricsAddr,
		ShutdownTimeout: timeout,
		StatusSocket:    *statusSocket,
		PprofAddr:       *pprofAddr,
		Replication: replicationOptions{Enabled: *replicate, DataDir: *dataDir, Kubeconfig: *kubeconfig,
			NodeName: *nodeName, TraceFile: *traceFile, ProbeSource: *probeSource, PKIDir: *pkiDir, InsecureRaft: *insecureRaft,
			ClientMemoryMiB: clientMiB, ContainerPoll: *containerPoll, SerialApply: !*appPipeline,
			Audit: replication.AuditConfig{Off: audit == 0, Interval: audit, Every: *auditEvery, MaxKeys: *auditMaxKeys,
				NoCopyOnWrite: !*auditCOW}},
	}, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseServe(args, stdout)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.LogLevel}))
	return serve(ctx, o, log, stdout)
}

func serve(ctx context.Context, o serveOptions, log *slog.Logger, stdout io.Writer) error {
	popts := cri.Options{RuntimeEndpoint: o.RuntimeEndpoint, Log: log}
	// One registry, always: with --metrics-addr it is served on that TCP
	// address, and it is always on the root-only status socket, where the
	// DaemonSet's `smr-cri trace --health-addr` reads and re-exports it.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := cri.NewMetrics(reg)
	if err != nil {
		return err
	}
	popts.ServerOptions = m.ServerOptions()
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if o.MetricsAddr != "" {
		lis, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics)
		metricsSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "error", err)
			}
		}()
		defer metricsSrv.Close()
		log.Info("serving metrics", "addr", lis.Addr().String())
	}
	if o.PprofAddr != "" {
		stop, err := servePprof(o.PprofAddr, log)
		if err != nil {
			return err
		}
		defer stop()
	}

	if o.Replication.Enabled {
		d, stop, err := startReplication(ctx, o, log, reg, stdout)
		if err != nil {
			return err
		}
		// Runs after the proxy stopped (deferred after its shutdown):
		// no hook can attach a pod while the members stop.
		defer stop()
		popts.Replicator = d
		if o.StatusSocket != "-" {
			stopStatus, err := nodestatus.Serve(o.StatusSocket, d.Status, metrics)
			if err != nil {
				return err
			}
			defer stopStatus()
			log.Info("serving status", "socket", o.StatusSocket)
		}
	}

	p, err := cri.New(popts)
	if err != nil {
		return err
	}
	lis, err := cri.Listen(o.Listen)
	if err != nil {
		p.Shutdown(0)
		return err
	}
	// Remove the socket on the way out: the listener unlinks it when closed,
	// and this catches any other path out of Serve.
	defer func() {
		if err := os.Remove(o.Listen); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("remove socket", "path", o.Listen, "error", err)
		}
	}()
	log.Info("smr-cri serving", "version", version, "listen", o.Listen, "runtime", p.Endpoint())
	// Start-up (package initialisation, flag and config parsing, the
	// daemon's re-attach pass) leaves garbage behind: collect it and hand
	// it back to the OS once, so the idle daemon's footprint is what it
	// really holds. (Since the API client is core/v1 only, internal/kubecore,
	// this is worth well under a MiB.)
	debug.FreeOSMemory()
	go func() {
		// Only informative: calls work as soon as the runtime is there.
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if v, err := p.CheckRuntime(cctx); err != nil {
			log.Warn("container runtime not reachable yet; calls fail with Unavailable until it is", "runtime", p.Endpoint(), "error", err)
		} else {
			log.Info("container runtime reachable", "runtime", v.GetRuntimeName(), "runtimeVersion", v.GetRuntimeVersion(), "criVersion", v.GetRuntimeApiVersion())
		}
	}()
	err = p.ServeContext(ctx, lis, o.ShutdownTimeout)
	log.Info("smr-cri stopped")
	return err
}

// raftCA is the cluster CA of raft mutual TLS, nil with --insecure-raft
// (daemon.New then warns). It is loaded at the first member's start; with a
// kubeconfig the daemon keeps it in the Secret through its API client.
func raftCA(ro replicationOptions, log *slog.Logger) *pki.LazyCA {
	if ro.InsecureRaft {
		return nil
	}
	return &pki.LazyCA{Dir: ro.PKIDir, Loaded: func(source string) {
		log.Info("cluster CA for raft mutual TLS loaded", "source", source)
	}}
}

func raftSecurity(ro replicationOptions) string {
	if ro.InsecureRaft {
		return "plaintext (--insecure-raft)"
	}
	return "mutual TLS, CA in " + ro.PKIDir
}

// startReplication builds the replication daemon (tracer, metrics, optional
// API server client) and starts re-attaching the running replicated
// sandboxes in the background. stop ends it: members stop, their pods'
// redirects stay for the next start, the trace is flushed.
func startReplication(ctx context.Context, o serveOptions, log *slog.Logger, reg *prometheus.Registry, stdout io.Writer) (*daemon.Daemon, func(), error) {
	ro := o.Replication
	var traceOut io.Writer = stdout
	var traceFile *os.File
	if ro.TraceFile != DefaultTraceFile {
		f, err := os.OpenFile(ro.TraceFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: --trace-file: %w", ErrBadConfig, err)
		}
		traceOut, traceFile = f, f
	}
	closeTrace := func() {
		if traceFile != nil {
			_ = traceFile.Close()
		}
	}
	probes, err := daemon.ParseProbeSources(strings.Split(ro.ProbeSource, ","))
	if err != nil {
		closeTrace()
		return nil, nil, fmt.Errorf("%w: --probe-source: %w", ErrBadConfig, err)
	}
	cfg := daemon.Config{DataDir: ro.DataDir, RuntimeEndpoint: o.RuntimeEndpoint, NodeName: ro.NodeName, Log: log,
		ProbeSources: probes, ClientBudgetBytes: int64(ro.ClientMemoryMiB) << 20, ExitPollInterval: ro.ContainerPoll,
		Executor: replication.ExecutorConfig{Audit: ro.Audit, SerialApply: ro.SerialApply}}
	if cfg.NodeName == "" {
		cfg.NodeName, _ = os.Hostname()
	}
	if reg != nil {
		m, err := replication.NewMetrics(reg)
		if err != nil {
			closeTrace()
			return nil, nil, err
		}
		cfg.Metrics = m
		if cfg.RaftMetrics, err = raftcore.NewMetrics(reg); err != nil {
			closeTrace()
			return nil, nil, err
		}
	}
	// Read now if present, else at the first attach that needs it: the
	// DaemonSet's trace container writes it after serve started.
	cfg.Kubeconfig = ro.Kubeconfig
	cfg.CA = raftCA(ro, log)
	tracer := replication.NewTracer(traceOut)
	cfg.Trace = tracer
	d, err := daemon.New(cfg)
	if err != nil {
		_ = tracer.Close()
		closeTrace()
		return nil, nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(runCtx)
	}()
	log.Info("replication on", "dataDir", ro.DataDir, "trace", ro.TraceFile, "kubernetes", ro.Kubeconfig != "", "node", cfg.NodeName,
		"probeSource", ro.ProbeSource, "raftSecurity", raftSecurity(ro))
	stop := func() {
		cancel()
		<-done
		sctx, scancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
		defer scancel()
		if err := d.Close(sctx); err != nil {
			log.Warn("stop replication", "error", err)
		}
		_ = tracer.Close()
		closeTrace()
	}
	return d, stop, nil
}
