package replication

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

func pod(name string, labels, ann map[string]string) podcontract.Meta {
	l := map[string]string{podcontract.LabelReplicate: "true"}
	for k, v := range labels {
		l[k] = v
	}
	return podcontract.Meta{Name: name, Namespace: "shop", Labels: l, Annotations: ann}
}

func TestParsePod(t *testing.T) {
	static := map[string]string{
		podcontract.AnnotationPorts: "6379/resp, 8080/HTTP",
		podcontract.AnnotationPeers: "2=198.18.0.12:7480,1=198.18.0.11:7480,3=198.18.0.13:7480",
	}
	tests := []struct {
		name string
		pod  podcontract.Meta
		want Spec
	}{
		{"statefulset defaults", pod("redis-1", nil, static), Spec{
			Namespace: "shop", Group: "redis", RaftPort: 7480, Membership: podcontract.MembershipStatic, MemberID: 2,
			Ports:           []Port{{6379, framing.ProtoRESP}, {8080, framing.ProtoHTTP}},
			Peers:           []Peer{{1, "198.18.0.11:7480"}, {2, "198.18.0.12:7480"}, {3, "198.18.0.13:7480"}},
			MaxRequestBytes: framing.DefaultMaxRequestBytes,
			SnapshotEvery:   DefaultSnapshotEvery, SnapshotBytes: DefaultSnapshotBytes,
		}},
		{"everything explicit, kubernetes membership", pod("whatever", map[string]string{podcontract.LabelPodIndex: "4"}, map[string]string{
			podcontract.AnnotationGroup: "kv", podcontract.AnnotationPorts: "8080/http", podcontract.AnnotationRaftPort: "7000",
			podcontract.AnnotationMembership: "kubernetes", podcontract.AnnotationHTTPGetReadOnly: "true", podcontract.AnnotationMaxRequestBytes: "4Mi",
			podcontract.AnnotationHTTPPipelining: "true",
			podcontract.AnnotationRedisAllow:     "scripts, expiry",
			podcontract.AnnotationSnapshotPath:   "/_smr/state", podcontract.AnnotationSnapshotEvery: "1000", podcontract.AnnotationSnapshotBytes: "2Gi",
			podcontract.AnnotationAppCredentials: "kv-auth",
		}), Spec{
			Namespace: "shop", Group: "kv", RaftPort: 7000, Membership: podcontract.MembershipKubernetes, MemberID: 5,
			Ports: []Port{{8080, framing.ProtoHTTP}}, HTTPGetReadOnly: true, HTTPPipelining: true, MaxRequestBytes: 4 << 20,
			RedisAllow:   rediscmd.AllowScripts | rediscmd.AllowExpiry,
			SnapshotPath: "/_smr/state", SnapshotEvery: 1000, SnapshotBytes: 2 << 30, AppCredentials: "kv-auth",
		}},
		{"group label and member-id annotation win", pod("redis-0", map[string]string{podcontract.LabelGroup: "cache", podcontract.LabelPodIndex: "0"}, map[string]string{
			podcontract.AnnotationPorts: "6379/resp", podcontract.AnnotationMemberID: "9", podcontract.AnnotationPeers: "9=10.0.0.1:7480",
		}), Spec{
			Namespace: "shop", Group: "cache", RaftPort: 7480, Membership: podcontract.MembershipStatic, MemberID: 9,
			Ports: []Port{{6379, framing.ProtoRESP}}, Peers: []Peer{{9, "10.0.0.1:7480"}},
			MaxRequestBytes: framing.DefaultMaxRequestBytes,
			SnapshotEvery:   DefaultSnapshotEvery, SnapshotBytes: DefaultSnapshotBytes,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := ParsePod(tt.pod)
			if err != nil || !ok {
				t.Fatalf("ParsePod: ok=%v err=%v", ok, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
	if got := tests[0].want.GroupKey(); got != "shop.redis" {
		t.Errorf("GroupKey = %q", got)
	}
}

func TestSpecSnapshots(t *testing.T) {
	resp, http := Port{6379, framing.ProtoRESP}, Port{8080, framing.ProtoHTTP}
	for _, tc := range []struct {
		spec Spec
		want bool
	}{
		{Spec{Ports: []Port{resp}, SnapshotEvery: 10}, true},
		{Spec{Ports: []Port{resp}, SnapshotEvery: 0}, false},
		{Spec{Ports: []Port{http}, SnapshotEvery: 10}, false},
		{Spec{Ports: []Port{http}, SnapshotEvery: 10, SnapshotPath: "/s"}, true},
		{Spec{Ports: []Port{resp, http}, SnapshotEvery: 10}, false},
	} {
		if got := tc.spec.Snapshots(); got != tc.want {
			t.Errorf("%+v.Snapshots() = %v, want %v", tc.spec, got, tc.want)
		}
	}
}

func TestParsePodNotReplicated(t *testing.T) {
	for _, labels := range []map[string]string{nil, {podcontract.LabelReplicate: "false"}, {"app": "x"}} {
		_, ok, err := ParsePod(podcontract.Meta{Name: "a-0", Labels: labels})
		if ok || err != nil {
			t.Errorf("labels %v: ok=%v err=%v", labels, ok, err)
		}
	}
}

func TestParsePodBadContract(t *testing.T) {
	good := func() map[string]string {
		return map[string]string{podcontract.AnnotationPorts: "6379/resp", podcontract.AnnotationPeers: "1=198.18.0.11:7480"}
	}
	with := func(k, v string) map[string]string {
		m := good()
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name string
		pod  podcontract.Meta
		want string // substring naming the key and the problem
	}{
		{"label value", podcontract.Meta{Name: "r-0", Labels: map[string]string{podcontract.LabelReplicate: "yes"}}, `smr.io/replicate="yes"`},
		{"no ports", pod("r-0", nil, with(podcontract.AnnotationPorts, "")), "smr.io/ports: required"},
		{"port without protocol", pod("r-0", nil, with(podcontract.AnnotationPorts, "6379")), "want <port>/<protocol>"},
		{"port out of range", pod("r-0", nil, with(podcontract.AnnotationPorts, "70000/resp")), "want 1-65535"},
		{"unknown protocol", pod("r-0", nil, with(podcontract.AnnotationPorts, "6379/grpc")), `protocol "grpc" unknown`},
		{"duplicate port", pod("r-0", nil, with(podcontract.AnnotationPorts, "6379/resp,6379/http")), "listed twice"},
		{"raft port clash", pod("r-0", nil, with(podcontract.AnnotationRaftPort, "6379")), "also a replicated app port"},
		{"bad raft port", pod("r-0", nil, with(podcontract.AnnotationRaftPort, "x")), "smr.io/raft-port"},
		{"no group", pod("standalone", nil, with(podcontract.AnnotationMemberID, "1")), "is not \"<statefulset>-<ordinal>\""},
		{"bad group", pod("r-0", nil, with(podcontract.AnnotationGroup, "Bad_Name")), "not a DNS label"},
		{"no member id", pod("standalone", nil, with(podcontract.AnnotationGroup, "g")), "smr.io/member-id: not set"},
		{"zero member id", pod("r-0", nil, with(podcontract.AnnotationMemberID, "0")), "want a positive integer"},
		{"bad pod-index", pod("x", map[string]string{podcontract.LabelPodIndex: "a"}, with(podcontract.AnnotationGroup, "g")), "apps.kubernetes.io/pod-index"},
		{"no membership", pod("r-0", nil, with(podcontract.AnnotationPeers, "")), "smr.io/membership: set smr.io/peers"},
		{"unknown membership", pod("r-0", nil, with(podcontract.AnnotationMembership, "dns")), `"dns": want`},
		{"static without peers", pod("r-0", nil, map[string]string{podcontract.AnnotationPorts: "1/resp", podcontract.AnnotationMembership: "static"}), "required with"},
		{"kubernetes with peers", pod("r-0", nil, with(podcontract.AnnotationMembership, "kubernetes")), "must be empty"},
		{"peer without id", pod("r-0", nil, with(podcontract.AnnotationPeers, "198.18.0.11:7480")), "want <id>=<host>:<port>"},
		{"peer zero id", pod("r-0", nil, with(podcontract.AnnotationPeers, "0=198.18.0.11:7480")), "positive integer"},
		{"peer without port", pod("r-0", nil, with(podcontract.AnnotationPeers, "1=198.18.0.11")), "<host>:<port>"},
		{"duplicate peer id", pod("r-0", nil, with(podcontract.AnnotationPeers, "1=a:1,1=b:1")), "member ID 1 listed twice"},
		{"duplicate peer addr", pod("r-0", nil, with(podcontract.AnnotationPeers, "1=a:1,2=a:1")), "address a:1 listed twice"},
		{"self not in peers", pod("r-4", nil, good()), "does not list this pod's member ID 5"},
		{"bad bool", pod("r-0", nil, with(podcontract.AnnotationHTTPGetReadOnly, "maybe")), "want true or false"},
		{"bad http-pipelining", pod("r-0", nil, with(podcontract.AnnotationHTTPPipelining, "yes")), `smr.io/http-pipelining: "yes": want true or false`},
		{"http-pipelining without http port", pod("r-0", nil, with(podcontract.AnnotationHTTPPipelining, "true")), "smr.io/http-pipelining: true, but no port in smr.io/ports speaks http"},
		{"bad redis-allow", pod("r-0", nil, with(podcontract.AnnotationRedisAllow, "scripts,time")), `smr.io/redis-allow: unknown value "time"`},
		{"bad size", pod("r-0", nil, with(podcontract.AnnotationMaxRequestBytes, "1GB")), "positive size"},
		{"size too small", pod("r-0", nil, with(podcontract.AnnotationMaxRequestBytes, "10")), "out of range"},
		{"size too large", pod("r-0", nil, with(podcontract.AnnotationMaxRequestBytes, "5Mi")), "out of range"},
		{"snapshot path without http port", pod("r-0", nil, with(podcontract.AnnotationSnapshotPath, "/state")), "no port in smr.io/ports speaks http"},
		{"relative snapshot path", pod("r-0", nil, with(podcontract.AnnotationSnapshotPath, "state")), "smr.io/snapshot-path: appstate: snapshot path"},
		{"snapshot every not a number", pod("r-0", nil, with(podcontract.AnnotationSnapshotEvery, "often")), "smr.io/snapshot-every"},
		{"snapshot every too small", pod("r-0", nil, with(podcontract.AnnotationSnapshotEvery, "3")), "out of range"},
		{"snapshot bytes unit", pod("r-0", nil, with(podcontract.AnnotationSnapshotBytes, "1GB")), "smr.io/snapshot-bytes"},
		{"snapshot bytes too small", pod("r-0", nil, with(podcontract.AnnotationSnapshotBytes, "1Ki")), "out of range [1Mi, 64Gi]"},
		{"credentials not a name", pod("r-0", nil, with(podcontract.AnnotationAppCredentials, "Bad/Name")), "not a Secret name"},
		{"typo annotation", pod("r-0", nil, with("smr.io/prots", "1/resp")), "smr.io/prots: unknown annotation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ok, err := ParsePod(tt.pod)
			if err == nil || ok {
				t.Fatalf("want error containing %q, got ok=%v", tt.want, ok)
			}
			if !errors.Is(err, ErrContract) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q (or is not ErrContract)", err, tt.want)
			}
		})
	}
}

// All violations are reported at once.
func TestParsePodReportsEveryViolation(t *testing.T) {
	_, _, err := ParsePod(pod("r-0", nil, map[string]string{podcontract.AnnotationPorts: "x", podcontract.AnnotationRaftPort: "0", podcontract.AnnotationMembership: "dns"}))
	for _, key := range []string{podcontract.AnnotationPorts, podcontract.AnnotationRaftPort, podcontract.AnnotationMembership} {
		if err == nil || !strings.Contains(err.Error(), key+":") {
			t.Errorf("error %v does not mention %s", err, key)
		}
	}
}
