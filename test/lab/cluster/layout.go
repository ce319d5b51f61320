// Package cluster brings up a real multi-node Kubernetes on one machine without Docker or a
// registry, and tears it down again: etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler on a host bridge, and worker nodes that are network namespaces, each with its own
// containerd (test/lab/nodelab), smr-cri in front of it, kubelet and kube-proxy.
//
// Addresses (all in 198.18.0.0/15, the range reserved for benchmarking; nothing leaves the machine):
//
//	smr-br0            198.18.0.1/24     host bridge; etcd :2379, kube-apiserver :6443
//	smr-nodeN (netns)  198.18.0.1N/24    veth eth0 into smr-br0; kubelet :10250
//	pods of smr-nodeN  198.19.N.0/24     CNI bridge smr-cni inside the node; routed via 198.18.0.1N
//	Services           198.18.128.0/20   kube-proxy (iptables mode) in every node namespace
//
// Everything the cluster writes lives in one state directory (default <repo>/_out/cluster); every
// process it starts names that directory on its command line, which is how Down finds them all
// even after the state files are gone or every process was killed with SIGKILL.
package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// Fixed addresses and names of the cluster network.
const (
	BridgeName  = "smr-br0"
	HostIP      = "198.18.0.1"
	HostCIDR    = HostIP + "/24"
	ServiceCIDR = "198.18.128.0/20"
	// KubernetesServiceIP is the first address of ServiceCIDR (the `kubernetes` Service).
	KubernetesServiceIP = "198.18.128.1"
	// ClusterCIDR covers every node's pod subnet (198.19.N.0/24, N <= MaxNodes).
	ClusterCIDR = "198.19.0.0/20"
	APIPort     = 6443
	EtcdPort    = 2379
	MaxNodes    = 9
	// KubeVersion is the Kubernetes release the binaries are built from (hack/cluster/build-kube.sh).
	KubeVersion = "v1.37.2"
	// podBridge is the CNI bridge inside each node namespace (a name the host never uses).
	podBridge = "smr-cni0"
	netnsDir  = "/var/run/netns"
)

// Node is one worker: a network namespace joined to the host bridge by a veth pair.
type Node struct {
	Index     int    // 1-based
	Name      string // smr-nodeN: the netns name and the Kubernetes node name
	IP        string // 198.18.0.1N
	PodSubnet string // 198.19.N.0/24
	HostVeth  string // host end of the veth pair; the node end is eth0
}

// NetNS is the path of the node's network namespace.
func (n Node) NetNS() string { return filepath.Join(netnsDir, n.Name) }

// NodeName returns the name of node i (1-based).
func NodeName(i int) string { return "smr-node" + strconv.Itoa(i) }

// Nodes describes the workers of a cluster of count nodes.
func Nodes(count int) ([]Node, error) {
	if count < 1 || count > MaxNodes {
		return nil, fmt.Errorf("cluster: node count %d out of range 1..%d", count, MaxNodes)
	}
	nodes := make([]Node, count)
	for i := range nodes {
		n := i + 1
		nodes[i] = Node{
			Index:     n,
			Name:      NodeName(n),
			IP:        fmt.Sprintf("198.18.0.%d", 10+n),
			PodSubnet: fmt.Sprintf("198.19.%d.0/24", n),
			HostVeth:  fmt.Sprintf("smr-veth%d", n),
		}
	}
	return nodes, nil
}

// Config says where the cluster lives and what it runs.
type Config struct {
	// Dir is the state directory (absolute after Resolve). Default: $SMR_CLUSTER_DIR, else
	// <repo root>/_out/cluster.
	Dir string
	// Nodes is the number of workers (default 3).
	Nodes int
	// KubeBin holds kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and
	// kubectl. Default: <cache>/kube-v1.37.2.
	KubeBin string
	// Kubelet is the kubelet binary. Default: <cache>/bin/kubelet (hack/install-deps.sh).
	Kubelet string
	// SmrCRI is the smr-cri binary. Default: <repo root>/bin/smr-cri (Up builds it).
	SmrCRI string
	// Etcd is the etcd binary (default /usr/bin/etcd from Debian's etcd-server).
	Etcd string
	// RepoRoot is the smr-cri checkout (for building bin/smr-cri and kube binaries).
	RepoRoot string
}

