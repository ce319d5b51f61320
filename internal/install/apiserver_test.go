package install

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

const testKubeletConf = `apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: "https://198.18.9.9:6443"}
- name: kind-smr
  cluster: {server: "https://smr-control-plane:6443"}
contexts:
- name: node@kind-smr
  context: {cluster: kind-smr, user: node}
current-context: node@kind-smr
`

func TestKubeletAPIServer(t *testing.T) {
	const dropIn = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"
	tests := []struct {
		name    string
		files   map[string]string
		want    string
		wantErr error // nil: no error
	}{
		{"kubeadm flag", map[string]string{
			dropIn:                         `Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"`,
			"/etc/kubernetes/kubelet.conf": testKubeletConf,
		}, "https://smr-control-plane:6443", nil},
		{"no flag: kubeadm's default file", map[string]string{
			"/etc/kubernetes/kubelet.conf": testKubeletConf,
		}, "https://smr-control-plane:6443", nil},
		{"only --bootstrap-kubeconfig: the default file", map[string]string{
			dropIn:                         `ExecStart=/usr/bin/kubelet --bootstrap-kubeconfig=/etc/kubernetes/other.conf`,
			"/etc/kubernetes/kubelet.conf": testKubeletConf,
			"/etc/kubernetes/other.conf":   "not: [yaml",
		}, "https://smr-control-plane:6443", nil},
		{"an env file's flag beats the unit's", map[string]string{
			dropIn:                         `ExecStart=/usr/bin/kubelet --kubeconfig /etc/kubernetes/kubelet.conf`,
			"/etc/default/kubelet":         `KUBELET_EXTRA_ARGS="--kubeconfig=/var/lib/k/kc.yaml"`,
			"/var/lib/k/kc.yaml":           "current-context: c\ncontexts: [{name: c, context: {cluster: x}}]\nclusters: [{name: x, cluster: {server: 'https://198.18.1.1:443/'}}]\n",
			"/etc/kubernetes/kubelet.conf": testKubeletConf,
		}, "https://198.18.1.1:443", nil},
		{"no kubeconfig at all", map[string]string{dropIn: "ExecStart=/usr/bin/kubelet"}, "", nil},
		{"relative --kubeconfig", map[string]string{dropIn: "ExecStart=/usr/bin/kubelet --kubeconfig=kubelet.conf"}, "", ErrBadKubeletConfig},
		{"not YAML", map[string]string{"/etc/kubernetes/kubelet.conf": "clusters: [unclosed"}, "", ErrBadKubeletConfig},
		{"current context missing", map[string]string{
			"/etc/kubernetes/kubelet.conf": "current-context: gone\ncontexts: [{name: c, context: {cluster: x}}]\n",
		}, "", ErrBadKubeletConfig},
		{"cluster not listed", map[string]string{
			"/etc/kubernetes/kubelet.conf": "current-context: c\ncontexts: [{name: c, context: {cluster: x}}]\n",
		}, "", ErrBadKubeletConfig},
		{"plain http", map[string]string{
			"/etc/kubernetes/kubelet.conf": "current-context: c\ncontexts: [{name: c, context: {cluster: x}}]\nclusters: [{name: x, cluster: {server: 'http://198.18.1.1:8080'}}]\n",
		}, "", ErrBadKubeletConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for p, data := range tt.files {
				hp := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(hp, []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := kubeletAPIServer(root)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("server = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseAPIServer(t *testing.T) {
	tests := []struct {
		in, want string // want "": an error
	}{
		{"https://smr-control-plane:6443", "https://smr-control-plane:6443"},
		{"https://198.18.1.1:443/", "https://198.18.1.1:443"},
		{"https://[fd00::1]:6443", "https://[fd00::1]:6443"},
		{"http://198.18.1.1:8080", ""},
		{"https://", ""},
		{"198.18.1.1:6443", ""},
		{"https://198.18.1.1:6443/api", ""},
		{"https://198.18.1.1:6443?x=1", ""},
		{"https://user@198.18.1.1:6443", ""},
		{"https://198.18.1.1:6443\nserver: evil", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, err := ParseAPIServer(tt.in)
		if tt.want == "" && err == nil || tt.want != "" && (err != nil || got != tt.want) {
			t.Errorf("ParseAPIServer(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
