package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"
)

// CertSource yields the certificate to present; it may change between
// handshakes (rotation).
type CertSource interface {
	Certificate() (*tls.Certificate, error)
}

// Static is a fixed certificate (tests, externally managed certificates).
type Static struct{ Cert *tls.Certificate }

// Certificate implements CertSource.
func (s Static) Certificate() (*tls.Certificate, error) {
	if s.Cert == nil {
		return nil, errors.New("pki: no certificate configured")
	}
	return s.Cert, nil
}

// Issuer holds this node's member certificate, issued by the cluster CA for
// the node's current identities, and re-issues it once less than a third of
// its lifetime remains. Each TLS handshake asks it for the certificate, so
// rotation needs no restart.
type Issuer struct {
	ca       *CA
	validity time.Duration
	now      func() time.Time

	mu  sync.Mutex
	ids []Identity
	cur *tls.Certificate
}

// NewIssuer issues the first certificate for ids (validity 0 means
// DefaultMemberValidity).
func NewIssuer(ca *CA, ids []Identity, validity time.Duration) (*Issuer, error) {
	if ca == nil {
		return nil, errors.New("pki: issuer needs a CA")
	}
	if validity < 0 {
		return nil, fmt.Errorf("pki: negative certificate validity %v", validity)
	}
	if validity == 0 {
		validity = DefaultMemberValidity
	}
	i := &Issuer{ca: ca, validity: validity, now: time.Now}
	if err := i.SetIdentities(ids); err != nil {
		return nil, err
	}
	return i, nil
}

// SetIdentities re-issues the certificate for a new set of memberships
// (a group added to or removed from this node).
func (i *Issuer) SetIdentities(ids []Identity) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	c, err := i.issue(ids)
	if err != nil {
		return err
	}
	i.ids, i.cur = append([]Identity(nil), ids...), c
	return nil
}

func (i *Issuer) issue(ids []Identity) (*tls.Certificate, error) {
	now := i.now()
	return i.ca.Issue(ids, IssueOptions{NotBefore: now.Add(-time.Minute), NotAfter: now.Add(i.validity)})
}

// Certificate implements CertSource, rotating when due.
func (i *Issuer) Certificate() (*tls.Certificate, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if NeedsRenewal(i.cur.Leaf, i.now()) {
		c, err := i.issue(i.ids)
		if err != nil {
			// Keep serving the old certificate while it is still valid.
			if i.now().Before(i.cur.Leaf.NotAfter) {
				return i.cur, nil
			}
			return nil, fmt.Errorf("pki: renew member certificate: %w", err)
		}
		i.cur = c
	}
	return i.cur, nil
}

// NeedsRenewal reports whether less than a third of cert's lifetime remains.
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotAfter.Sub(now) < life/3
}

// TLSConfig is the mutual-TLS configuration of an ordering node, for its
// server and its client side alike: present src's certificate and require
// the peer's certificate to chain to the cluster CA (roots), be within its
// validity period and carry at least one member identity. Which membership a
// peer may speak for is checked per message with Authorize.
func TLSConfig(roots *x509.CertPool, src CertSource) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return src.Certificate()
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.Certificate()
		},
		// Request (not require) a client certificate so that a missing one
		// fails in VerifyConnection with our clear error.
		ClientAuth: tls.RequestClientCert,
		// Peers are identified by URI SANs, not host names: the chain is
		// verified in VerifyConnection instead of by crypto/tls.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := VerifyPeer(cs.PeerCertificates, roots, time.Now())
			return err
		},
	}
}

// VerifyPeer checks a peer's certificate chain (leaf first) against the
// cluster CA at time now and returns the leaf.
func VerifyPeer(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("smr-cri: peer presented no certificate (mutual TLS is required)")
	}
	leaf := chain[0]
	name := leaf.Subject.CommonName
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("smr-cri: peer certificate %q expired at %s", name, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("smr-cri: peer certificate %q is not valid before %s", name, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("smr-cri: peer certificate %q is not signed by the cluster CA: %w", name, err)
	}
	if len(Identities(leaf)) == 0 {
		return nil, fmt.Errorf("smr-cri: peer certificate %q carries no smr-cri member identity", name)
	}
	return leaf, nil
}

