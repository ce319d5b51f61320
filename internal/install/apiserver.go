package install

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// APIServerFile is where install records the API server address kubelet uses.
// The DaemonSet's trace container names it in the kubeconfig it writes for serve
// (smr-cri trace --export-credentials) instead of the kubernetes Service's
// ClusterIP: serve runs outside any pod and must reach the API server before
// kube-proxy, itself a pod started through smr-cri, has programmed that
// ClusterIP on the node (right after a node restart, found by make kind-e2e).
const APIServerFile = CredentialsDir + "/api-server"

// DefaultKubeletKubeconfig is kubeadm's (and kind's, minikube's) kubelet
// kubeconfig, used when no --kubeconfig flag names another file.
const DefaultKubeletKubeconfig = "/etc/kubernetes/kubelet.conf"

// kubeconfigFlagRE finds kubelet's --kubeconfig ("--bootstrap-kubeconfig" has
// one dash before "kubeconfig" and does not match).
var kubeconfigFlagRE = regexp.MustCompile(`--kubeconfig(?:=|[ \t]+)"?([^\s"]+)"?`)

// kubeletAPIServer returns the server of the current context of kubelet's
// kubeconfig under root: the address kubelet itself reaches the API server at.
// It returns "" and no error when kubelet has no kubeconfig there.
func kubeletAPIServer(root string) (string, error) {
	kubeconfig := ""
	for _, g := range slices.Concat(unitGlobs, envFiles) {
		matches, err := globHost(root, g)
		if err != nil {
			return "", err
		}
		for _, p := range matches {
			data, err := os.ReadFile(hostPath(root, p))
			if err != nil {
				return "", fmt.Errorf("read %s: %w", p, err)
			}
			// Later files and later flags win, as for the runtime endpoint.
			if ms := kubeconfigFlagRE.FindAllSubmatch(data, -1); len(ms) > 0 {
				kubeconfig = string(ms[len(ms)-1][1])
			}
		}
	}
	if kubeconfig == "" {
		kubeconfig = DefaultKubeletKubeconfig
	}
	if !path.IsAbs(kubeconfig) {
		return "", fmt.Errorf("%w: kubelet --kubeconfig %q is not an absolute path", ErrBadKubeletConfig, kubeconfig)
	}
	data, err := os.ReadFile(hostPath(root, kubeconfig))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read kubelet's kubeconfig: %w", err)
	}
	server, err := kubeconfigServer(data)
	if err != nil {
		return "", fmt.Errorf("%w: kubelet's kubeconfig %s: %w", ErrBadKubeletConfig, kubeconfig, err)
	}
	return server, nil
}

// kubeconfigServer returns the server of a kubeconfig's current context.
func kubeconfigServer(data []byte) (string, error) {
	var kc struct {
		CurrentContext string `json:"current-context"`
		Contexts       []struct {
			Name    string `json:"name"`
			Context struct {
				Cluster string `json:"cluster"`
			} `json:"context"`
		} `json:"contexts"`
		Clusters []struct {
			Name    string `json:"name"`
			Cluster struct {
				Server string `json:"server"`
			} `json:"cluster"`
		} `json:"clusters"`
	}
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return "", err
	}
	cluster := ""
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			cluster = c.Context.Cluster
		}
	}
	if cluster == "" {
		return "", fmt.Errorf("current context %q names no cluster", kc.CurrentContext)
	}
	for _, c := range kc.Clusters {
		if c.Name == cluster {
			return ParseAPIServer(c.Cluster.Server)
		}
	}
	return "", fmt.Errorf("cluster %q of the current context is not listed", cluster)
}

// ParseAPIServer checks an API server address: https://host[:port], nothing
// else (it ends up in a kubeconfig).
func ParseAPIServer(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("API server %q: %w", s, err)
	}
	if u.Scheme != "https" || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.User != nil ||
		strings.ContainsAny(s, " \t\r\n") {
		return "", fmt.Errorf("API server %q is not https://host[:port]", s)
	}
	return u.Scheme + "://" + u.Host, nil
}
