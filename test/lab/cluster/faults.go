package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/cri"
	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/test/lab/procfs"
)

// Fault injection for end-to-end tests. Every fault lives inside one node's network namespace or
// process, so Down (deleting the namespace, killing the processes) removes it whatever happens.

// partitionChain is the filter chain that holds a node's partition rules.
const partitionChain = "SMR-PARTITION"

// Node returns the node called name.
func (cl *Cluster) Node(name string) (Node, error) {
	for _, n := range cl.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return Node{}, fmt.Errorf("cluster: no node %q (have %d nodes)", name, len(cl.Nodes))
}

// partitionRules renders iptables-restore input that drops all traffic between node n (itself
// and its pods) and the other nodes and their pods, in both directions, while the control plane
// on the host stays reachable (so kubelet keeps reporting and the node stays Ready).
func partitionRules(n Node, all []Node) string {
	var b strings.Builder
	b.WriteString("*filter\n:" + partitionChain + " - [0:0]\n")
	for _, peer := range all {
		if peer.Index == n.Index {
			continue
		}
		for _, addr := range []string{peer.IP + "/32", peer.PodSubnet} {
			fmt.Fprintf(&b, "-A %s -s %s -j DROP\n-A %s -d %s -j DROP\n", partitionChain, addr, partitionChain, addr)
		}
	}
	for _, hook := range []string{"INPUT", "OUTPUT", "FORWARD"} {
		fmt.Fprintf(&b, "-I %s 1 -j %s\n", hook, partitionChain)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Partition cuts node name off from every other node and their pods (iptables DROP in the
// node's namespace). It fails if the node is already partitioned.
func (cl *Cluster) Partition(ctx context.Context, name string) error {
	n, err := cl.Node(name)
	if err != nil {
		return err
	}
	if cl.partitioned(ctx, n) {
		return fmt.Errorf("cluster: %s is already partitioned", name)
	}
	cmd := nsenterCmd(ctx, n, "iptables-restore", "-w", "--noflush")
	cmd.Stdin = strings.NewReader(partitionRules(n, cl.Nodes))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cluster: partition %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Heal removes node name's partition; healing a node that is not partitioned is a no-op.
func (cl *Cluster) Heal(ctx context.Context, name string) error {
	n, err := cl.Node(name)
	if err != nil {
		return err
	}
	if !cl.partitioned(ctx, n) {
		return nil
	}
	for _, hook := range []string{"INPUT", "OUTPUT", "FORWARD"} {
		for nsenterCmd(ctx, n, "iptables", "-w", "-D", hook, "-j", partitionChain).Run() == nil {
		}
	}
	for _, args := range [][]string{{"-F", partitionChain}, {"-X", partitionChain}} {
		if out, err := nsenterCmd(ctx, n, "iptables", append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("cluster: heal %s: iptables %v: %w: %s", name, args, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// partitioned reports whether node n's partition chain exists.
func (cl *Cluster) partitioned(ctx context.Context, n Node) bool {
	return nsenterCmd(ctx, n, "iptables", "-w", "-n", "-L", partitionChain).Run() == nil
}

// nodePID reads the pid file of one of a node's processes (kubelet, kube-proxy, smr-cri).
func (cl *Cluster) nodePID(n Node, component string) (int, error) {
	name := n.Name + "-" + component
	b, err := os.ReadFile(cl.pidDir() + "/" + name + ".pid")
	if err != nil {
		return 0, fmt.Errorf("cluster: %s: %w", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("cluster: %s pid file: %w", name, err)
	}
	return pid, nil
}

// KillSmrCRI kills node name's smr-cri with SIGKILL (no cleanup runs) and waits until it is gone.
// Pods keep running in containerd; kubelet sees its runtime fail until RestartSmrCRI.
func (cl *Cluster) KillSmrCRI(name string) error {
	n, err := cl.Node(name)
	if err != nil {
		return err
	}
	pid, err := cl.nodePID(n, "smr-cri")
	if err != nil {
		return err
	}
	if !procfs.Alive(pid) {
		return fmt.Errorf("cluster: smr-cri of %s (pid %d) is not running", name, pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("cluster: kill smr-cri of %s: %w", name, err)
	}
	for i := 0; i < 100 && procfs.Alive(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if procfs.Alive(pid) {
		return fmt.Errorf("cluster: smr-cri of %s (pid %d) survived SIGKILL", name, pid)
	}
	return nil
}

// RestartSmrCRI starts node name's smr-cri again (after KillSmrCRI) and waits for its socket.
func (cl *Cluster) RestartSmrCRI(ctx context.Context, name string) error {
	n, err := cl.Node(name)
	if err != nil {
		return err
	}
	if pid, err := cl.nodePID(n, "smr-cri"); err == nil && procfs.Alive(pid) {
		return fmt.Errorf("cluster: smr-cri of %s is still running (pid %d)", name, pid)
	}
	return cl.startSmrCRI(ctx, n)
}

// NodeDialer dials from inside node name's network namespace, as a process on that node would:
// Service cluster IPs work there (kube-proxy's rules), not on the host.
func (cl *Cluster) NodeDialer(name string) (func(ctx context.Context, network, addr string) (net.Conn, error), error) {
	n, err := cl.Node(name)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netintercept.DialInNetns(ctx, n.NetNS(), network, addr)
	}, nil
}

// PodNetNS returns the network namespace path of a running pod, asked from its node's containerd
// (e2e tests read each replica's app directly at 127.0.0.1 inside the pod, which smr-cri does not
// redirect).
func (cl *Cluster) PodNetNS(ctx context.Context, nodeName, namespace, pod string) (string, error) {
	rt, closeRT, err := cl.runtimeClient(nodeName)
	if err != nil {
		return "", err
	}
	defer closeRT()
	list, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": namespace},
	}})
	if err != nil {
		return "", fmt.Errorf("cluster: list sandboxes on %s: %w", nodeName, err)
	}
	if len(list.GetItems()) != 1 {
		return "", fmt.Errorf("cluster: %d ready sandboxes of pod %s/%s on %s, want 1", len(list.GetItems()), namespace, pod, nodeName)
	}
	st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: list.Items[0].Id, Verbose: true})
	if err != nil {
		return "", fmt.Errorf("cluster: sandbox status of %s/%s: %w", namespace, pod, err)
	}
	info, err := cri.SandboxPodInfo(st)
	if err != nil {
		return "", fmt.Errorf("cluster: sandbox of %s/%s: %w", namespace, pod, err)
	}
	if info.NetNSPath == "" {
		return "", fmt.Errorf("cluster: sandbox of %s/%s has no network namespace", namespace, pod)
	}
	return info.NetNSPath, nil
}

// runtimeClient connects to node name's containerd directly (not through smr-cri).
func (cl *Cluster) runtimeClient(name string) (runtimeapi.RuntimeServiceClient, func(), error) {
	n, err := cl.Node(name)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient("unix://"+filepath.Join(cl.containerdDir(n.Name), "containerd.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: %w", err)
	}
	return runtimeapi.NewRuntimeServiceClient(conn), func() { _ = conn.Close() }, nil
}

// ContainerPID returns the host PID of the main process of a pod's running container, asked
// from its node's containerd (e2e faults signal an app process: a crash, an OOM kill, a pause).
func (cl *Cluster) ContainerPID(ctx context.Context, nodeName, namespace, pod, container string) (int, error) {
	rt, closeRT, err := cl.runtimeClient(nodeName)
	if err != nil {
		return 0, err
	}
	defer closeRT()
	list, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": namespace,
			"io.kubernetes.container.name": container},
	}})
	if err != nil {
		return 0, fmt.Errorf("cluster: list containers on %s: %w", nodeName, err)
	}
	if len(list.GetContainers()) != 1 {
		return 0, fmt.Errorf("cluster: %d running containers %s of pod %s/%s on %s, want 1",
			len(list.GetContainers()), container, namespace, pod, nodeName)
	}
	id := list.Containers[0].Id
	st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return 0, fmt.Errorf("cluster: status of container %s of %s/%s: %w", container, namespace, pod, err)
	}
	var info struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil {
		return 0, fmt.Errorf("cluster: verbose status of container %s of %s/%s: %w", container, namespace, pod, err)
	}
	if info.PID <= 0 {
		return 0, fmt.Errorf("cluster: container %s of %s/%s (%s) reports no pid", container, namespace, pod, id)
	}
	return info.PID, nil
}
