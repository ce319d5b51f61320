package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/freeport"
)

// withCA sets a LazyCA over dir and a log captured in buf.
func withCA(dir string, buf *lockedBuffer) func(*Config) {
	return func(c *Config) {
		if dir != "" {
			c.CA = &pki.LazyCA{Dir: dir}
		}
		c.Log = slog.New(slog.NewTextHandler(buf, nil))
	}
}

// groupPod is member id of a static group whose members listen at ports.
func groupPod(id int, ports []int) podcontract.Pod {
	var peers []string
	for i, p := range ports {
		peers = append(peers, fmt.Sprintf("%d=127.0.0.1:%d", i+1, p))
	}
	pod := onePod("sb-m"+strconv.Itoa(id), ports[id-1])
	pod.Name = "redis-" + strconv.Itoa(id-1)
	pod.Annotations[podcontract.AnnotationPeers] = strings.Join(peers, ",")
	return pod
}

// Three daemons (as on three nodes) sharing one cluster CA directory order a
// group over mutual TLS: every replica's app executes the writes, each
// member logs raft_security=mtls, and a peer with a certificate from another
// CA is refused at the handshake.
func TestDaemonsOrderOverMutualTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	caDir := filepath.Join(t.TempDir(), "pki")
	if _, _, err := pki.EnsureCADir(caDir); err != nil {
		t.Fatal(err)
	}
	ports := []int{freeport.PortT(t), freeport.PortT(t), freeport.PortT(t)}
	var apps []*counterApp
	var logs []*lockedBuffer
	var first string
	for id := 1; id <= 3; id++ {
		app, buf := newCounterApp(t), &lockedBuffer{}
		ld := newLoopbackDaemonWithConfig(t, t.TempDir(), app, withCA(caDir, buf))
		defer ld.Close(context.Background())
		if err := ld.AttachPod(ctx, groupPod(id, ports)); err != nil {
			t.Fatalf("attach member %d: %v", id, err)
		}
		addr := <-ld.clientAddr
		if id == 1 {
			first = addr
		}
		apps, logs = append(apps, app), append(logs, buf)
	}
	incr(t, ctx, first, 10)
	for i, app := range apps {
		for _, k := app.counts(); k != 10; _, k = app.counts() {
			if ctx.Err() != nil {
				t.Fatalf("replica %d: k=%d, want 10 (log:\n%s)", i+1, k, logs[i])
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(logs[i].String(), "raft_security=mtls") {
			t.Errorf("member %d did not log raft_security=mtls:\n%s", i+1, logs[i])
		}
	}

	// A genuine-looking certificate for member 2, from another CA.
	foreign, err := pki.NewCA("rogue CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := foreign.Issue([]pki.Identity{{Group: "default.redis", Member: 2}}, pki.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]*tls.Config{
		"no certificate": {InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
		"foreign CA":     {InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}},
	} {
		conn, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(ports[0]), cfg)
		if err == nil {
			// TLS 1.3: the server's refusal of the client certificate
			// arrives after the client's side of the handshake.
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil || strings.Contains(err.Error(), "timeout") {
			t.Errorf("%s: raft port accepted the connection (err %v)", name, err)
		}
		t.Logf("%s: refused: %v", name, err)
	}
	if n, k := apps[0].counts(); n != 10 || k != 10 {
		t.Errorf("after the rogue connections: %d INCRs, k=%d; want 10, 10", n, k)
	}
}

// The cluster CA is loaded at the first attach: a bad --pki-dir fails that
// attach with an error naming the CA and --insecure-raft, attaches nothing,
// and the next attach retries once the directory is fixed.
func TestBadPKIDirFailsAttach(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string) // makes dir bad
		want    string
	}{
		{"path under a file", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Dir(dir), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a directory"},
		{"corrupt certificate", func(t *testing.T, dir string) {
			writeCAFiles(t, dir, "garbage", "garbage")
		}, "no PEM CERTIFICATE block"},
		{"key without certificate", func(t *testing.T, dir string) {
			writeCAFiles(t, dir, "", "garbage")
		}, "ca.crt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := filepath.Join(t.TempDir(), "parent", "pki")
			if err := os.MkdirAll(filepath.Dir(filepath.Dir(dir)), 0o700); err != nil {
				t.Fatal(err)
			}
			tc.prepare(t, dir)
			buf := &lockedBuffer{}
			ld := newLoopbackDaemonWithConfig(t, t.TempDir(), newCounterApp(t), withCA(dir, buf))
			defer ld.Close(ctx)
			pod := onePod("sb-bad-ca", freeport.PortT(t))
			err := ld.AttachPod(ctx, pod)
			if err == nil || !strings.Contains(err.Error(), "cluster CA (mutual TLS between ordering nodes; --insecure-raft turns it off)") ||
				!strings.Contains(err.Error(), tc.want) {
				t.Fatalf("attach with a bad CA dir: %v, want the CA error containing %q", err, tc.want)
			}
			if len(ld.Attached()) != 0 {
				t.Fatalf("attached %v after a failed attach", ld.Attached())
			}
			// Fixed directory: the next attach creates the CA and starts.
			if err := os.RemoveAll(filepath.Dir(dir)); err != nil {
				t.Fatal(err)
			}
			if err := ld.AttachPod(ctx, pod); err != nil {
				t.Fatalf("attach after fixing the CA dir: %v", err)
			}
			if _, err := pki.LoadCA(dir); err != nil {
				t.Errorf("CA not created in %s: %v", dir, err)
			}
		})
	}
}

func writeCAFiles(t *testing.T, dir, cert, key string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if cert != "" {
		if err := os.WriteFile(filepath.Join(dir, pki.CACertFile), []byte(cert), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, pki.CAKeyFile), []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Without a CA (serve --insecure-raft) raft is plaintext, and New says so
// loudly.
func TestNoCAIsPlaintextWithWarning(t *testing.T) {
	ctx := context.Background()
	buf := &lockedBuffer{}
	ld := newLoopbackDaemonWithConfig(t, t.TempDir(), newCounterApp(t), withCA("", buf))
	defer ld.Close(ctx)
	if !strings.Contains(buf.String(), "level=WARN msg=\"INSECURE: raft traffic is plaintext and unauthenticated") {
		t.Errorf("no INSECURE warning at New:\n%s", buf)
	}
	if err := ld.AttachPod(ctx, onePod("sb-plain", freeport.PortT(t))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "raft_security=plaintext") {
		t.Errorf("member did not log raft_security=plaintext:\n%s", buf)
	}
}
