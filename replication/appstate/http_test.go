package appstate

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/examples/kvstore"
)

// serveKV runs the example kvstore on a loopback port.
func serveKV(t *testing.T) (*kvstore.Store, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := kvstore.New()
	srv := &http.Server{Handler: s}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s, ln.Addr().(*net.TCPAddr).Port
}

func kvApp(t *testing.T, port int) App {
	t.Helper()
	a, err := New(Config{Dialer: tcpDialer{"127.0.0.1"}, Port: port, Protocol: ProtoHTTP, SnapshotPath: kvstore.StatePath})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func put(t *testing.T, port int, key, val string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, "http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(port))+"/kv/"+key, strings.NewReader(val))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

func TestHTTPSnapshotContract(t *testing.T) {
	ctx := context.Background()
	_, pa := serveKV(t)
	_, pb := serveKV(t)
	dst, pc := serveKV(t)
	big := strings.Repeat("v", 900<<10) // the state spans several records
	for _, k := range []string{"x", "a", "m"} {
		put(t, pa, k, k+big)
	}
	for _, k := range []string{"m", "a", "x"} {
		put(t, pb, k, k+big)
	}
	put(t, pc, "junk", "1")
	da, err := kvApp(t, pa).Digest(ctx, DigestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if db, _ := kvApp(t, pb).Digest(ctx, DigestOptions{}); db != da {
		t.Fatalf("equal stores, different digests %s %s", da, db)
	}
	var buf bytes.Buffer
	st, err := kvApp(t, pa).Capture(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes != int64(buf.Len()) || st.Bytes < 3*900<<10 {
		t.Fatalf("capture stats %+v for a %d-byte stream", st, buf.Len())
	}
	snap := buf.Bytes()
	if _, err := kvApp(t, pc).Restore(ctx, bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if dc, _ := kvApp(t, pc).Digest(ctx, DigestOptions{}); dc != da {
		t.Fatalf("restored digest %s, want %s", dc, da)
	}
	var keys bytes.Buffer
	_ = dst.WriteState(&keys)
	if strings.Contains(keys.String(), "junk") {
		t.Fatal("restore kept the app's old key")
	}
	put(t, pb, "a", "changed")
	if db, _ := kvApp(t, pb).Digest(ctx, DigestOptions{}); db == da {
		t.Fatal("a changed value did not change the digest")
	}
	// A damaged stream never installs: the PUT body breaks before its end.
	bad := bytes.Clone(snap)
	bad[len(bad)/2] ^= 1
	if _, err := kvApp(t, pc).Restore(ctx, bytes.NewReader(bad)); err == nil {
		t.Fatal("restore of a damaged stream succeeded")
	}
	if dc, _ := kvApp(t, pc).Digest(ctx, DigestOptions{}); dc != da {
		t.Fatalf("a refused restore changed the app: %s", dc)
	}
	// An app without the contract has no snapshots.
	if _, err := New(Config{Dialer: tcpDialer{"127.0.0.1"}, Port: pa, Protocol: ProtoHTTP}); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("New without a snapshot path: %v, want ErrNoSnapshot", err)
	}
	// A path the app does not serve is an error naming it.
	noPath, _ := New(Config{Dialer: tcpDialer{"127.0.0.1"}, Port: pa, Protocol: ProtoHTTP, SnapshotPath: "/nothing"})
	if _, err := noPath.Capture(ctx, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "/nothing") {
		t.Fatalf("capture from a missing path: %v", err)
	}
}

// A state body over DigestOptions.MaxBytes is refused with ErrTooLarge
// (the digest is bounded); within the bound it is digested as without one.
func TestHTTPDigestBound(t *testing.T) {
	ctx := context.Background()
	_, port := serveKV(t)
	put(t, port, "k", strings.Repeat("v", 64<<10))
	a := kvApp(t, port)
	if _, err := a.Digest(ctx, DigestOptions{MaxBytes: 1 << 10}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("digest of a 64 KiB state bounded to 1 KiB: %v, want ErrTooLarge", err)
	}
	bounded, err := a.Digest(ctx, DigestOptions{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if free, _ := a.Digest(ctx, DigestOptions{}); free != bounded {
		t.Fatalf("digest within the bound %v != unbounded %v", bounded, free)
	}
}
