package transport

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"go.etcd.io/raft/v3/raftpb"
)

// recHandler records what a transport hands to raft.
type recHandler struct {
	mu          sync.Mutex
	delivered   []*raftpb.Message
	got         chan struct{}
	unreachable chan uint64
}

func newRecHandler() *recHandler {
	return &recHandler{got: make(chan struct{}, 64), unreachable: make(chan uint64, 64)}
}

func (h *recHandler) Deliver(_ string, msgs []*raftpb.Message) {
	h.mu.Lock()
	h.delivered = append(h.delivered, msgs...)
	h.mu.Unlock()
	h.got <- struct{}{}
}
func (h *recHandler) ReportUnreachable(_ string, to uint64) { h.unreachable <- to }
func (h *recHandler) ReportSnapshot(string, uint64, bool)   {}

func (h *recHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.delivered)
}

// logLines collects log lines so a test can wait for a refusal.
type logLines chan string

func (l logLines) Write(p []byte) (int, error) {
	select {
	case l <- string(p):
	default:
	}
	return len(p), nil
}

func (l logLines) waitFor(t *testing.T, substr string) string {
	t.Helper()
	deadline := time.After(20 * time.Second) // failure bound only, not a timing assertion
	for {
		select {
		case line := <-l:
			if strings.Contains(line, substr) {
				return line
			}
		case <-deadline:
			t.Fatalf("no log line containing %q", substr)
		}
	}
}

func allowAll(*x509.Certificate, string, uint64) error { return nil }

func startTLS(t *testing.T, listen bool, tc *tls.Config, auth AuthorizeFunc, h *recHandler) (*GRPC, logLines) {
	t.Helper()
	logs := make(logLines, 256)
	cfg := Config{TLS: tc, AuthorizePeer: auth, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if listen {
		cfg.Listen = "127.0.0.1:0"
	}
	return startTransport(t, cfg, h), logs
}

func heartbeat(from, to uint64) []*raftpb.Message {
	return []*raftpb.Message{{Type: raftpb.MsgHeartbeat.Enum(), From: new(from), To: new(to), Term: new(uint64(1))}}
}

func TestNewTLSConfigNeedsAuthorize(t *testing.T) {
	for _, cfg := range []Config{{TLS: &tls.Config{}}, {AuthorizePeer: allowAll}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("config TLS=%v AuthorizePeer=%v accepted", cfg.TLS != nil, cfg.AuthorizePeer != nil)
		}
	}
}

// Member 1 of group kv serves with mutual TLS; senders with various
// certificates try to deliver a message claiming to come from some member.
// Only a certificate proving exactly that membership gets through; every
// other one is refused with a reason in the server's log and nothing
// reaches raft.
func TestTLSServerRefusesPeers(t *testing.T) {
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreignCA, _ := pki.NewCA("foreign CA", time.Hour)
	issue := func(ca *pki.CA, opts pki.IssueOptions, ids ...pki.Identity) *tls.Certificate {
		c, err := ca.Issue(ids, opts)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	now := time.Now()
	srvCert := issue(ca, pki.IssueOptions{}, pki.Identity{Group: "kv", Member: 1})
	rogueTLS := func(c *tls.Certificate) *tls.Config {
		cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
		if c != nil {
			cfg.Certificates = []tls.Certificate{*c}
		}
		return cfg
	}
	tests := []struct {
		name    string
		tls     *tls.Config // sender's
		group   string
		from    uint64
		wantLog string // "" = delivered
		also    uint64 // if set, a second message in the same batch claims this sender
	}{
		{"member", pki.TLSConfig(ca.Pool(), pki.Static{Cert: issue(ca, pki.IssueOptions{}, pki.Identity{Group: "kv", Member: 2})}), "kv", 2, "", 0},
		{"plaintext", nil, "kv", 2, "refused peer connection", 0},
		{"no certificate", rogueTLS(nil), "kv", 2, "no certificate", 0},
		{"foreign CA", rogueTLS(issue(foreignCA, pki.IssueOptions{}, pki.Identity{Group: "kv", Member: 2})), "kv", 2, "not signed by the cluster CA", 0},
		{"expired", rogueTLS(issue(ca, pki.IssueOptions{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}, pki.Identity{Group: "kv", Member: 2})), "kv", 2, "expired at", 0},
		{"wrong group", rogueTLS(issue(ca, pki.IssueOptions{}, pki.Identity{Group: "web", Member: 2})), "kv", 2, "is not valid for group kv", 0},
		{"wrong member", rogueTLS(issue(ca, pki.IssueOptions{}, pki.Identity{Group: "kv", Member: 2})), "kv", 3, "member id mismatch", 0},
		// A genuine first message does not carry a forged second one.
		{"wrong member after a valid one", rogueTLS(issue(ca, pki.IssueOptions{}, pki.Identity{Group: "kv", Member: 2})), "kv", 2, "member id mismatch", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newRecHandler()
			srv, logs := startTLS(t, true, pki.TLSConfig(ca.Pool(), pki.Static{Cert: srvCert}), pki.Authorize, h)
			var auth AuthorizeFunc
			if tc.tls != nil {
				auth = allowAll
				if tc.wantLog == "" {
					auth = pki.Authorize
				}
			}
			cli, _ := startTLS(t, false, tc.tls, auth, newRecHandler())
			msgs := heartbeat(tc.from, 1)
			if tc.also != 0 {
				msgs = append(msgs, heartbeat(tc.also, 1)...)
			}
			cli.Send(tc.group, 1, srv.Addr(), msgs)
			if tc.wantLog == "" {
				<-h.got
				h.mu.Lock()
				defer h.mu.Unlock()
				if m := h.delivered[0]; m.GetFrom() != tc.from {
					t.Fatalf("delivered %v", m)
				}
				return
			}
			line := logs.waitFor(t, tc.wantLog)
			t.Logf("server log: %s", strings.TrimSpace(line))
			srv.Close() // drains the server: nothing can still be on its way to raft
			if n := h.count(); n != 0 {
				t.Fatalf("%d messages reached raft", n)
			}
		})
	}
}

// The client side checks the server too: a batch for member 1 is not
// written to a server whose certificate proves another membership; it is
// dropped and reported unreachable.
func TestTLSClientRefusesWrongServer(t *testing.T) {
	mk := memberTLS(t)
	srvH := newRecHandler()
	srv, _ := startTLS(t, true, mk(pki.Identity{Group: "kv", Member: 3}), pki.Authorize, srvH)
	cliH := newRecHandler()
	cli, logs := startTLS(t, false, mk(pki.Identity{Group: "kv", Member: 2}), pki.Authorize, cliH)
	cli.Send("kv", 1, srv.Addr(), heartbeat(2, 1))
	if to := <-cliH.unreachable; to != 1 {
		t.Fatalf("unreachable report for %d", to)
	}
	logs.waitFor(t, "member id mismatch")
	srv.Close()
	if n := srvH.count(); n != 0 {
		t.Fatalf("%d messages reached the wrong server's raft", n)
	}
}

// memberTLS returns a function issuing, from a new test CA, the TLS
// configuration of a member proving one identity.
func memberTLS(t *testing.T) func(pki.Identity) *tls.Config {
	t.Helper()
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return func(id pki.Identity) *tls.Config {
		c, err := ca.Issue([]pki.Identity{id}, pki.IssueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return pki.TLSConfig(ca.Pool(), pki.Static{Cert: c})
	}
}
