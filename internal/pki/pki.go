// Package pki is smr-cri's member identity: a cluster CA (ECDSA P-256)
// signs short-lived member certificates whose URI SANs name the raft
// memberships they prove, one per (group, member):
//
//	spiffe://smr.io/group/<group>/member/<id>
//
// Ordering nodes verify each other with mutual TLS (chain to the cluster CA,
// validity period) and then bind every raft message to the certificate: the
// sender member ID and group of a message must be one of the certificate's
// identities (Authorize). The package needs no Kubernetes client: the CA is
// kept in files (LoadCA/EnsureCADir) or in a Secret behind the small
// SecretStore interface (EnsureCASecret).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// File names of the CA inside a PKI directory (and keys of the Secret).
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Defaults: the CA lives for ten years, member certificates for a day and
// are re-issued when less than a third of their lifetime remains.
const (
	DefaultCAValidity     = 10 * 365 * 24 * time.Hour
	DefaultMemberValidity = 24 * time.Hour
)

// trustDomain is the SPIFFE trust domain of member identities.
const trustDomain = "smr.io"

// Identity is one raft membership: member ID Member of group Group.
type Identity struct {
	Group  string
	Member uint64
}

func (id Identity) String() string { return fmt.Sprintf("group %s member %d", id.Group, id.Member) }

// URI is the identity as a certificate URI SAN.
func (id Identity) URI() *url.URL {
	m := strconv.FormatUint(id.Member, 10)
	return &url.URL{Scheme: "spiffe", Host: trustDomain,
		Path:    "/group/" + id.Group + "/member/" + m,
		RawPath: "/group/" + url.PathEscape(id.Group) + "/member/" + m}
}

func (id Identity) validate() error {
	if id.Group == "" || id.Member == 0 {
		return fmt.Errorf("pki: identity needs a group name and a member id > 0, got %q/%d", id.Group, id.Member)
	}
	return nil
}

// ParseIdentity parses a member URI SAN.
func ParseIdentity(u *url.URL) (Identity, error) {
	if u.Scheme != "spiffe" || u.Host != trustDomain {
		return Identity{}, fmt.Errorf("pki: %q is not a spiffe://%s member identity", u, trustDomain)
	}
	parts := strings.Split(strings.TrimPrefix(u.EscapedPath(), "/"), "/")
	if len(parts) != 4 || parts[0] != "group" || parts[2] != "member" {
		return Identity{}, fmt.Errorf("pki: %q: want spiffe://%s/group/<group>/member/<id>", u, trustDomain)
	}
	g, err := url.PathUnescape(parts[1])
	if err != nil {
		return Identity{}, fmt.Errorf("pki: %q: group: %w", u, err)
	}
	m, err := strconv.ParseUint(parts[3], 10, 64)
	if err != nil || m == 0 || g == "" {
		return Identity{}, fmt.Errorf("pki: %q: want a group name and a member id > 0", u)
	}
	return Identity{Group: g, Member: m}, nil
}

// Identities returns the member identities a certificate carries (URI SANs
// that are not member identities are ignored).
func Identities(cert *x509.Certificate) []Identity {
	var out []Identity
	for _, u := range cert.URIs {
		if id, err := ParseIdentity(u); err == nil {
			out = append(out, id)
		}
	}
	return out
}

// Authorize checks that cert proves membership (group, member): the error
// names what the certificate does prove, so a misconfigured or rogue peer is
// easy to tell apart in logs.
func Authorize(cert *x509.Certificate, group string, member uint64) error {
	if cert == nil {
		return errors.New("smr-cri: peer presented no certificate")
	}
	ids := Identities(cert)
	for _, id := range ids {
		if id.Group == group && id.Member == member {
			return nil
		}
	}
	want := Identity{Group: group, Member: member}
	switch {
	case len(ids) == 0:
		return fmt.Errorf("smr-cri: peer certificate %q carries no member identity, not valid for %s", cert.Subject.CommonName, want)
	default:
		var sameGroup bool
		for _, id := range ids {
			sameGroup = sameGroup || id.Group == group
		}
		if sameGroup {
			return fmt.Errorf("smr-cri: peer certificate for %s is not valid for member %d of group %s (member id mismatch)", describe(ids), member, group)
		}
		return fmt.Errorf("smr-cri: peer certificate for %s is not valid for group %s", describe(ids), group)
	}
}

