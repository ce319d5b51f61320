package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// certSpec describes one certificate signed by the cluster CA.
type certSpec struct {
	File   string // base name under pki/: File.crt and File.key
	CN     string
	Orgs   []string
	Server bool // serving certificate (with SANs) instead of a client certificate
	IPs    []string
	DNS    []string
}

// keyPair is a PEM certificate and PEM private key.
type keyPair struct {
	Cert, Key []byte
}

// ca is the cluster's certificate authority, kept in memory while Up writes the PKI.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

// newCA makes a self-signed ECDSA P-256 CA (fast to generate, accepted by every component).
func newCA() (*ca, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cluster: CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "smr-cluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("cluster: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("cluster: CA certificate: %w", err)
	}
	return &ca{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// sign issues a certificate for spec.
func (c *ca) sign(spec certSpec) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, fmt.Errorf("cluster: key for %s: %w", spec.CN, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return keyPair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: spec.CN, Organization: spec.Orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if spec.Server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = spec.DNS
		for _, s := range spec.IPs {
			ip := net.ParseIP(s)
			if ip == nil {
				return keyPair{}, fmt.Errorf("cluster: certificate %s: bad IP SAN %q", spec.CN, s)
			}
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return keyPair{}, fmt.Errorf("cluster: certificate %s: %w", spec.CN, err)
	}
	keyPEM, err := ecKeyPEM(key)
	if err != nil {
		return keyPair{}, err
	}
	return keyPair{Cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), Key: keyPEM}, nil
}

func ecKeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("cluster: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// SmrCRIUser is the API identity of smr-cri serve on every node: manifests/rbac.yaml's
// ServiceAccount smr-system/smr-cri.
const SmrCRIUser = "system:serviceaccount:smr-system:smr-cri"

// identity is a client of the API server with a kubeconfig of its own.
type identity struct {
	User string // kubeconfig base name
	CN   string
	Orgs []string
}

// identities lists every kubeconfig the cluster writes: admin, the control plane, and per node
// a kubelet (system:node:<name>, allowed by the Node authorizer) and kube-proxy.
func identities(nodes []Node) []identity {
	ids := []identity{
		{User: "admin", CN: "kubernetes-admin", Orgs: []string{"system:masters"}},
		{User: "controller-manager", CN: "system:kube-controller-manager"},
		{User: "scheduler", CN: "system:kube-scheduler"},
		{User: "kube-proxy", CN: "system:kube-proxy"},
	}
	for _, n := range nodes {
		ids = append(ids, identity{User: "kubelet-" + n.Name, CN: "system:node:" + n.Name, Orgs: []string{"system:nodes"}})
	}
	// smr-cri serve on the nodes (pod discovery, events) acts as the ServiceAccount that
	// manifests/rbac.yaml binds: RBAC matches a ServiceAccount subject by this user name, so a
	// client certificate stands in for the token the DaemonSet exports on a real node.
	ids = append(ids, identity{User: "smr-cri", CN: SmrCRIUser})
	return ids
}

// writePKI generates the CA, the API server's serving and kubelet-client certificates, the
// service-account signing key, and a kubeconfig per identity.
func writePKI(c Config, nodes []Node) error {
	dir := c.pkiDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	authority, err := newCA()
	if err != nil {
		return err
	}
	files := map[string][]byte{}
	caKey, err := ecKeyPEM(authority.key)
	if err != nil {
		return err
	}
	files["ca.crt"], files["ca.key"] = authority.pem, caKey
	specs := []certSpec{
		{File: "apiserver", CN: "kube-apiserver", Server: true,
			IPs: []string{HostIP, KubernetesServiceIP, "127.0.0.1"},
			DNS: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}},
		// The API server's identity towards kubelets (logs, exec, port-forward).
		{File: "apiserver-kubelet-client", CN: "kube-apiserver-kubelet-client", Orgs: []string{"system:masters"}},
	}
	for _, s := range specs {
		kp, err := authority.sign(s)
		if err != nil {
			return err
		}
		files[s.File+".crt"], files[s.File+".key"] = kp.Cert, kp.Key
	}
	// Service-account tokens are signed with this key (ES256) and verified with its public half.
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("cluster: service-account key: %w", err)
	}
	if files["sa.key"], err = ecKeyPEM(saKey); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return fmt.Errorf("cluster: service-account public key: %w", err)
	}
	files["sa.pub"] = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}
	for _, id := range identities(nodes) {
		kp, err := authority.sign(certSpec{CN: id.CN, Orgs: id.Orgs})
		if err != nil {
			return err
		}
		if err := os.WriteFile(c.kubeconfig(id.User), kubeconfig(c.apiServerURL(), id.User, authority.pem, kp), 0o600); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}
	return nil
}

// kubeconfig renders a kubeconfig with embedded credentials.
func kubeconfig(server, user string, caPEM []byte, kp keyPair) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return []byte(strings.TrimLeft(fmt.Sprintf(`
apiVersion: v1
kind: Config
clusters:
- name: smr
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: smr
  context: {cluster: smr, user: %s}
current-context: smr
`, server, b64(caPEM), user, b64(kp.Cert), b64(kp.Key), user), "\n"))
}