// EncodeCert returns the PEM certificate chain and PEM private key of c.
func EncodeCert(c *tls.Certificate) (certPEM, keyPEM []byte, err error) {
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: marshal member key: %w", err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// SecretStore is the part of a Kubernetes client EnsureCASecret needs (an
// adapter over internal/kubecore's Secrets(namespace) in the daemon/installer).
type SecretStore interface {
	// GetSecret returns the secret's data; found is false if it does not exist.
	GetSecret(ctx context.Context, namespace, name string) (data map[string][]byte, found bool, err error)
	// CreateSecret creates it; alreadyExists is true (and err nil) if another
	// writer created it first.
	CreateSecret(ctx context.Context, namespace, name string, data map[string][]byte) (alreadyExists bool, err error)
}

// Where the installer keeps the cluster CA.
const (
	SecretNamespace = "smr-system"
	SecretName      = "smr-cri-ca"
)

// EnsureCASecret returns the cluster CA kept in the Secret namespace/name,
// creating it if missing. Two nodes racing to create it end with the same
// CA: the loser re-reads the winner's Secret.
func EnsureCASecret(ctx context.Context, s SecretStore, namespace, name string) (ca *CA, created bool, err error) {
	return ensureCASecret(ctx, s, namespace, name, nil)
}

// ensureCASecret is EnsureCASecret that, if the Secret is missing, stores
// seed (when not nil) instead of a new CA.
func ensureCASecret(ctx context.Context, s SecretStore, namespace, name string, seed *CA) (ca *CA, created bool, err error) {
	for attempt := 0; attempt < 2; attempt++ {
		data, found, err := s.GetSecret(ctx, namespace, name)
		if err != nil {
			return nil, false, fmt.Errorf("pki: get secret %s/%s: %w", namespace, name, err)
		}
		if found {
			ca, err := ParseCA(data[CACertFile], data[CAKeyFile])
			if err != nil {
				return nil, false, fmt.Errorf("%w (secret %s/%s)", err, namespace, name)
			}
			return ca, false, nil
		}
		ca := seed
		if ca == nil {
			if ca, err = NewCA("smr-cri cluster CA", DefaultCAValidity); err != nil {
				return nil, false, err
			}
		}
		exists, err := s.CreateSecret(ctx, namespace, name, map[string][]byte{CACertFile: ca.CertPEM, CAKeyFile: ca.KeyPEM})
		if err != nil {
			return nil, false, fmt.Errorf("pki: create secret %s/%s: %w", namespace, name, err)
		}
		if !exists {
			return ca, true, nil
		}
	}
	return nil, false, fmt.Errorf("pki: secret %s/%s was created concurrently but cannot be read", namespace, name)
}

// Member is the transport security of one ordering node: the TLS config to
// serve and dial with, and the per-message authorization that binds a
// raft message's group and sender to the peer's certificate.
type Member struct {
	TLS    *tls.Config
	Issuer *Issuer
	// Authorize has the signature of transport.AuthorizeFunc.
	Authorize func(cert *x509.Certificate, group string, member uint64) error
}

// NewMember issues the certificate for self from ca (rotated by the
// Issuer) and builds the mutual-TLS settings. isMember, if not nil, is
// asked whether a certificate-proven sender is still a current member of
// the group (a removed member's unexpired certificate is then refused).
func NewMember(ca *CA, self []Identity, validity time.Duration, isMember func(group string, member uint64) bool) (*Member, error) {
	is, err := NewIssuer(ca, self, validity)
	if err != nil {
		return nil, err
	}
	auth := func(cert *x509.Certificate, group string, member uint64) error {
		if err := Authorize(cert, group, member); err != nil {
			return err
		}
		if isMember != nil && !isMember(group, member) {
			return fmt.Errorf("smr-cri: member %d is not a current member of group %s", member, group)
		}
		return nil
	}
	return &Member{TLS: TLSConfig(ca.Pool(), is), Issuer: is, Authorize: auth}, nil
}

// EnsureCA returns the cluster CA for a node daemon. With a SecretStore
// (Kubernetes), the Secret is the source of truth: it is created if
// missing (the first node to start creates it, from the CA already in dir
// if there is one; the others read it) and cached in dir, so a restart while the API server is unreachable still
// finds it. Without one (a single node, the local test cluster), dir holds
// the CA and it is created there if missing. source says where it came
// from, for the log.
func EnsureCA(ctx context.Context, dir string, store SecretStore) (ca *CA, source string, err error) {
	if store == nil {
		ca, created, err := EnsureCADir(dir)
		if err != nil {
			return nil, "", err
		}
		if created {
			return ca, "created in " + dir, nil
		}
		return ca, "loaded from " + dir, nil
	}
	// A CA already in dir (e.g. made by 'smr-cri pki init') becomes the
	// cluster CA if the Secret does not exist yet.
	seed, _ := LoadCA(dir)
	ca, created, err := ensureCASecret(ctx, store, SecretNamespace, SecretName, seed)
	if err != nil {
		cached, cerr := LoadCA(dir)
		if cerr != nil {
			return nil, "", fmt.Errorf("%w; no cached copy either: %w", err, cerr)
		}
		return cached, fmt.Sprintf("cached copy in %s (secret unavailable: %v)", dir, err), nil
	}
	if err := ca.Save(dir); err != nil {
		return nil, "", err
	}
	if created {
		return ca, "created secret " + SecretNamespace + "/" + SecretName, nil
	}
	return ca, "secret " + SecretNamespace + "/" + SecretName, nil
}

// LazyCA loads the cluster CA on first use (EnsureCA) and keeps it. A
// failure is returned and retried at the next call: on a fresh cluster the
// node daemon may start before the Secret's RBAC is applied, so it asks
// when the first member starts (and again at the next reconcile).
type LazyCA struct {
	Dir   string
	Store SecretStore // nil: Dir only
	// Loaded, if set, is told where the CA came from (for the log).
	Loaded func(source string)

	mu sync.Mutex
	ca *CA
}

// Get returns the CA, loading or creating it if not done yet.
func (l *LazyCA) Get(ctx context.Context) (*CA, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ca != nil {
		return l.ca, nil
	}
	ca, src, err := EnsureCA(ctx, l.Dir, l.Store)
	if err != nil {
		return nil, fmt.Errorf("cluster CA (mutual TLS between ordering nodes; --insecure-raft turns it off): %w", err)
	}
	if l.Loaded != nil {
		l.Loaded(src)
	}
	l.ca = ca
	return ca, nil
}
