package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smr-io/smr-cri/internal/install"
)

// DefaultServiceAccountDir is where Kubernetes mounts a pod's ServiceAccount token.
const DefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// credExporter hands the DaemonSet pod's ServiceAccount credentials to the
// node daemon (a systemd service, outside any pod): it keeps copies of the
// projected token and CA in Dir, a host directory mounted at the same path,
// and a kubeconfig there that names them, as CNI plugins' installers do for
// their host-side binaries. kubelet rotates the token; each sync copies the
// current one, and clients reading tokenFile pick it up.
type credExporter struct {
	SADir  string // the pod's ServiceAccount mount
	Dir    string // where to write (same path in the pod and on the node)
	Server string // https://host:port of the API server (the kubernetes Service)
}

// newCredExporter takes the API server address from the environment
// Kubernetes gives every pod.
func newCredExporter(saDir, dir string) (credExporter, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return credExporter{}, errors.New("export credentials: KUBERNETES_SERVICE_HOST/PORT are not set (not running in a pod?)")
	}
	if !filepath.IsAbs(dir) {
		return credExporter{}, fmt.Errorf("export credentials: %q is not an absolute path", dir)
	}
	return credExporter{SADir: saDir, Dir: dir, Server: "https://" + net.JoinHostPort(host, port)}, nil
}

// server is the API server for serve: the address smr-cri install recorded
// from kubelet's kubeconfig (install.APIServerFile, in Dir), reachable from
// the node before kube-proxy runs; without it, the kubernetes Service.
func (c credExporter) server() (string, error) {
	p := filepath.Join(c.Dir, filepath.Base(install.APIServerFile))
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return c.Server, nil
	}
	if err != nil {
		return "", fmt.Errorf("export credentials: %w", err)
	}
	s, err := install.ParseAPIServer(strings.TrimSpace(string(data)))
	if err != nil {
		return "", fmt.Errorf("export credentials: %s: %w", p, err)
	}
	return s, nil
}

// kubeconfig names the copies by their absolute paths.
func (c credExporter) kubeconfig(server string) []byte {
	return fmt.Appendf(nil, `# Written by smr-cri trace --export-credentials: the smr-system/smr-cri
# ServiceAccount, for smr-cri serve on this node. Rewritten as the token rotates.
apiVersion: v1
kind: Config
clusters:
- name: cluster
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: smr-cri
  user:
    tokenFile: %s
contexts:
- name: smr-cri
  context:
    cluster: cluster
    user: smr-cri
current-context: smr-cri
`, server, filepath.Join(c.Dir, "ca.crt"), filepath.Join(c.Dir, "token"))
}

// sync writes what changed; files are replaced atomically, mode 0600.
func (c credExporter) sync() error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("export credentials: %w", err)
	}
	server, err := c.server()
	if err != nil {
		return err
	}
	files := map[string][]byte{"kubeconfig": c.kubeconfig(server)}
	for _, name := range []string{"token", "ca.crt"} {
		data, err := os.ReadFile(filepath.Join(c.SADir, name))
		if err != nil {
			return fmt.Errorf("export credentials: read the ServiceAccount %s: %w", name, err)
		}
		if len(bytes.TrimSpace(data)) == 0 {
			return fmt.Errorf("export credentials: the ServiceAccount %s is empty", name)
		}
		files[name] = data
	}
	for name, data := range files {
		p := filepath.Join(c.Dir, name)
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, data) {
			continue
		}
		if err := install.WriteFileAtomic(p, data, 0o600); err != nil {
			return fmt.Errorf("export credentials: %w", err)
		}
	}
	return nil
}

// run syncs now (an error is fatal: a misconfigured pod should not look
// healthy) and then every interval until ctx ends (errors are logged: the
// copies already there stay valid for a while).
func (c credExporter) run(ctx context.Context, interval time.Duration, stderr io.Writer) error {
	if err := c.sync(); err != nil {
		return err
	}
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := c.sync(); err != nil {
					fmt.Fprintf(stderr, "smr-cri trace: %v\n", err)
				}
			}
		}
	}()
	return nil
}
