package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func mustIssue(t *testing.T, ca *CA, opts IssueOptions, ids ...Identity) *tls.Certificate {
	t.Helper()
	c, err := ca.Issue(ids, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIdentityRoundTrip(t *testing.T) {
	for _, id := range []Identity{{"kv", 1}, {"default/redis", 7}, {"a b%c", 1 << 40}} {
		u, err := url.Parse(id.URI().String())
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseIdentity(u)
		if err != nil || got != id {
			t.Errorf("round trip %v via %s = %v, %v", id, u, got, err)
		}
	}
}

func TestParseIdentityBad(t *testing.T) {
	for _, s := range []string{
		"https://smr.io/group/kv/member/1",
		"spiffe://other.io/group/kv/member/1",
		"spiffe://smr.io/group/kv/member/0",
		"spiffe://smr.io/group/kv/member/x",
		"spiffe://smr.io/group//member/1",
		"spiffe://smr.io/group/kv",
		"spiffe://smr.io/ns/kv/member/1",
	} {
		u, _ := url.Parse(s)
		if _, err := ParseIdentity(u); err == nil {
			t.Errorf("ParseIdentity(%s) accepted", s)
		}
	}
}

func TestAuthorize(t *testing.T) {
	ca := mustCA(t)
	leaf := mustIssue(t, ca, IssueOptions{}, Identity{"kv", 2}, Identity{"web", 5}).Leaf
	tests := []struct {
		group   string
		member  uint64
		wantErr string
	}{
		{"kv", 2, ""},
		{"web", 5, ""},
		{"kv", 3, "member id mismatch"},
		{"other", 2, "is not valid for group other"},
	}
	for _, tc := range tests {
		err := Authorize(leaf, tc.group, tc.member)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Authorize(%s,%d) = %v, want %q", tc.group, tc.member, err, tc.wantErr)
		}
	}
	if err := Authorize(nil, "kv", 1); err == nil {
		t.Error("nil certificate authorized")
	}
}

func TestIssueBadInput(t *testing.T) {
	ca := mustCA(t)
	now := time.Now()
	tests := []struct {
		name string
		ids  []Identity
		opts IssueOptions
	}{
		{"no identities", nil, IssueOptions{}},
		{"empty group", []Identity{{"", 1}}, IssueOptions{}},
		{"member 0", []Identity{{"kv", 0}}, IssueOptions{}},
		{"inverted validity", []Identity{{"kv", 1}}, IssueOptions{NotBefore: now, NotAfter: now.Add(-time.Hour)}},
	}
	for _, tc := range tests {
		if _, err := ca.Issue(tc.ids, tc.opts); err == nil {
			t.Errorf("%s: Issue accepted", tc.name)
		}
	}
	if _, err := NewCA("x", 0); err == nil {
		t.Error("NewCA accepted zero validity")
	}
}

func TestVerifyPeer(t *testing.T) {
	ca, other := mustCA(t), mustCA(t)
	now := time.Now()
	good := mustIssue(t, ca, IssueOptions{}, Identity{"kv", 1}).Leaf
	expired := mustIssue(t, ca, IssueOptions{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}, Identity{"kv", 1}).Leaf
	future := mustIssue(t, ca, IssueOptions{NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)}, Identity{"kv", 1}).Leaf
	foreign := mustIssue(t, other, IssueOptions{}, Identity{"kv", 1}).Leaf
	tests := []struct {
		name    string
		chain   []*x509.Certificate
		wantErr string
	}{
		{"good", []*x509.Certificate{good}, ""},
		{"none", nil, "no certificate"},
		{"expired", []*x509.Certificate{expired}, "expired at"},
		{"not yet valid", []*x509.Certificate{future}, "not valid before"},
		{"other CA", []*x509.Certificate{foreign}, "not signed by the cluster CA"},
		{"CA itself", []*x509.Certificate{ca.Cert}, "no smr-cri member identity"},
	}
	for _, tc := range tests {
		_, err := VerifyPeer(tc.chain, ca.Pool(), now)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: VerifyPeer = %v, want %q", tc.name, err, tc.wantErr)
		}
	}
}

func TestCADirRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, created, err := EnsureCADir(dir)
	if err != nil || !created {
		t.Fatalf("EnsureCADir = %v, %v", created, err)
	}
	st, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode: %v %v", st, err)
	}
	again, created, err := EnsureCADir(dir)
	if err != nil || created || !again.Cert.Equal(ca.Cert) {
		t.Fatalf("second EnsureCADir = %v, %v (same CA: %v)", created, err, err == nil && again.Cert.Equal(ca.Cert))
	}
	// A directory holding only one of the two files is an error, not a new CA.
	os.Remove(filepath.Join(dir, CAKeyFile))
	if _, _, err := EnsureCADir(dir); err == nil {
		t.Error("EnsureCADir with a missing key succeeded")
	}
}

func TestParseCABad(t *testing.T) {
	a, b := mustCA(t), mustCA(t)
	leaf := mustIssue(t, a, IssueOptions{}, Identity{"kv", 1})
	leafPEM, leafKey, err := EncodeCert(leaf)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		cert, key []byte
	}{
		{"garbage", []byte("x"), a.KeyPEM},
		{"no key", a.CertPEM, []byte("x")},
		{"mismatched key", a.CertPEM, b.KeyPEM},
		{"not a CA", leafPEM, leafKey},
	}
	for _, tc := range tests {
		if _, err := ParseCA(tc.cert, tc.key); err == nil {
			t.Errorf("%s: ParseCA accepted", tc.name)
		}
	}
}