// Resolve fills the defaults and makes paths absolute.
func (c Config) Resolve() (Config, error) {
	if c.RepoRoot == "" {
		root, err := nodelab.RepoRoot()
		if err != nil {
			return c, err
		}
		c.RepoRoot = root
	}
	if c.Dir == "" {
		c.Dir = os.Getenv("SMR_CLUSTER_DIR")
	}
	if c.Dir == "" {
		c.Dir = filepath.Join(c.RepoRoot, "_out", "cluster")
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return c, fmt.Errorf("cluster: state dir: %w", err)
	}
	if dir == "/" || len(dir) < 5 {
		return c, fmt.Errorf("cluster: state dir %q is too short to be safe (Down deletes it)", dir)
	}
	c.Dir = dir
	if c.Nodes == 0 {
		c.Nodes = 3
	}
	if _, err := Nodes(c.Nodes); err != nil {
		return c, err
	}
	cache, err := nodelab.CacheDir()
	if err != nil {
		return c, err
	}
	if c.KubeBin == "" {
		c.KubeBin = filepath.Join(cache, "kube-"+KubeVersion)
	}
	if c.Kubelet == "" {
		c.Kubelet = filepath.Join(cache, "bin", "kubelet")
	}
	if c.SmrCRI == "" {
		c.SmrCRI = filepath.Join(c.RepoRoot, "bin", "smr-cri")
	}
	if c.Etcd == "" {
		c.Etcd = "/usr/bin/etcd"
	}
	// containerd's socket path (Dir/<node>/containerd/containerd.sock) must fit sun_path.
	if l := len(c.nodeDir(NodeName(1))) + len("/containerd/containerd.sock.ttrpc"); l > 100 {
		return c, errors.New("cluster: state dir path too long for unix sockets: " + c.Dir)
	}
	return c, nil
}

// Paths inside the state directory.
func (c Config) pkiDir() string                { return filepath.Join(c.Dir, "pki") }
func (c Config) logDir() string                { return filepath.Join(c.Dir, "logs") }
func (c Config) pidDir() string                { return filepath.Join(c.Dir, "pids") }
func (c Config) nodeDir(node string) string    { return filepath.Join(c.Dir, node) }
func (c Config) kubeconfig(user string) string { return filepath.Join(c.Dir, user+".kubeconfig") }
func (c Config) smrSocket(node string) string  { return filepath.Join(c.traceDir(node), "smr-cri.sock") }
func (c Config) smrLog(node string) string     { return filepath.Join(c.traceDir(node), "smr-cri.log") }

// SmrStatusSocket is node's `smr-cri status` socket (serve's default: beside its CRI socket).
func (c Config) SmrStatusSocket(node string) string {
	return filepath.Join(c.traceDir(node), "smr-cri-status.sock")
}

// hostSysctls holds the host-wide sysctls as they were before the cluster's first kubelet
// started (nodelab.KernelTunables); down restores them.
func (c Config) hostSysctls() string { return filepath.Join(c.Dir, "host-sysctls.json") }

// traceRoot holds, per node, the only files the trace DaemonSet (TraceOverlay) may see of that
// node: traceDir(node) with smr-cri's log and CRI socket. Nothing else lives there; the node
// directories next to it hold private keys (kubelet-pki) and the node's containerd state.
func (c Config) traceRoot() string           { return filepath.Join(c.Dir, "trace") }
func (c Config) traceDir(node string) string { return filepath.Join(c.traceRoot(), node) }
func (c Config) containerdDir(node string) string {
	return filepath.Join(c.nodeDir(node), "containerd")
}

// AdminKubeconfig is the kubeconfig with cluster-admin rights (system:masters).
func (c Config) AdminKubeconfig() string { return c.kubeconfig("admin") }

// SmrCRIKubeconfig is the kubeconfig of smr-cri serve (user SmrCRIUser). Its permissions come
// from manifests/rbac.yaml once that is applied.
func (c Config) SmrCRIKubeconfig() string { return c.kubeconfig("smr-cri") }

// KubectlPath is the path of the kubectl binary.
func (c Config) KubectlPath() string { return filepath.Join(c.KubeBin, "kubectl") }

// LogDir is where every process of the cluster logs (one file per process).
func (c Config) LogDir() string { return c.logDir() }

func (c Config) kubeBinary(name string) string { return filepath.Join(c.KubeBin, name) }

func (c Config) apiServerURL() string { return fmt.Sprintf("https://%s:%d", HostIP, APIPort) }
