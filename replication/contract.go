package replication

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/smr-io/smr-cri/replication/appstate"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// Defaults and bounds of the pod contract (its keys are in podcontract).
const (
	DefaultRaftPort = 7480
	// MaxRequestBytesCeiling bounds smr.io/max-request-bytes: each request is
	// one raft log entry, and entries are held in memory until applied. It
	// matches raftcore's default proposal limit (4 MiB); a request that still
	// exceeds the node's limit (entry header included) gets a "too large" reply.
	MaxRequestBytesCeiling = 4 << 20

	// DefaultSnapshotEvery and DefaultSnapshotBytes: a snapshot of the app
	// is taken after this many log entries, or this many bytes of log,
	// since the last one, whichever comes first.
	DefaultSnapshotEvery = 10000
	DefaultSnapshotBytes = 64 << 20
	// MinSnapshotEvery keeps snapshots from running back to back.
	MinSnapshotEvery = 16
)

// Port is one replicated application port.
type Port struct {
	Number   int
	Protocol string // framing.ProtoRESP or framing.ProtoHTTP
}

// Peer is one static group member.
type Peer struct {
	ID   uint64
	Addr string // host:port of the member's raft endpoint
}

// Spec is a validated replication request for one pod.
type Spec struct {
	Namespace string
	// Group is the group name inside the namespace; GroupKey() is unique per
	// cluster and a valid raftcore group name.
	Group    string
	Ports    []Port
	RaftPort int
	// Membership is podcontract.MembershipStatic (Peers set) or podcontract.MembershipKubernetes.
	Membership      string
	Peers           []Peer
	MemberID        uint64
	HTTPGetReadOnly bool
	// HTTPPipelining: the app answers pipelined HTTP/1.1 requests on one
	// connection in order (smr.io/http-pipelining), so HTTP sessions share
	// pipelined app connections (ExecutorConfig.HTTPPipelining).
	HTTPPipelining  bool
	MaxRequestBytes int
	// RedisAllow is what the pod opted in to (smr.io/redis-allow).
	RedisAllow rediscmd.Allow
	// SnapshotPath is the HTTP apps' state endpoint (smr.io/snapshot-path);
	// "" means the HTTP ports have no snapshot contract.
	SnapshotPath string
	// SnapshotEvery (entries, 0 = never) and SnapshotBytes (bytes of log)
	// bound the log kept since the last app snapshot.
	SnapshotEvery uint64
	SnapshotBytes int64
	// AppCredentials names a Secret in the pod's namespace whose keys
	// "password" (and optionally "username") authenticate smr-cri's own
	// connection to the app (snapshots, digests); never written to the log.
	AppCredentials string
}

// Snapshots reports whether the group's app can be snapshotted: every
// replicated port speaks RESP, or its HTTP app serves smr.io/snapshot-path.
// Without it the group keeps its whole log.
func (s Spec) Snapshots() bool {
	if s.SnapshotEvery == 0 {
		return false
	}
	for _, p := range s.Ports {
		if p.Protocol == framing.ProtoHTTP && s.SnapshotPath == "" {
			return false
		}
	}
	return true
}

// GroupKey names the raft group: "<namespace>.<group>" (both are DNS labels,
// which contain no dots, so the key is unambiguous).
func (s Spec) GroupKey() string { return s.Namespace + "." + s.Group }

// FramingOptions returns the framer options the spec asks for.
func (s Spec) FramingOptions() framing.Options {
	return framing.Options{
		Limits:          framing.Limits{MaxRequestBytes: s.MaxRequestBytes},
		HTTPGetReadOnly: s.HTTPGetReadOnly,
		RedisAllow:      s.RedisAllow,
	}
}

// ErrContract wraps every contract violation.
var ErrContract = errors.New("invalid smr.io pod contract")

var (
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// dnsSubdomain is a Kubernetes object name (RFC 1123 subdomain).
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	ordinalSfx   = regexp.MustCompile(`^(.+)-([0-9]+)$`)
)