func TestIssuerRotates(t *testing.T) {
	ca := mustCA(t)
	is, err := NewIssuer(ca, []Identity{{"kv", 1}}, 3*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := is.Certificate()
	start := time.Now()
	tests := []struct {
		after   time.Duration
		rotated bool
	}{
		{time.Hour, false},                // 2h of 3h left
		{2*time.Hour + time.Minute, true}, // < 1h left
	}
	for _, tc := range tests {
		is.now = func() time.Time { return start.Add(tc.after) }
		c, err := is.Certificate()
		if err != nil {
			t.Fatal(err)
		}
		if (c != first) != tc.rotated {
			t.Errorf("after %v: rotated=%v, want %v", tc.after, c != first, tc.rotated)
		}
	}
	if err := is.SetIdentities([]Identity{{"kv", 1}, {"web", 1}}); err != nil {
		t.Fatal(err)
	}
	c, _ := is.Certificate()
	if len(Identities(c.Leaf)) != 2 {
		t.Errorf("SetIdentities: certificate carries %v", Identities(c.Leaf))
	}
}

// A real handshake over loopback: both sides verify, and the connection
// state yields the peer's identities; a peer from another CA is refused.
func TestTLSConfigHandshake(t *testing.T) {
	ca, other := mustCA(t), mustCA(t)
	srvCert := mustIssue(t, ca, IssueOptions{}, Identity{"kv", 1})
	tests := []struct {
		name    string
		client  *tls.Certificate
		wantErr bool
	}{
		{"member", mustIssue(t, ca, IssueOptions{}, Identity{"kv", 2}), false},
		{"other CA", mustIssue(t, other, IssueOptions{}, Identity{"kv", 2}), true},
	}
	for _, tc := range tests {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srvErr := make(chan error, 1)
		go func() {
			c, err := lis.Accept()
			if err != nil {
				srvErr <- err
				return
			}
			defer c.Close()
			tc := tls.Server(c, TLSConfig(ca.Pool(), Static{srvCert}))
			srvErr <- tc.HandshakeContext(context.Background())
		}()
		conn, err := tls.Dial("tcp", lis.Addr().String(), TLSConfig(ca.Pool(), Static{tc.client}))
		if err == nil {
			// TLS 1.3: the server's verdict on the client arrives after the
			// client's handshake; a read surfaces it.
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			one := make([]byte, 1)
			conn.Read(one)
			conn.Close()
		}
		serr := <-srvErr
		lis.Close()
		if (serr != nil) != tc.wantErr {
			t.Errorf("%s: server handshake = %v, wantErr %v", tc.name, serr, tc.wantErr)
		}
	}
}

type memStore struct {
	data    map[string]map[string][]byte
	racer   func() // called before Create, to simulate another node winning
	creates int
}

func (m *memStore) GetSecret(_ context.Context, ns, name string) (map[string][]byte, bool, error) {
	d, ok := m.data[ns+"/"+name]
	return d, ok, nil
}

func (m *memStore) CreateSecret(_ context.Context, ns, name string, data map[string][]byte) (bool, error) {
	if m.racer != nil {
		m.racer()
		m.racer = nil
	}
	m.creates++
	if _, ok := m.data[ns+"/"+name]; ok {
		return true, nil
	}
	m.data[ns+"/"+name] = data
	return false, nil
}

func TestEnsureCASecret(t *testing.T) {
	ctx := context.Background()
	s := &memStore{data: map[string]map[string][]byte{}}
	ca, created, err := EnsureCASecret(ctx, s, SecretNamespace, SecretName)
	if err != nil || !created {
		t.Fatalf("first: %v %v", created, err)
	}
	again, created, err := EnsureCASecret(ctx, s, SecretNamespace, SecretName)
	if err != nil || created || !again.Cert.Equal(ca.Cert) {
		t.Fatalf("second: %v %v", created, err)
	}
	// Another node creates the Secret between our Get and Create: we use its CA.
	winner := mustCA(t)
	race := &memStore{data: map[string]map[string][]byte{}}
	race.racer = func() {
		race.data[SecretNamespace+"/"+SecretName] = map[string][]byte{CACertFile: winner.CertPEM, CAKeyFile: winner.KeyPEM}
	}
	got, created, err := EnsureCASecret(ctx, race, SecretNamespace, SecretName)
	if err != nil || created || !got.Cert.Equal(winner.Cert) {
		t.Fatalf("race: created=%v err=%v", created, err)
	}
	// A corrupt Secret is an error, never silently replaced.
	bad := &memStore{data: map[string]map[string][]byte{SecretNamespace + "/" + SecretName: {CACertFile: []byte("x")}}}
	if _, _, err := EnsureCASecret(ctx, bad, SecretNamespace, SecretName); err == nil || !strings.Contains(err.Error(), "secret") {
		t.Errorf("corrupt secret: %v", err)
	}
}

type failingStore struct{}

func (failingStore) GetSecret(context.Context, string, string) (map[string][]byte, bool, error) {
	return nil, false, errors.New("api server unreachable")
}
func (failingStore) CreateSecret(context.Context, string, string, map[string][]byte) (bool, error) {
	return false, errors.New("api server unreachable")
}

func TestEnsureCA(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		store      SecretStore
		precache   bool
		wantSource string
		wantErr    bool
	}{
		{"dir only, empty", nil, false, "created in", false},
		{"dir only, existing", nil, true, "loaded from", false},
		{"secret created and cached", &memStore{data: map[string]map[string][]byte{}}, false, "created secret smr-system/smr-cri-ca", false},
		{"secret created from the CA in dir", &memStore{data: map[string]map[string][]byte{}}, true, "created secret smr-system/smr-cri-ca", false},
		{"api down, cached copy", failingStore{}, true, "cached copy", false},
		{"api down, no copy", failingStore{}, false, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.precache {
				if _, _, err := EnsureCADir(dir); err != nil {
					t.Fatal(err)
				}
			}
			seeded, _ := LoadCA(dir)
			ca, src, err := EnsureCA(ctx, dir, tc.store)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if !strings.Contains(src, tc.wantSource) {
				t.Errorf("source %q, want %q", src, tc.wantSource)
			}
			cached, err := LoadCA(dir)
			if err != nil || !cached.Cert.Equal(ca.Cert) {
				t.Errorf("dir does not hold the CA: %v", err)
			}
			if seeded != nil && !seeded.Cert.Equal(ca.Cert) {
				t.Errorf("the CA already in dir was replaced")
			}
		})
	}
}

