package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/pki"
)

func TestPKIInitAndIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ctx := context.Background()
	var out, errb strings.Builder
	if err := Run(ctx, []string{"pki", "init", "--dir", dir}, &out, &errb); err != nil || !strings.HasPrefix(out.String(), "created") {
		t.Fatalf("init: %v %q %q", err, out.String(), errb.String())
	}
	out.Reset()
	if err := Run(ctx, []string{"pki", "init", "--dir", dir}, &out, &errb); err != nil || !strings.HasPrefix(out.String(), "existing") {
		t.Fatalf("second init: %v %q", err, out.String())
	}
	certDir := filepath.Join(t.TempDir(), "m2")
	if err := Run(ctx, []string{"pki", "issue", "--dir", dir, "--group", "kv", "--member", "2", "--out", certDir}, &out, &errb); err != nil {
		t.Fatalf("issue: %v %q", err, errb.String())
	}
	st, err := os.Stat(filepath.Join(certDir, "tls.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("tls.key: %v %v", st, err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _ := os.ReadFile(filepath.Join(certDir, "tls.crt"))
	block, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.Authorize(leaf, "kv", 2); err != nil {
		t.Fatalf("issued certificate: %v", err)
	}
	if _, err := pki.VerifyPeer([]*x509.Certificate{leaf}, ca.Pool(), leaf.NotBefore.Add(time.Hour)); err != nil {
		t.Fatalf("issued certificate does not verify: %v", err)
	}
}

func TestPKIBadUsage(t *testing.T) {
	dir := t.TempDir()
	tests := [][]string{
		{"pki"},
		{"pki", "rotate", "--dir", dir},
		{"pki", "init"},
		{"pki", "init", "--dir", dir, "extra"},
		{"pki", "issue", "--dir", dir, "--group", "kv", "--out", dir},                                       // no member
		{"pki", "issue", "--dir", dir, "--group", "kv", "--member", "1", "--out", dir, "--validity", "-1h"}, // bad validity
	}
	for _, args := range tests {
		var out, errb strings.Builder
		if err := Run(context.Background(), args, &out, &errb); exitcode.Of(err) != 2 {
			t.Errorf("%v: exit %d (%v), want 2", args, exitcode.Of(err), err)
		}
	}
	// A directory without a CA is a runtime error (exit 1), with the path.
	var out, errb strings.Builder
	err := Run(context.Background(), []string{"pki", "issue", "--dir", dir, "--group", "kv", "--member", "1", "--out", filepath.Join(dir, "o")}, &out, &errb)
	if exitcode.Of(err) != 1 || !strings.Contains(err.Error(), "ca.crt") {
		t.Errorf("issue without a CA: %v", err)
	}
}
