package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// etcdProc: Debian's etcd 3.4 on the bridge address, plain HTTP (only the API server talks to it,
// and only over the host's own bridge).
func etcdProc(c Config) process {
	client := fmt.Sprintf("http://%s:%d", HostIP, EtcdPort)
	peer := fmt.Sprintf("http://%s:%d", HostIP, EtcdPort+1)
	return process{Name: "etcd", Args: []string{
		c.Etcd,
		"--name=smr-etcd",
		"--data-dir=" + filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=smr-etcd=" + peer,
		"--initial-cluster-state=new",
		"--logger=zap",
		"--log-outputs=stderr",
	}}
}

func apiServerProc(c Config) process {
	pki := func(f string) string { return filepath.Join(c.pkiDir(), f) }
	return process{Name: "kube-apiserver", Args: []string{
		c.kubeBinary("kube-apiserver"),
		"--advertise-address=" + HostIP,
		"--bind-address=" + HostIP,
		fmt.Sprintf("--secure-port=%d", APIPort),
		fmt.Sprintf("--etcd-servers=http://%s:%d", HostIP, EtcdPort),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--client-ca-file=" + pki("ca.crt"),
		"--tls-cert-file=" + pki("apiserver.crt"),
		"--tls-private-key-file=" + pki("apiserver.key"),
		"--kubelet-client-certificate=" + pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + pki("apiserver-kubelet-client.key"),
		// Reach kubelets by the node address, never by looking the node name up in DNS.
		"--kubelet-preferred-address-types=InternalIP",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki("sa.pub"),
		"--service-account-signing-key-file=" + pki("sa.key"),
		"--cert-dir=" + filepath.Join(c.Dir, "apiserver-certs"),
		"--profiling=false",
	}}
}

func controllerManagerProc(c Config) process {
	return process{Name: "kube-controller-manager", Args: []string{
		c.kubeBinary("kube-controller-manager"),
		"--kubeconfig=" + c.kubeconfig("controller-manager"),
		"--authentication-kubeconfig=" + c.kubeconfig("controller-manager"),
		"--authorization-kubeconfig=" + c.kubeconfig("controller-manager"),
		"--bind-address=" + HostIP,
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + filepath.Join(c.pkiDir(), "sa.key"),
		"--root-ca-file=" + filepath.Join(c.pkiDir(), "ca.crt"),
		"--cluster-signing-cert-file=" + filepath.Join(c.pkiDir(), "ca.crt"),
		"--cluster-signing-key-file=" + filepath.Join(c.pkiDir(), "ca.key"),
		"--cluster-name=smr",
		"--cert-dir=" + filepath.Join(c.Dir, "controller-manager-certs"),
		"--profiling=false",
	}}
}

func schedulerProc(c Config) process {
	return process{Name: "kube-scheduler", Args: []string{
		c.kubeBinary("kube-scheduler"),
		"--kubeconfig=" + c.kubeconfig("scheduler"),
		"--authentication-kubeconfig=" + c.kubeconfig("scheduler"),
		"--authorization-kubeconfig=" + c.kubeconfig("scheduler"),
		"--bind-address=" + HostIP,
		"--leader-elect=false",
		"--cert-dir=" + filepath.Join(c.Dir, "scheduler-certs"),
		"--profiling=false",
	}}
}

// smrCRIProc runs smr-cri in the node's namespace in front of the node's containerd. Of the
// per-node settings, only the flags this smr-cri build knows (see serveFlags) are passed, so the
// cluster runs both older and newer builds of the daemon: every node gets a data directory of its
// own (nodes share the host's file system, so the default /var/lib/smr-cri would be shared),
// its node name, and the kubeconfig of the smr-cri identity (SmrCRIUser) for pod discovery.
// The raft cluster CA directory (--pki-dir) is the one directory all nodes share (see
// ensureRaftCA): members on different nodes must trust the same CA.
func smrCRIProc(c Config, n Node, known map[string]bool) process {
	args := []string{
		c.SmrCRI, "serve",
		"--listen=" + c.smrSocket(n.Name),
		"--runtime-endpoint=unix://" + filepath.Join(c.containerdDir(n.Name), "containerd.sock"),
	}
	for _, f := range []struct{ name, value string }{
		{"data-dir", filepath.Join(c.nodeDir(n.Name), "smr-cri-data")},
		{"pki-dir", c.raftPKIDir()},
		{"node-name", n.Name},
		{"kubeconfig", c.SmrCRIKubeconfig()},
	} {
		if known[f.name] {
			args = append(args, "--"+f.name+"="+f.value)
		}
	}
	return process{Name: n.Name + "-smr-cri", NetNS: n.NetNS(), Env: []string{"KUBECONFIG=" + c.SmrCRIKubeconfig()}, Args: args,
		LogFile: c.smrLog(n.Name)}
}

