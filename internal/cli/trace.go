package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/install"
	"github.com/smr-io/smr-cri/internal/nodestatus"
)

const traceHelp = `Usage: smr-cri trace [--follow] [flags]

Prints the node's smr-cri log, which holds the ordering traces (one line per
committed entry and per local read: group, index, term, session, op ...), to
stdout. smr-cri.service appends everything smr-cri serve writes to
/var/log/smr-cri/smr-cri.log (see the unit written by smr-cri install); the
DaemonSet's main container runs 'smr-cri trace --follow' with that directory
mounted, so 'kubectl logs -n smr-system ds/smr-cri' shows the traces.

With --follow it waits for the file to appear, keeps reading as it grows, and
starts over when the file is truncated or replaced (logrotate). Only whole
lines are printed. With --health-addr it serves /healthz (200 when smr-cri
answers CRI Version on --socket, 503 otherwise) and Prometheus /metrics:
its own and smr-cri serve's, read from serve's root-only status socket.
With --export-credentials DIR it also keeps the pod's ServiceAccount token,
CA and a kubeconfig in DIR for smr-cri serve (pod discovery and events).

Flags:
`

type traceOptions struct {
	File       string
	Follow     bool
	Socket     string
	HealthAddr string
	// StatusSocket is serve's status socket, whose /metrics the health
	// server re-exports (default: beside Socket).
	StatusSocket string
	Poll         time.Duration
	// ExportDir, if set, receives the pod's ServiceAccount credentials and a
	// kubeconfig for the node daemon (see credExporter).
	ExportDir string
	SADir     string
}

func parseTrace(args []string, stdout io.Writer) (traceOptions, error) {
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := traceOptions{Poll: 250 * time.Millisecond}
	fs.StringVar(&o.File, "file", install.LogFile, "smr-cri's log file (the systemd unit appends serve's output there)")
	fs.BoolVar(&o.Follow, "follow", false, "keep printing new lines until stopped (SIGTERM/SIGINT)")
	fs.StringVar(&o.Socket, "socket", install.SocketPath, "smr-cri's CRI socket, checked by /healthz")
	fs.StringVar(&o.HealthAddr, "health-addr", "", "host:port for /healthz and /metrics (e.g. :9811); empty: none.\n"+
		"/metrics has this command's metrics and smr-cri serve's, read from its --status-socket")
	fs.StringVar(&o.StatusSocket, "status-socket", "", "smr-cri serve's status socket (default: "+nodestatus.SocketName+" beside --socket)")
	fs.StringVar(&o.ExportDir, "export-credentials", "",
		"host directory (mounted at the same path) to keep a copy of this pod's ServiceAccount token and CA in,\n"+
			"with a kubeconfig naming them, for smr-cri serve on the node (refreshed every minute); empty: none")
	fs.StringVar(&o.SADir, "service-account-dir", DefaultServiceAccountDir, "where the pod's ServiceAccount token is mounted")
	printHelp, err := parseFlags(fs, "trace", traceHelp, args, stdout)
	if err != nil {
		return o, err
	}
	if o.File == "" {
		return o, &exitcode.UsageError{Err: errors.New("trace: --file must not be empty"), Usage: printHelp}
	}
	if o.StatusSocket == "" {
		o.StatusSocket = nodestatus.DefaultSocket(o.Socket)
	}
	return o, nil
}

// traceMetrics count what the streamer did.
type traceMetrics struct {
	lines, reopens prometheus.Counter
}

func newTraceMetrics(reg prometheus.Registerer) *traceMetrics {
	m := &traceMetrics{
		lines:   prometheus.NewCounter(prometheus.CounterOpts{Name: "smr_trace_lines_total", Help: "Lines of smr-cri's log printed."}),
		reopens: prometheus.NewCounter(prometheus.CounterOpts{Name: "smr_trace_reopens_total", Help: "Times the log was reopened after truncation or rotation."}),
	}
	if reg != nil {
		reg.MustRegister(m.lines, m.reopens)
	}
	return m
}

