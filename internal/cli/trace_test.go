package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/nodestatus"
)

// syncBuf is a bytes.Buffer safe to read while followFile writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// waitOutput polls until out holds want (the test's own deadline bounds it).
func waitOutput(t *testing.T, out *syncBuf, want string) {
	t.Helper()
	for !strings.Contains(out.String(), want) {
		select {
		case <-t.Context().Done():
			t.Fatalf("output never contained %q; got %q", want, out.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func appendFile(t *testing.T, p, s string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// TestTraceFollow: waits for the file, prints whole lines only, and starts
// over after truncation and after replacement (logrotate).
func TestTraceFollow(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "smr-cri.log")
	ctx, cancel := context.WithCancel(context.Background())
	out, errOut := &syncBuf{}, &syncBuf{}
	m := newTraceMetrics(nil)
	done := make(chan error, 1)
	go func() {
		done <- followFile(ctx, traceOptions{File: p, Follow: true, Poll: time.Millisecond}, out, errOut, m)
	}()
	waitOutput(t, errOut, "waiting for")

	appendFile(t, p, "msg=commit group=default.redis index=1\nmsg=commit group=default.redis ")
	waitOutput(t, out, "index=1\n")
	if strings.Contains(out.String(), "index=2") {
		t.Fatal("a partial line was printed")
	}
	appendFile(t, p, "index=2\n")
	waitOutput(t, out, "msg=commit group=default.redis index=2\n")

	// copytruncate: the file shrinks; reading restarts at 0.
	if err := os.WriteFile(p, []byte("after truncate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, out, "after truncate\n")

	// rename + create: a new inode.
	if err := os.Rename(p, p+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, p, "new file line\n")
	waitOutput(t, out, "new file line\n")
	waitOutput(t, errOut, "reading it from the start")

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("followFile: %v", err)
	}
	want := "msg=commit group=default.redis index=1\nmsg=commit group=default.redis index=2\nafter truncate\nnew file line\n"
	if out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
}

func TestTraceOnce(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	appendFile(t, p, "a\nb")
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"trace", "--file", p}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "a\nb\n" {
		t.Errorf("got %q", out.String())
	}
}

func TestTraceBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"trace", "--file", "/nonexistent/smr-cri.log"}, "no such file", 1},
		{[]string{"trace", "--file", ""}, "--file must not be empty", 2},
		{[]string{"trace", "extra"}, "unexpected arguments", 2},
		{[]string{"trace", "--bogus"}, "flag provided but not defined", 2},
		{[]string{"trace", "--health-addr", "bad:addr:1", "--file", "/nonexistent"}, "health listener", 1},
	} {
		var out bytes.Buffer
		err := Run(context.Background(), c.args, &out, &out)
		if err == nil || !strings.Contains(err.Error(), c.want) || exitcode.Of(err) != c.code {
			t.Errorf("%q: got %v (exit %d), want %q (exit %d)", c.args, err, exitcode.Of(err), c.want, c.code)
		}
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"trace", "--help"}, &out, &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "--follow") {
		t.Errorf("trace --help: %v, %q", err, out.String())
	}
}

// TestTraceHealth: /healthz says 503 when smr-cri does not answer, and
// /metrics counts the printed lines.
func TestTraceHealth(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "log")
	appendFile(t, p, "one\ntwo\n")
	ctx, cancel := context.WithCancel(context.Background())
	out, errOut := &syncBuf{}, &syncBuf{}
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"trace", "--follow", "--file", p, "--health-addr", "127.0.0.1:0",
			"--socket", filepath.Join(dir, "missing.sock")}, out, errOut)
	}()
	waitOutput(t, errOut, "/metrics on ")
	waitOutput(t, out, "two\n")
	addr := strings.Fields(strings.SplitN(errOut.String(), "/metrics on ", 2)[1])[0]
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not answering") {
		t.Errorf("/healthz without smr-cri: %d %q", code, body)
	}
	if _, body := get("/metrics"); !strings.Contains(body, "smr_trace_lines_total 2") || !strings.Contains(body, "smr_daemon_up 0") {
		t.Errorf("/metrics: %q", body)
	}
	if !strings.Contains(errOut.String(), "serve's metrics not available") {
		t.Errorf("no word about serve's missing status socket: %q", errOut.String())
	}

	// serve's metrics come from its status socket (default beside --socket), merged in; garbage
	// there is reported and dropped, never failing the scrape.
	body := "# TYPE smr_commits_total counter\nsmr_commits_total{group=\"g\",kind=\"REQUEST\"} 7\n"
	stop, err := nodestatus.Serve(filepath.Join(dir, nodestatus.SocketName), func() nodestatus.Report { return nodestatus.Report{Node: "n"} },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) }))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if code, got := get("/metrics"); code != http.StatusOK || !strings.Contains(got, `smr_commits_total{group="g",kind="REQUEST"} 7`) ||
		!strings.Contains(got, "smr_trace_lines_total 2") {
		t.Errorf("/metrics with serve's socket: %d %q", code, got)
	}
	body = "not { prometheus text\n"
	if code, got := get("/metrics"); code != http.StatusOK || strings.Contains(got, "smr_commits_total") || !strings.Contains(got, "smr_trace_lines_total 2") {
		t.Errorf("/metrics with garbage from serve: %d %q", code, got)
	}
	waitOutput(t, errOut, "parse serve's metrics")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
