package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Probe source settings (serve's --probe-source values).
const (
	// ProbeSourceAuto detects, per pod, the node addresses kubelet probes
	// come from (detectProbeSources).
	ProbeSourceAuto = "auto"
	// ProbeSourceNone turns the bypass off: every connection to a service
	// port, probes included, goes through the ordered stream.
	ProbeSourceNone = "none"
)

// ProbeSources says which source addresses bypass a pod's redirect, so that
// kubelet's liveness and readiness probes reach the app directly.
type ProbeSources struct {
	// Addrs are given explicitly (--probe-source 198.19.1.1).
	Addrs []netip.Addr
	// Auto adds the addresses detected for each pod at attach.
	Auto bool
}

// ParseProbeSources reads serve's --probe-source values: each is an IPv4
// address, "auto" or "none" ("none" only alone); empty values are skipped,
// and nothing at all means none.
func ParseProbeSources(values []string) (ProbeSources, error) {
	var ps ProbeSources
	none := false
	seen := map[netip.Addr]bool{}
	for _, v := range values {
		switch v = strings.TrimSpace(v); v {
		case "":
			continue
		case ProbeSourceNone:
			none = true
			continue
		case ProbeSourceAuto:
			ps.Auto = true
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return ProbeSources{}, fmt.Errorf("probe source %q: want an IPv4 address, %q or %q", v, ProbeSourceAuto, ProbeSourceNone)
		}
		a = a.Unmap()
		switch {
		case !a.Is4():
			return ProbeSources{}, fmt.Errorf("probe source %s is not IPv4 (only IPv4 redirects are built)", a)
		case !usableProbeSource(a):
			return ProbeSources{}, fmt.Errorf("probe source %s is not a node address", a)
		case seen[a]:
			return ProbeSources{}, fmt.Errorf("probe source %s is listed twice", a)
		}
		seen[a] = true
		ps.Addrs = append(ps.Addrs, a)
	}
	if none && (ps.Auto || len(ps.Addrs) > 0) {
		return ProbeSources{}, fmt.Errorf("probe source %q cannot be combined with other values", ProbeSourceNone)
	}
	return ps, nil
}

func usableProbeSource(a netip.Addr) bool {
	return a.Is4() && !a.IsUnspecified() && !a.IsLoopback() && !a.IsMulticast()
}

// podRoutes is what detection reads from the kernel for one pod.
type podRoutes struct {
	// Gateways of the pod netns's IPv4 default routes: on a bridge CNI the
	// bridge's address, on ptp (kindnet) the host-side veth's address.
	Gateways []netip.Addr
	// PodIPs are the pod's own IPv4 addresses (not loopback).
	PodIPs []netip.Addr
	// HostSources are, for each pod IP, the source address the daemon's
	// (the node's) netns picks to reach it (`ip route get <podIP>` → src):
	// the address kubelet's probe connections carry.
	HostSources []netip.Addr
}

// chooseProbeSources is the pure part of detection: the union of the
// gateways and host source addresses, IPv4 node addresses only, never one of
// the pod's own IPs (a pod talking to its own IP is a client), sorted.
func chooseProbeSources(r podRoutes) []netip.Addr {
	var out []netip.Addr
	for _, a := range slices.Concat(r.Gateways, r.HostSources) {
		a = a.Unmap()
		if !usableProbeSource(a) || slices.Contains(r.PodIPs, a) || slices.Contains(out, a) {
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// detectProbeSources reads the routes of the pod netns at netnsPath and the
// node's route back to each pod IP (from the calling process's netns, the
// node's), and returns the addresses kubelet's probes come from.
func detectProbeSources(netnsPath string) ([]netip.Addr, error) {
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open pod netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	// A handle bound to the pod netns: no thread has to switch namespace.
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in pod netns %s: %w", netnsPath, err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("routes of pod netns %s: %w", netnsPath, err)
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("addresses of pod netns %s: %w", netnsPath, err)
	}
	var r podRoutes
	for _, rt := range routes {
		if rt.Dst != nil && !isDefault(rt.Dst) {
			continue
		}
		r.Gateways = appendIP(r.Gateways, rt.Gw)
		for _, hop := range rt.MultiPath {
			r.Gateways = appendIP(r.Gateways, hop.Gw)
		}
	}
	for _, a := range addrs {
		if a.IPNet != nil && !a.IP.IsLoopback() {
			r.PodIPs = appendIP(r.PodIPs, a.IP)
		}
	}
	var errs []error
	for _, ip := range r.PodIPs {
		rs, err := netlink.RouteGet(ip.AsSlice())
		if err != nil {
			errs = append(errs, fmt.Errorf("node route to pod IP %s: %w", ip, err))
			continue
		}
		for _, rt := range rs {
			r.HostSources = appendIP(r.HostSources, rt.Src)
		}
	}
	found := chooseProbeSources(r)
	if len(found) == 0 {
		errs = append(errs, fmt.Errorf("no gateway in pod netns %s and no node route source to pod IPs %v", netnsPath, r.PodIPs))
		return nil, errors.Join(errs...)
	}
	return found, nil // one source found is enough; a failed route lookup is not fatal then
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

func appendIP(list []netip.Addr, ip net.IP) []netip.Addr {
	if a, ok := netip.AddrFromSlice(ip); ok {
		return append(list, a.Unmap())
	}
	return list
}