// ParsePod reads the contract from a pod. It returns ok=false (and no error)
// for pods that do not ask for replication. All violations are reported
// together, each naming its key, so one pod event tells the user everything.
func ParsePod(pod podcontract.Meta) (spec Spec, ok bool, err error) {
	switch v := pod.Labels[podcontract.LabelReplicate]; v {
	case "":
		return Spec{}, false, nil
	case "false":
		return Spec{}, false, nil
	case "true":
	default:
		return Spec{}, false, fmt.Errorf("%w: label %s=%q: want \"true\" or \"false\"", ErrContract, podcontract.LabelReplicate, v)
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	ann := pod.Annotations
	for k := range ann {
		if strings.HasPrefix(k, "smr.io/") && !podcontract.IsAnnotation(k) {
			bad(k, "unknown annotation (known: %s)", strings.Join(podcontract.Annotations(), ", "))
		}
	}
	spec = Spec{Namespace: pod.Namespace, RaftPort: DefaultRaftPort, MaxRequestBytes: framing.DefaultMaxRequestBytes,
		SnapshotEvery: DefaultSnapshotEvery, SnapshotBytes: DefaultSnapshotBytes}
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}

	// Group: annotation, then label, then the StatefulSet name from "<sts>-<ordinal>".
	ordinal := int64(-1)
	if m := ordinalSfx.FindStringSubmatch(pod.Name); m != nil {
		spec.Group = m[1]
		ordinal, _ = strconv.ParseInt(m[2], 10, 64)
	}
	if v := pod.Labels[podcontract.LabelGroup]; v != "" {
		spec.Group = v
	}
	if v, set := ann[podcontract.AnnotationGroup]; set {
		spec.Group = v
	}
	switch {
	case spec.Group == "":
		bad(podcontract.AnnotationGroup, "not set and pod name %q is not \"<statefulset>-<ordinal>\"", pod.Name)
	case len(spec.Group) > 63 || !dnsLabel.MatchString(spec.Group):
		bad(podcontract.AnnotationGroup, "%q is not a DNS label (lower-case letters, digits, '-', at most 63)", spec.Group)
	}

	// Ports.
	if v, set := ann[podcontract.AnnotationPorts]; !set || strings.TrimSpace(v) == "" {
		bad(podcontract.AnnotationPorts, `required, e.g. "6379/resp,8080/http"`)
	} else if spec.Ports, err = parsePorts(v); err != nil {
		bad(podcontract.AnnotationPorts, "%v", err)
	}
	if v, set := ann[podcontract.AnnotationRaftPort]; set {
		if spec.RaftPort, err = parsePort(v); err != nil {
			bad(podcontract.AnnotationRaftPort, "%v", err)
		}
	}
	for _, p := range spec.Ports {
		if p.Number == spec.RaftPort {
			bad(podcontract.AnnotationRaftPort, "%d is also a replicated app port", p.Number)
		}
	}

	// Member ID: annotation, then pod-index label + 1, then pod name ordinal + 1.
	switch {
	case ann[podcontract.AnnotationMemberID] != "":
		id, perr := strconv.ParseUint(ann[podcontract.AnnotationMemberID], 10, 64)
		if perr != nil || id == 0 {
			bad(podcontract.AnnotationMemberID, "%q: want a positive integer", ann[podcontract.AnnotationMemberID])
		}
		spec.MemberID = id
	case pod.Labels[podcontract.LabelPodIndex] != "":
		idx, perr := strconv.ParseUint(pod.Labels[podcontract.LabelPodIndex], 10, 64)
		if perr != nil {
			bad(podcontract.LabelPodIndex, "%q: want a non-negative integer", pod.Labels[podcontract.LabelPodIndex])
		}
		spec.MemberID = idx + 1
	case ordinal >= 0:
		spec.MemberID = uint64(ordinal) + 1
	default:
		bad(podcontract.AnnotationMemberID, "not set, no %s label and no ordinal in pod name %q", podcontract.LabelPodIndex, pod.Name)
	}

	// Membership.
	mode, peers := ann[podcontract.AnnotationMembership], ann[podcontract.AnnotationPeers]
	switch {
	case mode == "" && peers != "", mode == podcontract.MembershipStatic:
		spec.Membership = podcontract.MembershipStatic
		if peers == "" {
			bad(podcontract.AnnotationPeers, "required with %s=static", podcontract.AnnotationMembership)
		} else if spec.Peers, err = parsePeers(peers); err != nil {
			bad(podcontract.AnnotationPeers, "%v", err)
		} else if spec.MemberID != 0 && !slices.ContainsFunc(spec.Peers, func(p Peer) bool { return p.ID == spec.MemberID }) {
			bad(podcontract.AnnotationPeers, "does not list this pod's member ID %d", spec.MemberID)
		}
	case mode == podcontract.MembershipKubernetes:
		spec.Membership = podcontract.MembershipKubernetes
		if peers != "" {
			bad(podcontract.AnnotationPeers, "must be empty with %s=kubernetes", podcontract.AnnotationMembership)
		}
	case mode == "":
		bad(podcontract.AnnotationMembership, "set %s (static) or %s=kubernetes", podcontract.AnnotationPeers, podcontract.AnnotationMembership)
	default:
		bad(podcontract.AnnotationMembership, "%q: want %q or %q", mode, podcontract.MembershipStatic, podcontract.MembershipKubernetes)
	}

	if v, set := ann[podcontract.AnnotationHTTPGetReadOnly]; set {
		b, perr := strconv.ParseBool(v)
		if perr != nil {
			bad(podcontract.AnnotationHTTPGetReadOnly, "%q: want true or false", v)
		}
		spec.HTTPGetReadOnly = b
	}
	if v, set := ann[podcontract.AnnotationHTTPPipelining]; set {
		b, perr := strconv.ParseBool(v)
		switch {
		case perr != nil:
			bad(podcontract.AnnotationHTTPPipelining, "%q: want true or false", v)
		case b && !slices.ContainsFunc(spec.Ports, func(p Port) bool { return p.Protocol == framing.ProtoHTTP }):
			bad(podcontract.AnnotationHTTPPipelining, "true, but no port in %s speaks http", podcontract.AnnotationPorts)
		}
		spec.HTTPPipelining = b
	}
	if v, set := ann[podcontract.AnnotationRedisAllow]; set {
		a, perr := rediscmd.ParseAllow(v)
		if perr != nil {
			bad(podcontract.AnnotationRedisAllow, "%v", perr)
		}
		spec.RedisAllow = a
	}
	if v, set := ann[podcontract.AnnotationMaxRequestBytes]; set {
		n, perr := parseSize(v)
		switch {
		case perr != nil:
			bad(podcontract.AnnotationMaxRequestBytes, "%v", perr)
		case n < 64 || n > MaxRequestBytesCeiling:
			bad(podcontract.AnnotationMaxRequestBytes, "%d out of range [64, %d]", n, MaxRequestBytesCeiling)
		default:
			spec.MaxRequestBytes = int(n)
		}
	}
	if v, set := ann[podcontract.AnnotationSnapshotPath]; set {
		if err := appstate.ValidateSnapshotPath(v); err != nil {
			bad(podcontract.AnnotationSnapshotPath, "%v", err)
		} else if !slices.ContainsFunc(spec.Ports, func(p Port) bool { return p.Protocol == framing.ProtoHTTP }) {
			bad(podcontract.AnnotationSnapshotPath, "set, but no port in %s speaks http", podcontract.AnnotationPorts)
		}
		spec.SnapshotPath = v
	}
	if v, set := ann[podcontract.AnnotationSnapshotEvery]; set {
		n, perr := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		switch {
		case perr != nil:
			bad(podcontract.AnnotationSnapshotEvery, "%q: want a number of log entries (0 = never snapshot)", v)
		case n != 0 && (n < MinSnapshotEvery || n > 1<<32):
			bad(podcontract.AnnotationSnapshotEvery, "%d out of range [%d, %d] (or 0 = never)", n, MinSnapshotEvery, uint64(1)<<32)
		default:
			spec.SnapshotEvery = n
		}
	}
	if v, set := ann[podcontract.AnnotationSnapshotBytes]; set {
		n, perr := parseBytes(v)
		switch {
		case perr != nil:
			bad(podcontract.AnnotationSnapshotBytes, "%v", perr)
		case n < 1<<20 || n > 64<<30:
			bad(podcontract.AnnotationSnapshotBytes, "%d out of range [1Mi, 64Gi]", n)
		default:
			spec.SnapshotBytes = n
		}
	}
	if v, set := ann[podcontract.AnnotationAppCredentials]; set {
		if len(v) > 253 || !dnsSubdomain.MatchString(v) {
			bad(podcontract.AnnotationAppCredentials, "%q is not a Secret name (a DNS subdomain)", v)
		}
		spec.AppCredentials = v
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return Spec{}, false, fmt.Errorf("%w on pod %s/%s: %w", ErrContract, spec.Namespace, pod.Name, errors.Join(errs...))
	}
	return spec, true, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q: want 1-65535", s)
	}
	return n, nil
}

