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
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smr-io/smr-cri/cri"
)

// Defaults of `smr-cri serve`.
const (
	DefaultListen          = "/run/smr-cri/smr-cri.sock"
	DefaultRuntimeEndpoint = "unix:///run/containerd/containerd.sock"
	DefaultLogLevel        = "info"
	DefaultShutdownTimeout = "10s"
)

// serveOptions are the resolved settings of `smr-cri serve`.
type serveOptions struct {
	Listen          string
	RuntimeEndpoint string
	LogLevel        slog.Level
	MetricsAddr     string
	ShutdownTimeout time.Duration
}

const serveHelp = `Usage: smr-cri serve [flags]

Runs the CRI proxy: kubelet talks to smr-cri's socket as if it were the
container runtime, and smr-cri forwards every RuntimeService and ImageService
call unchanged to the runtime (containerd). Pods labelled smr.io/replicate=true
are handed to replication once their sandbox runs. Point kubelet at it with
--container-runtime-endpoint=unix://<listen socket>.

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
			"runtimeEndpoint, logLevel, metricsAddr, shutdownTimeout. Unknown fields are errors. Flags given on the\n"+
			"command line override the file.")
	logLevel = fs.String("log-level", DefaultLogLevel, "log level: debug, info, warn or error. Logs go to stderr.")
	metricsAddr = fs.String("metrics-addr", "",
		"host:port to serve Prometheus metrics on at /metrics (e.g. 127.0.0.1:9810). Empty (the default) turns\n"+
			"metrics off.")
	shutdown = fs.String("shutdown-timeout", DefaultShutdownTimeout,
		"on SIGTERM/SIGINT, how long to wait for calls in flight before cancelling them (long streams such as\n"+
			"GetContainerEvents never end by themselves).")
	return
}

// parseServe resolves defaults, config file and flags.
func parseServe(args []string, stdout io.Writer) (serveOptions, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	listen, endpoint, config, logLevel, metricsAddr, shutdown := serveFlags(fs)
	printHelp := func(w io.Writer) {
		fmt.Fprint(w, serveHelp)
		fs.VisitAll(func(f *flag.Flag) {
			fmt.Fprintf(w, "  --%s string\n", f.Name)
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
		return serveOptions{}, &UsageError{Err: fmt.Errorf("serve: %w", err), Usage: printHelp}
	}
	if fs.NArg() > 0 {
		return serveOptions{}, &UsageError{Err: fmt.Errorf("serve: unexpected arguments %q", fs.Args()), Usage: printHelp}
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
			"listen":           {listen, c.Listen},
			"runtime-endpoint": {endpoint, c.RuntimeEndpoint},
			"log-level":        {logLevel, c.LogLevel},
			"metrics-addr":     {metricsAddr, c.MetricsAddr},
			"shutdown-timeout": {shutdown, c.ShutdownTimeout},
		} {
			if !set[name] && p.val != "" {
				*p.dst = p.val
			}
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
	if *listen == "" {
		return serveOptions{}, fmt.Errorf("%w: --listen must not be empty", ErrBadConfig)
	}
	return serveOptions{
		Listen:          *listen,
		RuntimeEndpoint: *endpoint,
		LogLevel:        level,
		MetricsAddr:     *metricsAddr,
		ShutdownTimeout: timeout,
	}, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseServe(args, stdout)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.LogLevel}))
	return serve(ctx, o, log)
}

func serve(ctx context.Context, o serveOptions, log *slog.Logger) error {
	popts := cri.Options{RuntimeEndpoint: o.RuntimeEndpoint, Log: log}
	var metricsSrv *http.Server
	if o.MetricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		m, err := cri.NewMetrics(reg)
		if err != nil {
			return err
		}
		popts.ServerOptions = m.ServerOptions()
		lis, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "error", err)
			}
		}()
		defer metricsSrv.Close()
		log.Info("serving metrics", "addr", lis.Addr().String())
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
