package kubectlsmr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/nodestatus"
)

func TestParse(t *testing.T) {
	tests := []struct {
		args    []string
		check   func(Options) bool
		wantErr string
	}{
		{[]string{"status"}, func(o Options) bool {
			return o.Group == "" && !o.Watch && o.Output == "table" && o.SystemNamespace == "smr-system"
		}, ""},
		{[]string{"status", "redis", "-n", "prod", "--watch"}, func(o Options) bool { return o.Group == "redis" && o.Namespace == "prod" && o.Watch }, ""},
		{[]string{"status", "-A", "redis", "-o", "json"}, func(o Options) bool { return o.AllNamespaces && o.Group == "redis" && o.Output == "json" }, ""},
		{nil, nil, "no command given"},
		{[]string{"frobnicate"}, nil, `unknown command "frobnicate"`},
		{[]string{"status", "a", "b"}, nil, "one GROUP at most"},
		{[]string{"status", "-o", "yaml"}, nil, `-o "yaml"`},
		{[]string{"status", "--color", "pink"}, nil, `--color "pink"`},
		{[]string{"status", "-A", "-n", "x"}, nil, "exclude each other"},
		{[]string{"status", "--interval", "0s"}, nil, "must be positive"},
		{[]string{"status", "--watch", "-o", "json"}, nil, "--watch prints tables only"},
		{[]string{"status", "--bogus"}, nil, "flag provided but not defined"},
	}
	for _, tc := range tests {
		o, err := parse(tc.args, &bytes.Buffer{})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || exitcode.Of(err) != 2 {
				t.Errorf("%q: %v (exit %d), want usage error %q", tc.args, err, exitcode.Of(err), tc.wantErr)
			}
			continue
		}
		if err != nil || !tc.check(o) {
			t.Errorf("%q: %+v %v", tc.args, o, err)
		}
	}
	if _, err := parse([]string{"status", "--help"}, &bytes.Buffer{}); !errors.Is(err, flag.ErrHelp) || exitcode.Of(err) != 0 {
		t.Errorf("--help: %v", err)
	}
}

type fakePods struct {
	list *corev1.PodList
	err  error
}

func (f fakePods) ListPods(context.Context, string, string) (*corev1.PodList, error) {
	return f.list, f.err
}

type fakeNodes map[string]any // pod name -> nodestatus.Report or error

func (f fakeNodes) Fetch(_ context.Context, pod corev1.Pod) (nodestatus.Report, error) {
	switch v := f[pod.Name].(type) {
	case nodestatus.Report:
		return v, nil
	case error:
		return nodestatus.Report{}, v
	}
	return nodestatus.Report{}, errors.New("unknown pod")
}

func withPeers(m nodestatus.Member, ids ...uint64) nodestatus.Member {
	m.Peers = ids
	return m
}

func dsPod(name, node string, phase corev1.PodPhase) corev1.Pod {
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "smr-system"}, Spec: corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: phase}}
}

func mem(group string, id uint64, pod, role string, leader uint64) nodestatus.Member {
	return nodestatus.Member{Group: group, MemberID: id, Pod: pod, Role: role, Leader: leader, State: nodestatus.StateServing}
}

func TestStatusAggregates(t *testing.T) {
	pods := fakePods{list: &corev1.PodList{Items: []corev1.Pod{
		dsPod("smr-cri-a", "node1", corev1.PodRunning), dsPod("smr-cri-b", "node2", corev1.PodRunning),
		dsPod("smr-cri-c", "node3", corev1.PodRunning), dsPod("smr-cri-d", "node4", corev1.PodPending)}}}
	nodes := fakeNodes{
		"smr-cri-a": nodestatus.Report{Node: "node1", Members: []nodestatus.Member{withPeers(mem("default.redis", 1, "default/redis-0", "leader", 1), 1, 2, 3),
			mem("prod.redis", 1, "prod/redis-0", "follower", 2)}},
		"smr-cri-b": nodestatus.Report{Node: "node2", Members: []nodestatus.Member{mem("default.redis", 2, "default/redis-1", "follower", 0)}},
		"smr-cri-c": errors.New("connection refused"),
	}
	var out, errOut bytes.Buffer
	o := Options{Namespace: "default", Group: "redis", Output: "table", Color: "never", Interval: 1, Timeout: 1e9}
	err := Status(context.Background(), o, pods, nodes, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "2 node(s) did not answer") {
		t.Errorf("err = %v, want 2 nodes missing", err)
	}
	got := out.String()
	for _, want := range []string{"default.redis  *1      default/redis-0  node1", "default.redis  2       default/redis-1  node2",
		"<- no leader", "! node node3 (pod smr-cri-c): connection refused",
		"default.redis  3       ?                ?", "<- unknown: no node reports this member", "! node node4: pod smr-cri-d is Pending"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "prod") {
		t.Errorf("namespace filter let prod through:\n%s", got)
	}
	// JSON: node errors go to stderr, stdout stays JSON.
	out.Reset()
	errOut.Reset()
	o.Output = "json"
	_ = Status(context.Background(), o, pods, nodes, &out, &errOut)
	var ms []nodestatus.Member
	if err := json.Unmarshal(out.Bytes(), &ms); err != nil || len(ms) != 3 || !strings.Contains(errOut.String(), "! node node3") {
		t.Errorf("json: %v %d members, stderr %q", err, len(ms), errOut.String())
	}
	// -A with namespace.group keeps only that group.
	o = Options{AllNamespaces: true, Group: "prod.redis", Output: "json", Color: "never", Interval: 1, Timeout: 1e9}
	ms, _, err = Collect(context.Background(), o, pods, nodes)
	if err != nil || len(ms) != 1 || ms[0].Pod != "prod/redis-0" || ms[0].Node != "node1" {
		t.Errorf("Collect -A prod.redis = %+v %v", ms, err)
	}
	// No DaemonSet pods, or no access: a clear error.
	if _, _, err := Collect(context.Background(), o, fakePods{list: &corev1.PodList{}}, nodes); err == nil || !strings.Contains(err.Error(), "is smr-cri installed") {
		t.Errorf("no pods: %v", err)
	}
	if _, _, err := Collect(context.Background(), o, fakePods{err: errors.New("forbidden")}, nodes); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("list error: %v", err)
	}
}

func TestStatusWatch(t *testing.T) {
	pods := fakePods{list: &corev1.PodList{Items: []corev1.Pod{dsPod("smr-cri-a", "node1", corev1.PodRunning)}}}
	nodes := fakeNodes{"smr-cri-a": nodestatus.Report{Node: "node1", Members: []nodestatus.Member{
		withPeers(mem("default.redis", 1, "default/redis-0", "leader", 1), 1)}}}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	o := Options{Namespace: "default", Watch: true, Output: "table", Color: "always", Interval: 20 * time.Millisecond, Timeout: time.Second}
	if err := Status(ctx, o, pods, nodes, &out, &bytes.Buffer{}); err != nil {
		t.Fatalf("watch ended with %v, want nil at cancel", err)
	}
	if n := strings.Count(out.String(), "every 20ms"); n < 2 {
		t.Errorf("%d refreshes, want several:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "\x1b[H\x1b[2J") || !strings.Contains(out.String(), "\x1b[1m") {
		t.Errorf("no screen clear or bold leader with --color always: %q", out.String())
	}
}