func runTrace(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseTrace(args, stdout)
	if err != nil {
		return err
	}
	if o.ExportDir != "" {
		ex, err := newCredExporter(o.SADir, o.ExportDir)
		if err != nil {
			return err
		}
		if err := ex.run(ctx, time.Minute, stderr); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "smr-cri trace: keeping the ServiceAccount credentials and a kubeconfig in %s\n", o.ExportDir)
	}
	reg := prometheus.NewRegistry()
	m := newTraceMetrics(reg)
	if o.HealthAddr != "" {
		up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "smr_daemon_up", Help: "1 if smr-cri answers CRI Version on its socket."},
			func() float64 {
				if _, err := (install.GRPCChecker{}).Version(context.Background(), o.Socket); err != nil {
					return 0
				}
				return 1
			})
		reg.MustRegister(up)
		lis, err := net.Listen("tcp", o.HealthAddr)
		if err != nil {
			return fmt.Errorf("trace: health listener: %w", err)
		}
		mux := http.NewServeMux()
		var lastErr atomic.Value
		serveMetrics := serveGatherer{socket: o.StatusSocket, timeout: 5 * time.Second, onError: func(err error) {
			// Say it once per kind of failure, not at every scrape.
			if prev, _ := lastErr.Swap(err.Error()).(string); prev != err.Error() {
				fmt.Fprintf(stderr, "smr-cri trace: serve's metrics not available: %v\n", err)
			}
		}}
		mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{reg, serveMetrics}, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			v, err := (install.GRPCChecker{}).Version(r.Context(), o.Socket)
			if err != nil {
				http.Error(w, "smr-cri not answering: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "ok: %s\n", v)
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(lis) //nolint:errcheck // ends with Close below
		defer srv.Close()
		fmt.Fprintf(stderr, "smr-cri trace: /healthz and /metrics on %s\n", lis.Addr())
	}
	return followFile(ctx, o, stdout, stderr, m)
}

// followFile prints whole lines of o.File to w; with o.Follow it keeps going
// across growth, truncation and replacement until ctx ends.
func followFile(ctx context.Context, o traceOptions, w io.Writer, stderr io.Writer, m *traceMetrics) error {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	var r *bufio.Reader
	var offset int64
	var partial []byte
	waiting := false
	tick := time.NewTicker(o.Poll)
	defer tick.Stop()
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
			return true
		}
	}
	for {
		if f == nil {
			var err error
			f, err = os.Open(o.File)
			if err != nil {
				if !o.Follow || !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("trace: %w", err)
				}
				if !waiting {
					fmt.Fprintf(stderr, "smr-cri trace: waiting for %s (is smr-cri installed on this node?)\n", o.File)
					waiting = true
				}
				f = nil
				if !wait() {
					return nil
				}
				continue
			}
			waiting = false
			r, offset, partial = bufio.NewReader(f), 0, nil
		}
		line, err := r.ReadBytes('\n')
		offset += int64(len(line))
		if err == nil {
			if _, werr := w.Write(append(partial, line...)); werr != nil {
				return fmt.Errorf("trace: write: %w", werr)
			}
			partial = nil
			m.lines.Inc()
			continue
		}
		if !errors.Is(err, io.EOF) {
			return fmt.Errorf("trace: read %s: %w", o.File, err)
		}
		partial = append(partial, line...)
		if !o.Follow {
			if len(partial) > 0 {
				w.Write(append(partial, '\n')) //nolint:errcheck // last line, best effort
			}
			return nil
		}
		if !wait() {
			return nil
		}
		if reopen, why := replaced(f, o.File, offset); reopen {
			fmt.Fprintf(stderr, "smr-cri trace: %s %s, reading it from the start\n", o.File, why)
			m.reopens.Inc()
			f.Close()
			f = nil
		}
	}
}

// replaced reports whether the path now names another file than f, or f
// shrank below what was read (copytruncate).
func replaced(f *os.File, path string, offset int64) (bool, string) {
	cur, err := os.Stat(path)
	if err != nil {
		return true, "disappeared"
	}
	open, err := f.Stat()
	if err != nil {
		return true, "cannot be read"
	}
	if a, ok := cur.Sys().(*syscall.Stat_t); ok {
		if b, ok := open.Sys().(*syscall.Stat_t); ok && (a.Ino != b.Ino || a.Dev != b.Dev) {
			return true, "was replaced"
		}
	}
	if open.Size() < offset {
		return true, "was truncated"
	}
	return false, ""
}