func describe(ids []Identity) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.String()
	}
	return strings.Join(s, ", ")
}

// CA is the cluster certificate authority.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA creates a self-signed CA valid from now for validity.
func NewCA(name string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("pki: CA validity must be positive, got %v", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"smr-cri"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: marshal CA key: %w", err)
	}
	return ParseCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
}

// ParseCA parses a PEM CA certificate and its PEM EC private key and checks
// that they belong together.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, errors.New("pki: CA certificate: no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("pki: CA certificate is not a CA (basic constraints)")
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("pki: CA key: no PEM block")
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		k8, err8 := x509.ParsePKCS8PrivateKey(kb.Bytes)
		ek, ok := k8.(*ecdsa.PrivateKey)
		if err8 != nil || !ok {
			return nil, fmt.Errorf("pki: CA key: want an EC private key: %w", err)
		}
		key = ek
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("pki: CA key does not match the CA certificate")
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Pool is a cert pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// LoadCA reads ca.crt and ca.key from dir.
func LoadCA(dir string) (*CA, error) {
	c, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	k, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	ca, err := ParseCA(c, k)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, dir)
	}
	return ca, nil
}

// Save writes the CA to dir (created 0700): the key 0600, the certificate
// 0644. Existing files are replaced atomically.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: save CA: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, CAKeyFile), ca.KeyPEM, 0o600); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, CACertFile), ca.CertPEM, 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}

// EnsureCADir loads the CA from dir, creating and saving a new one if dir
// has none. created reports whether a new CA was made.
func EnsureCADir(dir string) (ca *CA, created bool, err error) {
	_, errC := os.Stat(filepath.Join(dir, CACertFile))
	_, errK := os.Stat(filepath.Join(dir, CAKeyFile))
	if errors.Is(errC, os.ErrNotExist) && errors.Is(errK, os.ErrNotExist) {
		ca, err := NewCA("smr-cri cluster CA", DefaultCAValidity)
		if err != nil {
			return nil, false, err
		}
		if err := ca.Save(dir); err != nil {
			return nil, false, err
		}
		return ca, true, nil
	}
	ca, err = LoadCA(dir)
	return ca, false, err
}

// IssueOptions shapes one member certificate.
type IssueOptions struct {
	// NotBefore/NotAfter default to now-1m .. now+DefaultMemberValidity.
	NotBefore, NotAfter time.Time
}

// Issue signs a fresh key pair for the given identities (at least one).
func (ca *CA) Issue(ids []Identity, opts IssueOptions) (*tls.Certificate, error) {
	if len(ids) == 0 {
		return nil, errors.New("pki: issue: no identities")
	}
	now := time.Now()
	if opts.NotBefore.IsZero() {
		opts.NotBefore = now.Add(-time.Minute)
	}
	if opts.NotAfter.IsZero() {
		opts.NotAfter = now.Add(DefaultMemberValidity)
	}
	if !opts.NotAfter.After(opts.NotBefore) {
		return nil, fmt.Errorf("pki: issue: NotAfter %v is not after NotBefore %v", opts.NotAfter, opts.NotBefore)
	}
	var uris []*url.URL
	for _, id := range ids {
		if err := id.validate(); err != nil {
			return nil, err
		}
		uris = append(uris, id.URI())
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate member key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: ids[0].URI().String(), Organization: []string{"smr-cri"}},
		URIs:         uris,
		NotBefore:    opts.NotBefore,
		NotAfter:     opts.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign member certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse member certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}
