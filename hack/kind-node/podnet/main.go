// Command podnet is the pod network of the kind node image that hack/kind-node builds: kind
// applies /kind/manifests/default-cni.yaml from the node image, and nothing can be pulled on the
// machine that builds it, so the image ships this small DaemonSet instead of kindnetd. On every
// node it writes a bridge + host-local CNI config for the node's spec.podCIDR and routes every
// other node's podCIDR via that node's InternalIP (all nodes share kind's docker network, one L2
// segment). It re-reads the nodes every --interval, so joining and restarted nodes are covered.
//
// Like kindnetd it reaches the API server at the control plane's own address, which kind passes
// in CONTROL_PLANE_ENDPOINT (default-cni.yaml asks kind for it), not through the kubernetes
// Service: that ClusterIP works only once kube-proxy has programmed the node, and after a node
// restart the first list then hung for 30 s, leaving the node's pods without a route to other
// nodes' pods for about 40 s.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "podnet:", err)
		os.Exit(1)
	}
}

func run() error {
	node := flag.String("node", os.Getenv("NODE_NAME"), "this node's name (the downward API's spec.nodeName)")
	confDir := flag.String("cni-conf-dir", "/etc/cni/net.d", "where the node's container runtime reads CNI configs")
	interval := flag.Duration("interval", 10*time.Second, "how often to re-read the nodes")
	flag.Parse()
	if *node == "" {
		return errors.New("--node (or NODE_NAME) is required")
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return fmt.Errorf("in-cluster config: %w", err)
	}
	cfg.Host = apiHost(cfg.Host, os.Getenv("CONTROL_PLANE_ENDPOINT"))
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	// Pods of other nodes are routed through this node: forwarding must be on in its netns
	// (kindnetd does the same).
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable ip_forward: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	for {
		wait := *interval
		if err := syncOnce(ctx, client, *node, *confDir); err != nil {
			slog.Error("sync", "err", err)
			wait = min(wait, 2*time.Second) // a restarted node's pods wait for the routes
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// apiHost is the API server URL: the control plane endpoint ("host:port") when kind gave one,
// else the in-cluster Service address.
func apiHost(inCluster, controlPlaneEndpoint string) string {
	if controlPlaneEndpoint == "" {
		return inCluster
	}
	return "https://" + controlPlaneEndpoint
}

func syncOnce(ctx context.Context, client kubernetes.Interface, self, confDir string) error {
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	plan, err := Plan(self, nodes.Items)
	if err != nil {
		return err
	}
	if err := writeFileIfChanged(filepath.Join(confDir, ConfName), []byte(Conflist(plan.PodCIDR))); err != nil {
		return err
	}
	for _, r := range plan.Routes {
		_, dst, _ := net.ParseCIDR(r.PodCIDR) // validated by Plan
		if err := netlink.RouteReplace(&netlink.Route{Dst: dst, Gw: net.ParseIP(r.Via)}); err != nil {
			return fmt.Errorf("route %s via %s: %w", r.PodCIDR, r.Via, err)
		}
	}
	return nil
}

// writeFileIfChanged replaces path atomically, and only when its content differs, so the runtime
// never reads a half-written config.
func writeFileIfChanged(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

// ConfName is the CNI config podnet owns; the runtime picks the first config by name.
const ConfName = "10-podnet.conflist"

// Conflist is a bridge with this node's podCIDR; pods reach other nodes' pods through the node's
// routes, so nothing is masqueraded.
func Conflist(podCIDR string) string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "podnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, podCIDR)
}

// Route sends one node's pods' traffic to that node.
type Route struct {
	PodCIDR string
	Via     string
}

// NodePlan is what one node needs: its own pod subnet and a route per other node.
type NodePlan struct {
	PodCIDR string
	Routes  []Route
}

// ErrNoPodCIDR means the controller manager has not given the node a subnet yet.
var ErrNoPodCIDR = errors.New("node has no spec.podCIDR yet")

// Plan computes self's plan from the node list. Other nodes without a podCIDR or an InternalIP yet
// are skipped (the next sync adds them); a malformed podCIDR or address is an error.
func Plan(self string, nodes []corev1.Node) (NodePlan, error) {
	var plan NodePlan
	found := false
	for _, n := range nodes {
		if n.Name == self {
			found = true
			if n.Spec.PodCIDR == "" {
				return NodePlan{}, fmt.Errorf("node %s: %w", self, ErrNoPodCIDR)
			}
			if _, _, err := net.ParseCIDR(n.Spec.PodCIDR); err != nil {
				return NodePlan{}, fmt.Errorf("node %s: podCIDR: %w", n.Name, err)
			}
			plan.PodCIDR = n.Spec.PodCIDR
		}
	}
	if !found {
		return NodePlan{}, fmt.Errorf("node %s not found", self)
	}
	for _, n := range nodes {
		if n.Name == self || n.Spec.PodCIDR == "" {
			continue
		}
		ip := internalIP(n)
		if ip == "" {
			continue
		}
		if _, _, err := net.ParseCIDR(n.Spec.PodCIDR); err != nil {
			return NodePlan{}, fmt.Errorf("node %s: podCIDR: %w", n.Name, err)
		}
		if net.ParseIP(ip) == nil {
			return NodePlan{}, fmt.Errorf("node %s: InternalIP %q is not an address", n.Name, ip)
		}
		plan.Routes = append(plan.Routes, Route{PodCIDR: n.Spec.PodCIDR, Via: ip})
	}
	return plan, nil
}

func internalIP(n corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}
