package nodestatus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/smr-io/smr-cri/cri"
)

// SocketMode: root only. The status names pods and groups of every
// namespace on the node.
const SocketMode fs.FileMode = 0o600

// SocketName is the status socket's file name, beside the CRI socket.
const SocketName = "smr-cri-status.sock"

// DefaultSocket is the status socket beside the CRI socket criSocket.
func DefaultSocket(criSocket string) string {
	return filepath.Join(filepath.Dir(criSocket), SocketName)
}

// Paths on the socket: the status document, and serve's Prometheus
// metrics (which `smr-cri trace --health-addr` re-exports for the
// DaemonSet's PodMonitor, so serve itself opens no TCP port).
const (
	Path        = "/v1/status"
	MetricsPath = "/metrics"
)

// maxReport bounds what Fetch reads (a node runs at most some hundreds of
// members; a row is well under 1 KiB).
const maxReport = 16 << 20

// Source produces the current report.
type Source func() Report

// Handler answers GET Path with the report as JSON, and GET MetricsPath
// with metrics (when not nil).
func Handler(src Source, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(src())
	})
	if metrics != nil {
		mux.Handle("GET "+MetricsPath, metrics)
	}
	return mux
}

// Serve listens on the unix socket path (mode SocketMode; a stale socket
// of a dead process is replaced, a live one is an error) and answers until
// the returned stop is called; stop removes the socket.
func Serve(path string, src Source, metrics http.Handler) (stop func() error, err error) {
	lis, err := cri.ListenMode(path, SocketMode)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	srv := &http.Server{Handler: Handler(src, metrics), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(lis) //nolint:errcheck // ends with Close below
	return srv.Close, nil
}

// Fetch reads the report from the status socket at path.
func Fetch(ctx context.Context, path string) (Report, error) {
	body, err := Get(ctx, path, Path)
	if err != nil {
		return Report{}, err
	}
	return Decode(body)
}

// Get reads urlPath (Path or MetricsPath) from the status socket at path.
func Get(ctx context.Context, path, urlPath string) ([]byte, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://smr-cri"+urlPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("status socket %s (is smr-cri serve running here, and are you root?): %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReport+1))
	if err != nil {
		return nil, fmt.Errorf("status socket %s: read: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status socket %s%s: %s: %s", path, urlPath, resp.Status, preview(body))
	}
	if len(body) > maxReport {
		return nil, fmt.Errorf("status socket %s%s: answer larger than %d bytes", path, urlPath, maxReport)
	}
	return body, nil
}

// Decode parses a report (as written by Handler or `smr-cri status -o json`),
// refusing anything else with an error saying what it got. Unknown fields
// are ignored: a newer serve may add columns.
func Decode(data []byte) (Report, error) {
	if len(data) > maxReport {
		return Report{}, fmt.Errorf("status report larger than %d bytes", maxReport)
	}
	var r Report
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&r); err != nil {
		return Report{}, fmt.Errorf("status report: %w (got %q)", err, preview(data))
	}
	if r.Node == "" {
		return Report{}, errors.New("status report: no node name")
	}
	return r, nil
}

func preview(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
