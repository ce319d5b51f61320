package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestCredExporter(t *testing.T) {
	sa, dir := t.TempDir(), filepath.Join(t.TempDir(), "kube")
	os.WriteFile(filepath.Join(sa, "token"), []byte("token-1"), 0o644)
	os.WriteFile(filepath.Join(sa, "ca.crt"), []byte("-----BEGIN CERTIFICATE-----\n"), 0o644)
	t.Setenv("KUBERNETES_SERVICE_HOST", "198.18.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	ex, err := newCredExporter(sa, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ex.sync(); err != nil {
		t.Fatal(err)
	}
	var kc struct {
		Clusters []struct {
			Cluster struct {
				Server string `json:"server"`
				CA     string `json:"certificate-authority"`
			} `json:"cluster"`
		} `json:"clusters"`
		Users []struct {
			User struct {
				TokenFile string `json:"tokenFile"`
			} `json:"user"`
		} `json:"users"`
		CurrentContext string `json:"current-context"`
	}
	data, _ := os.ReadFile(filepath.Join(dir, "kubeconfig"))
	if err := yaml.Unmarshal(data, &kc); err != nil {
		t.Fatalf("kubeconfig: %v\n%s", err, data)
	}
	if kc.Clusters[0].Cluster.Server != "https://198.18.0.1:443" || kc.Clusters[0].Cluster.CA != filepath.Join(dir, "ca.crt") ||
		kc.Users[0].User.TokenFile != filepath.Join(dir, "token") || kc.CurrentContext != "smr-cri" {
		t.Errorf("kubeconfig %+v", kc)
	}
	// kubelet rotates the token: the next sync copies the new one.
	os.WriteFile(filepath.Join(sa, "token"), []byte("token-2"), 0o644)
	if err := ex.sync(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "token")); string(got) != "token-2" {
		t.Errorf("token after rotation: %q", got)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "token")); fi.Mode().Perm() != 0o600 {
		t.Errorf("token mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestCredExporterBadInput(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := newCredExporter(t.TempDir(), t.TempDir()); err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Errorf("outside a pod: %v", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "198.18.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if _, err := newCredExporter(t.TempDir(), "relative"); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("relative dir: %v", err)
	}
	sa := t.TempDir()
	ex, _ := newCredExporter(sa, filepath.Join(t.TempDir(), "kube"))
	if err := ex.sync(); err == nil || !strings.Contains(err.Error(), "read the ServiceAccount token") {
		t.Errorf("no token: %v", err)
	}
	os.WriteFile(filepath.Join(sa, "token"), []byte(" \n"), 0o644)
	os.WriteFile(filepath.Join(sa, "ca.crt"), []byte("ca"), 0o644)
	if err := ex.sync(); err == nil || !strings.Contains(err.Error(), "token is empty") {
		t.Errorf("empty token: %v", err)
	}
	// trace fails at start rather than running without credentials.
	err := Run(context.Background(), []string{"trace", "--file", "/dev/null", "--export-credentials", filepath.Join(t.TempDir(), "k"),
		"--service-account-dir", filepath.Join(t.TempDir(), "none")}, os.Stderr, os.Stderr)
	if err == nil || !strings.Contains(err.Error(), "read the ServiceAccount") {
		t.Errorf("trace with a missing ServiceAccount: %v", err)
	}
}

// TestCredExporterAPIServer: the address smr-cri install recorded from kubelet's
// kubeconfig replaces the kubernetes Service's ClusterIP in serve's kubeconfig;
// a bad one stops the export with the file named.
func TestCredExporterAPIServer(t *testing.T) {
	tests := []struct {
		name, file string // file: the api-server content; "-": none
		want       string // the kubeconfig's server; "": an error
	}{
		{"none: the Service", "-", "https://198.18.0.1:443"},
		{"kubelet's", "https://smr-control-plane:6443\n", "https://smr-control-plane:6443"},
		{"not https", "http://198.18.1.1:8080\n", ""},
		{"two lines", "https://198.18.1.1:6443\nserver: x\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sa, dir := t.TempDir(), t.TempDir()
			os.WriteFile(filepath.Join(sa, "token"), []byte("token-1"), 0o644)
			os.WriteFile(filepath.Join(sa, "ca.crt"), []byte("ca"), 0o644)
			t.Setenv("KUBERNETES_SERVICE_HOST", "198.18.0.1")
			t.Setenv("KUBERNETES_SERVICE_PORT", "443")
			if tt.file != "-" {
				os.WriteFile(filepath.Join(dir, "api-server"), []byte(tt.file), 0o644)
			}
			ex, err := newCredExporter(sa, dir)
			if err != nil {
				t.Fatal(err)
			}
			err = ex.sync()
			if tt.want == "" {
				if err == nil || !strings.Contains(err.Error(), "api-server") {
					t.Errorf("sync = %v, want an error naming the api-server file", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(filepath.Join(dir, "kubeconfig"))
			if !strings.Contains(string(data), "server: "+tt.want+"\n") {
				t.Errorf("kubeconfig without server %s:\n%s", tt.want, data)
			}
		})
	}
}
