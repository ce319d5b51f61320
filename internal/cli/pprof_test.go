package cli

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/freeport"
)

// TestServePprof serves the profiles on a loopback port: the pprof paths
// answer, nothing else of the process is exposed there, and stop closes it.
func TestServePprof(t *testing.T) {
	addr := freeport.AddrT(t)
	stop, err := servePprof(addr, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	tests := []struct {
		path     string
		wantCode int
		wantBody string
	}{
		{path: "/debug/pprof/", wantCode: http.StatusOK, wantBody: "goroutine"},
		{path: "/debug/pprof/cmdline", wantCode: http.StatusOK},
		{path: "/debug/pprof/goroutine?debug=1", wantCode: http.StatusOK, wantBody: "goroutine profile"},
		{path: "/metrics", wantCode: http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := c.Get("http://" + addr + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantCode || !strings.Contains(string(body), tc.wantBody) {
				t.Fatalf("GET %s = %d %.200q, want %d containing %q", tc.path, resp.StatusCode, body, tc.wantCode, tc.wantBody)
			}
		})
	}
	stop()
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("pprof port still accepts after stop")
	}
}

// TestServePprofBusyPort reports a port already taken.
func TestServePprofBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := servePprof(ln.Addr().String(), slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "pprof listener") {
		t.Fatalf("servePprof on a busy port: error %v, want one naming the pprof listener", err)
	}
}