// raftPKIDir holds the cluster CA of smr-cri's raft mutual TLS, shared by every node's smr-cri.
// It is not pkiDir: that CA is the Kubernetes cluster's, which raft must not trust.
func (c Config) raftPKIDir() string { return filepath.Join(c.Dir, "smr-cri-pki") }

// raftCAMu serializes ensureRaftCA of nodes starting concurrently.
var raftCAMu sync.Mutex

// ensureRaftCA creates the raft cluster CA once (`smr-cri pki init` does nothing if the
// directory has one), before any node's smr-cri could create a CA of its own there.
func ensureRaftCA(ctx context.Context, c Config) error {
	raftCAMu.Lock()
	defer raftCAMu.Unlock()
	out, err := exec.CommandContext(ctx, c.SmrCRI, "pki", "init", "--dir", c.raftPKIDir()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cluster: %s pki init: %w\n%s", c.SmrCRI, err, out)
	}
	return nil
}

// serveFlags lists the flags `smr-cri serve --help` documents (lines "  --name type" or "  -name").
func serveFlags(ctx context.Context, bin string) (map[string]bool, error) {
	out, err := exec.CommandContext(ctx, bin, "serve", "--help").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("cluster: %s serve --help: %w\n%s", bin, err, out)
	}
	return parseFlagNames(string(out)), nil
}

func parseFlagNames(help string) map[string]bool {
	known := map[string]bool{}
	for _, line := range strings.Split(help, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(line, "  -") || strings.HasPrefix(line, "   ") {
			continue
		}
		known[strings.TrimLeft(f[0], "-")] = true
	}
	return known
}

// kubeletConfig follows NODE-LAB.md: hybrid cgroups need failCgroupV1 false and cgroupfs; no QoS
// cgroups; nothing is pulled, so image garbage collection is off (100%) and eviction thresholds
// are empty; every path lives under the node's directory so three kubelets never share a file.
func kubeletConfig(c Config, n Node) string {
	dir := c.nodeDir(n.Name)
	return strings.TrimLeft(fmt.Sprintf(`
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%[1]s
address: %[2]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
resolvConf: ""
podLogsDir: %[3]s/pod-logs
volumePluginDir: %[3]s/volume-plugins
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[4]s}
authorization: {mode: Webhook}
`, c.smrSocket(n.Name), n.IP, dir, filepath.Join(c.pkiDir(), "ca.crt")), "\n")
}

func kubeletProc(c Config, n Node) process {
	dir := c.nodeDir(n.Name)
	return process{Name: n.Name + "-kubelet", NetNS: n.NetNS(), Args: []string{
		c.Kubelet,
		"--config=" + filepath.Join(dir, "kubelet.yaml"),
		"--kubeconfig=" + c.kubeconfig("kubelet-"+n.Name),
		"--root-dir=" + filepath.Join(dir, "kubelet"),
		"--cert-dir=" + filepath.Join(dir, "kubelet-pki"),
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IP,
	}}
}

// kubeProxyConfig: iptables mode in the node's namespace. Conntrack sizing is left alone
// (nf_conntrack_max is machine-wide and not writable from a namespace).
func kubeProxyConfig(c Config, n Node) string {
	return strings.TrimLeft(fmt.Sprintf(`
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
bindAddress: %s
clusterCIDR: %s
mode: iptables
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, c.kubeconfig("kube-proxy"), n.Name, n.IP, ClusterCIDR), "\n")
}

func kubeProxyProc(c Config, n Node) process {
	return process{Name: n.Name + "-kube-proxy", NetNS: n.NetNS(), Args: []string{
		c.kubeBinary("kube-proxy"),
		"--config=" + filepath.Join(c.nodeDir(n.Name), "kube-proxy.yaml"),
	}}
}

// writeNodeConfigs writes kubelet.yaml and kube-proxy.yaml of node n.
func writeNodeConfigs(c Config, n Node) error {
	dir := c.nodeDir(n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	for name, body := range map[string]string{
		"kubelet.yaml":    kubeletConfig(c, n),
		"kube-proxy.yaml": kubeProxyConfig(c, n),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}
	return nil
}
