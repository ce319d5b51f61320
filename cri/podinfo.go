package cri

import (
	"encoding/json"
	"errors"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/replication/podcontract"
)

// ErrNoNetNS is returned when a sandbox has no network namespace of its own
// (a hostNetwork pod, or a runtime that does not report it).
var ErrNoNetNS = errors.New("no pod network namespace")

// sandboxVerboseInfo is the part of containerd's verbose PodSandboxStatus
// info["info"] JSON the proxy reads: the OCI runtime spec of the sandbox.
type sandboxVerboseInfo struct {
	RuntimeSpec *struct {
		Linux *struct {
			Namespaces []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	} `json:"runtimeSpec"`
}

// netNSPath extracts the network namespace path from the verbose info of a
// PodSandboxStatus response (containerd 1.6 and 2.x: info["info"] holds JSON
// with runtimeSpec.linux.namespaces[type=network].path).
func netNSPath(info map[string]string) (string, error) {
	raw, ok := info["info"]
	if !ok {
		return "", fmt.Errorf("%w: runtime returned no verbose sandbox info (key \"info\")", ErrNoNetNS)
	}
	var vi sandboxVerboseInfo
	if err := json.Unmarshal([]byte(raw), &vi); err != nil {
		return "", fmt.Errorf("parse verbose sandbox info: %w", err)
	}
	if vi.RuntimeSpec == nil || vi.RuntimeSpec.Linux == nil {
		return "", fmt.Errorf("%w: verbose sandbox info has no runtimeSpec.linux", ErrNoNetNS)
	}
	for _, ns := range vi.RuntimeSpec.Linux.Namespaces {
		if ns.Type != "network" {
			continue
		}
		if ns.Path == "" {
			return "", fmt.Errorf("%w: network namespace has no path", ErrNoNetNS)
		}
		return ns.Path, nil
	}
	return "", fmt.Errorf("%w: runtimeSpec has no network namespace (host network pod?)", ErrNoNetNS)
}

// podInfo builds the podcontract.Pod of a sandbox from its config and its verbose
// status.
func podInfo(id string, cfg *runtimeapi.PodSandboxConfig, st *runtimeapi.PodSandboxStatusResponse) (podcontract.Pod, error) {
	path, err := netNSPath(st.GetInfo())
	if err != nil {
		return podcontract.Pod{}, err
	}
	pod := podcontract.Pod{
		SandboxID: id,
		Meta: podcontract.Meta{
			Name:        cfg.GetMetadata().GetName(),
			Namespace:   cfg.GetMetadata().GetNamespace(),
			Labels:      cfg.GetLabels(),
			Annotations: cfg.GetAnnotations(),
		},
		UID:       cfg.GetMetadata().GetUid(),
		NetNSPath: path,
	}
	network := st.GetStatus().GetNetwork()
	if ip := network.GetIp(); ip != "" {
		pod.IPs = append(pod.IPs, ip)
	}
	for _, ip := range network.GetAdditionalIps() {
		if ip.GetIp() != "" {
			pod.IPs = append(pod.IPs, ip.GetIp())
		}
	}
	return pod, nil
}

// SandboxPodInfo builds the podcontract.Pod of a running sandbox from its verbose
// PodSandboxStatus alone (metadata, labels and annotations are part of the
// status): the node daemon uses it to re-attach the replicated sandboxes
// that kept running while it was down, with the same extraction as the
// RunPodSandbox hook.
func SandboxPodInfo(st *runtimeapi.PodSandboxStatusResponse) (podcontract.Pod, error) {
	s := st.GetStatus()
	if s.GetId() == "" {
		return podcontract.Pod{}, errors.New("sandbox status has no ID")
	}
	cfg := &runtimeapi.PodSandboxConfig{Metadata: s.GetMetadata(), Labels: s.GetLabels(), Annotations: s.GetAnnotations()}
	return podInfo(s.GetId(), cfg, st)
}
