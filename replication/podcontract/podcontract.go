// Package podcontract is the vocabulary of the pod contract shared by both
// sides of the CRI boundary: the label that asks for replication, the
// annotation keys, and a pod's identity as the CRI proxy (cri) hands it to
// replication. It depends on nothing, so cri can use it without importing
// replication or raftcore. What the keys mean and how they are validated is
// replication.ParsePod's job; see replication/CONTRACT.md.
package podcontract

import "slices"

// Label and annotation keys, and their fixed values.
const (
	// LabelReplicate=ValueReplicate marks a pod whose app is replicated.
	LabelReplicate = "smr.io/replicate"
	ValueReplicate = "true"

	AnnotationGroup           = "smr.io/group"
	AnnotationPorts           = "smr.io/ports"
	AnnotationRaftPort        = "smr.io/raft-port"
	AnnotationPeers           = "smr.io/peers"
	AnnotationMembership      = "smr.io/membership"
	AnnotationMemberID        = "smr.io/member-id"
	AnnotationHTTPGetReadOnly = "smr.io/http-get-readonly"
	AnnotationHTTPPipelining  = "smr.io/http-pipelining"
	AnnotationMaxRequestBytes = "smr.io/max-request-bytes"
	AnnotationRedisAllow      = "smr.io/redis-allow"
	AnnotationSnapshotPath    = "smr.io/snapshot-path"
	AnnotationSnapshotEvery   = "smr.io/snapshot-every"
	AnnotationSnapshotBytes   = "smr.io/snapshot-bytes"
	AnnotationAppCredentials  = "smr.io/app-credentials"

	// LabelPodIndex is set by the StatefulSet controller (Kubernetes >= 1.28).
	LabelPodIndex = "apps.kubernetes.io/pod-index"
	// LabelGroup may carry the group name when the pod name is not "<sts>-<ordinal>".
	LabelGroup = "smr.io/group"

	// Values of AnnotationMembership.
	MembershipStatic     = "static"
	MembershipKubernetes = "kubernetes"
)

// Annotations lists every annotation key of the contract (a fresh slice).
func Annotations() []string {
	return []string{
		AnnotationGroup, AnnotationPorts, AnnotationRaftPort, AnnotationPeers, AnnotationMembership,
		AnnotationMemberID, AnnotationHTTPGetReadOnly, AnnotationHTTPPipelining, AnnotationMaxRequestBytes, AnnotationRedisAllow,
		AnnotationSnapshotPath, AnnotationSnapshotEvery, AnnotationSnapshotBytes, AnnotationAppCredentials,
	}
}

// IsAnnotation reports whether key is one of the contract's annotations.
func IsAnnotation(key string) bool { return slices.Contains(Annotations(), key) }

// WantsReplication reports whether a pod's labels ask for replication.
func WantsReplication(labels map[string]string) bool {
	return labels[LabelReplicate] == ValueReplicate
}

// Meta is what the contract reads from a pod: its Kubernetes object or the
// PodSandboxConfig kubelet sends over CRI.
type Meta struct {
	Name, Namespace     string
	Labels, Annotations map[string]string
}

// Pod is a running pod sandbox as the CRI proxy hands it to replication.
type Pod struct {
	SandboxID string
	Meta
	UID string
	// NetNSPath is the pod's network namespace, e.g. /var/run/netns/cni-1234....
	NetNSPath string
	// IPs are the pod's addresses, primary first.
	IPs []string
}