func TestNewMemberMembership(t *testing.T) {
	ca := mustCA(t)
	members := map[uint64]bool{1: true, 2: true}
	m, err := NewMember(ca, []Identity{{"kv", 1}}, 0, func(g string, id uint64) bool { return members[id] })
	if err != nil {
		t.Fatal(err)
	}
	peer := mustIssue(t, ca, IssueOptions{}, Identity{"kv", 2}).Leaf
	if err := m.Authorize(peer, "kv", 2); err != nil {
		t.Fatalf("current member refused: %v", err)
	}
	delete(members, 2) // member 2 removed; its certificate is still valid
	if err := m.Authorize(peer, "kv", 2); err == nil || !strings.Contains(err.Error(), "not a current member") {
		t.Fatalf("removed member: %v", err)
	}
	if _, err := NewMember(ca, nil, 0, nil); err == nil {
		t.Fatal("NewMember without identities accepted")
	}
}

// flakyStore fails until ok is set (RBAC not applied yet).
type flakyStore struct {
	memStore
	ok bool
}

func (f *flakyStore) GetSecret(ctx context.Context, ns, name string) (map[string][]byte, bool, error) {
	if !f.ok {
		return nil, false, errors.New("secrets \"smr-cri-ca\" is forbidden")
	}
	return f.memStore.GetSecret(ctx, ns, name)
}

func TestLazyCARetries(t *testing.T) {
	ctx := context.Background()
	store := &flakyStore{memStore: memStore{data: map[string]map[string][]byte{}}}
	var sources []string
	l := &LazyCA{Dir: t.TempDir(), Store: store, Loaded: func(s string) { sources = append(sources, s) }}
	if _, err := l.Get(ctx); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("first Get = %v, want the forbidden error", err)
	}
	store.ok = true
	first, err := l.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	again, err := l.Get(ctx)
	if err != nil || again != first || len(sources) != 1 || store.creates != 1 {
		t.Fatalf("second Get: same=%v err=%v sources=%v creates=%d", again == first, err, sources, store.creates)
	}
}

// The TLS config asks the issuer at every handshake: once a third of the
// lifetime remains, the next handshake presents a new certificate (same
// identity, later expiry) and the peer still accepts it.
func TestRotationReachesHandshakes(t *testing.T) {
	ca := mustCA(t)
	is, err := NewIssuer(ca, []Identity{{"kv", 1}}, 3*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The first certificate was issued two hours ago (1h of 3h left).
	start := time.Now()
	is.now = func() time.Time { return start.Add(-2 * time.Hour) }
	if err := is.SetIdentities([]Identity{{"kv", 1}}); err != nil {
		t.Fatal(err)
	}
	client := TLSConfig(ca.Pool(), Static{mustIssue(t, ca, IssueOptions{}, Identity{"kv", 2})})
	handshake := func() *x509.Certificate {
		t.Helper()
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		errc := make(chan error, 1)
		go func() { errc <- tls.Server(a, TLSConfig(ca.Pool(), is)).HandshakeContext(context.Background()) }()
		c := tls.Client(b, client)
		if err := c.HandshakeContext(context.Background()); err != nil {
			t.Fatalf("client handshake: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("server handshake: %v", err)
		}
		return c.ConnectionState().PeerCertificates[0]
	}
	first := handshake() // the issuer still thinks it is two hours ago: no renewal
	is.now = time.Now    // now only a third is left: the next handshake renews
	second := handshake()
	if first.SerialNumber.Cmp(second.SerialNumber) == 0 || !second.NotAfter.After(first.NotAfter) {
		t.Fatalf("no rotation: serial %v -> %v, expiry %v -> %v", first.SerialNumber, second.SerialNumber, first.NotAfter, second.NotAfter)
	}
	if err := Authorize(second, "kv", 1); err != nil {
		t.Fatalf("rotated certificate: %v", err)
	}
}