// parsePorts parses "6379/resp,8080/http".
func parsePorts(s string) ([]Port, error) {
	var out []Port
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		num, proto, found := strings.Cut(item, "/")
		if !found {
			return nil, fmt.Errorf("%q: want <port>/<protocol>", item)
		}
		n, err := parsePort(num)
		if err != nil {
			return nil, err
		}
		proto = strings.ToLower(strings.TrimSpace(proto))
		if proto != framing.ProtoRESP && proto != framing.ProtoHTTP {
			return nil, fmt.Errorf("%q: protocol %q unknown (want resp or http)", item, proto)
		}
		if slices.ContainsFunc(out, func(p Port) bool { return p.Number == n }) {
			return nil, fmt.Errorf("port %d listed twice", n)
		}
		out = append(out, Port{Number: n, Protocol: proto})
	}
	return out, nil
}

// parsePeers parses "1=198.18.0.11:7480,2=198.18.0.12:7480".
func parsePeers(s string) ([]Peer, error) {
	var out []Peer
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		idStr, addr, found := strings.Cut(item, "=")
		if !found {
			return nil, fmt.Errorf("%q: want <id>=<host>:<port>", item)
		}
		id, err := strconv.ParseUint(idStr, 10, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("%q: member ID must be a positive integer", item)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" {
			return nil, fmt.Errorf("%q: address must be <host>:<port>", item)
		}
		if _, err := parsePort(port); err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		for _, p := range out {
			if p.ID == id {
				return nil, fmt.Errorf("member ID %d listed twice", id)
			}
			if p.Addr == addr {
				return nil, fmt.Errorf("address %s listed twice", addr)
			}
		}
		out = append(out, Peer{ID: id, Addr: addr})
	}
	slices.SortFunc(out, func(a, b Peer) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// parseSize parses "1048576", "512Ki", "4Mi".
func parseSize(s string) (int64, error) {
	mult := int64(1)
	num := strings.TrimSpace(s)
	for suffix, m := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20} {
		if strings.HasSuffix(num, suffix) {
			num, mult = strings.TrimSuffix(num, suffix), m
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > MaxRequestBytesCeiling {
		return 0, fmt.Errorf("%q: want a positive size in bytes, optionally with Ki or Mi", s)
	}
	return n * mult, nil
}

// parseBytes parses "67108864", "512Ki", "64Mi", "2Gi".
func parseBytes(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for suffix, m := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if strings.HasSuffix(num, suffix) {
			num, mult = strings.TrimSuffix(num, suffix), m
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (64<<30)/mult {
		return 0, fmt.Errorf("%q: want a positive size in bytes, optionally with Ki, Mi or Gi", s)
	}
	return n * mult, nil
}
