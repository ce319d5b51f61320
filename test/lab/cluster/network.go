package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// run executes a command and returns its combined output in the error.
func run(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// networkSteps is the host and node plumbing as a list of commands, in order: the host bridge,
// per node a namespace with a veth into the bridge, forwarding (and bridge netfilter, which
// kube-proxy needs for Service traffic between pods of one node), and routes so that every pod
// subnet is reached through its node from the host and from every other node.
func networkSteps(nodes []Node) [][]string {
	steps := [][]string{
		{"ip", "link", "add", BridgeName, "type", "bridge"},
		{"ip", "addr", "add", HostCIDR, "dev", BridgeName},
		{"ip", "link", "set", BridgeName, "up"},
	}
	for _, n := range nodes {
		ns := n.NetNS()
		steps = append(steps,
			[]string{"ip", "netns", "add", n.Name},
			[]string{"ip", "link", "add", n.HostVeth, "type", "veth", "peer", "name", "eth0", "netns", n.Name},
			[]string{"ip", "link", "set", n.HostVeth, "master", BridgeName, "up"},
			[]string{"ip", "-n", n.Name, "addr", "add", n.IP + "/24", "dev", "eth0"},
			[]string{"ip", "-n", n.Name, "link", "set", "lo", "up"},
			[]string{"ip", "-n", n.Name, "link", "set", "eth0", "up"},
			[]string{"nsenter", "--net=" + ns, "--", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
			[]string{"ip", "route", "replace", n.PodSubnet, "via", n.IP, "dev", BridgeName},
			// Processes on the node (hostNetwork pods, smr-cri) reach Service IPs: kube-proxy's
			// OUTPUT rules rewrite them, but only after a route lookup has succeeded.
			[]string{"ip", "-n", n.Name, "route", "replace", ServiceCIDR, "via", HostIP, "dev", "eth0"},
		)
	}
	for _, n := range nodes {
		for _, peer := range nodes {
			if peer.Index != n.Index {
				steps = append(steps, []string{"ip", "-n", n.Name, "route", "replace", peer.PodSubnet, "via", peer.IP, "dev", "eth0"})
			}
		}
	}
	return steps
}

// setupNetwork runs networkSteps. bridge-nf-call-iptables is per network namespace on current
// kernels and needs the br_netfilter module: modprobe is only tried (kmod may be absent where
// the module is built in or already loaded), but each node's sysctl must then be set.
func setupNetwork(ctx context.Context, nodes []Node) error {
	for _, s := range networkSteps(nodes) {
		if err := run(ctx, s...); err != nil {
			return fmt.Errorf("cluster: network: %w", err)
		}
	}
	_ = run(ctx, "modprobe", "br_netfilter")
	for _, n := range nodes {
		if err := run(ctx, "nsenter", "--net="+n.NetNS(), "--", "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"); err != nil {
			return fmt.Errorf("cluster: network: node %s: %w (is the br_netfilter module available?)", n.Name, err)
		}
	}
	return nil
}

// teardownNetwork removes every namespace, link and route setupNetwork could have made, for any
// node count up to MaxNodes (a crashed cluster may have had more nodes than this one). Deleting
// a namespace deletes its veth pair, and deleting the bridge deletes the routes through it.
func teardownNetwork(ctx context.Context) error {
	var errs []error
	all, _ := Nodes(MaxNodes)
	for _, n := range all {
		if _, err := os.Stat(n.NetNS()); err == nil {
			if err := run(ctx, "ip", "netns", "delete", n.Name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// The kernel removes a namespace's veth pair asynchronously: a link that vanishes between
	// the check and the delete is not an error.
	for _, link := range append(hostVeths(all), BridgeName) {
		if linkExists(ctx, link) {
			if err := run(ctx, "ip", "link", "delete", link); err != nil && linkExists(ctx, link) {
				errs = append(errs, err)
			}
		}
	}
	// Routes via a node address outlive nothing once the bridge is gone, but a route added while
	// the bridge was half set up is removed here explicitly.
	for _, n := range all {
		_ = exec.CommandContext(ctx, "ip", "route", "delete", n.PodSubnet, "via", n.IP).Run()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cluster: network teardown: %w", err)
	}
	return nil
}

func hostVeths(nodes []Node) []string {
	var names []string
	for _, n := range nodes {
		names = append(names, n.HostVeth)
	}
	return names
}

func linkExists(ctx context.Context, name string) bool {
	return exec.CommandContext(ctx, "ip", "link", "show", "dev", name).Run() == nil
}

// NetworkLeftovers lists what of the cluster network still exists on the host (for tests that
// check cleanup): namespaces, links and routes.
func NetworkLeftovers(ctx context.Context) []string {
	var left []string
	all, _ := Nodes(MaxNodes)
	for _, n := range all {
		if _, err := os.Stat(n.NetNS()); err == nil {
			left = append(left, "netns "+n.Name)
		}
		if linkExists(ctx, n.HostVeth) {
			left = append(left, "link "+n.HostVeth)
		}
	}
	if linkExists(ctx, BridgeName) {
		left = append(left, "link "+BridgeName)
	}
	out, _ := exec.CommandContext(ctx, "ip", "route", "show").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, BridgeName) || strings.HasPrefix(line, "198.19.") && strings.Contains(line, "via 198.18.0.") {
			left = append(left, "route "+line)
		}
	}
	return left
}
