package replication

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

// recordingInterceptor records Apply/Cleanup calls (the real one is tested
// in netintercept against real network namespaces).
type recordingInterceptor struct {
	mu       sync.Mutex
	calls    []string
	applyErr error
}

func (r *recordingInterceptor) Apply(_ context.Context, netns string, s netintercept.Spec) (netintercept.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("apply %s ports=%v listener=%d exclude=%v", netns, s.ServicePorts, s.ListenerPort, s.ExcludePorts))
	return netintercept.Result{Changed: true}, r.applyErr
}

func (r *recordingInterceptor) Cleanup(_ context.Context, netns string) (netintercept.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "cleanup "+netns)
	return netintercept.Result{Changed: true}, nil
}

func (r *recordingInterceptor) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// testManager runs one Manager per "node"; pods' netns paths are the keys
// of a table of loopback listeners and app addresses.
type testEnv struct {
	network *memnet.Network
	dir     string
	apps    map[string]string // netns -> app address
	addrs   sync.Map          // netns -> client address of the listener
}

func (e *testEnv) manager(t *testing.T, ic Interceptor) *Manager {
	m, err := NewManager(ManagerConfig{
		Intercept: ic,
		Listen: func(netns, addr string) (net.Listener, error) {
			if addr != ":15006" {
				return nil, fmt.Errorf("unexpected listen address %q", addr)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err == nil {
				e.addrs.Store(netns, ln.Addr().String())
			}
			return ln, err
		},
		Dialer:       func(netns string) AppDialer { return &addrDialer{addr: e.apps[netns]} },
		OriginalPort: func(net.Conn) (int, error) { return 8080, nil },
		StartGroup: func(ctx context.Context, pod podcontract.Pod, spec Spec, sm raftcore.StateMachine) (Orderer, func() error, error) {
			peers := map[uint64]string{}
			for _, p := range spec.Peers {
				peers[p.ID] = p.Addr
			}
			self := peers[spec.MemberID]
			node, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: filepath.Join(e.dir, pod.SandboxID),
				Transport: e.network.Endpoint(self), TickInterval: 10 * time.Millisecond, UnsafeNoFsync: true})
			if err != nil {
				return nil, nil, err
			}
			g, err := node.StartGroup(raftcore.GroupConfig{Name: spec.GroupKey(), SelfID: spec.MemberID, Peers: peers}, sm)
			if err != nil {
				node.Close()
				return nil, nil, err
			}
			return g, node.Close, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

func kvPodRef(i int, ann map[string]string) podcontract.Pod {
	a := map[string]string{podcontract.AnnotationPorts: "8080/http", podcontract.AnnotationPeers: "1=198.18.0.11:7480,2=198.18.0.12:7480,3=198.18.0.13:7480"}
	for k, v := range ann {
		a[k] = v
	}
	return podcontract.Pod{SandboxID: fmt.Sprintf("sb%d", i), NetNSPath: fmt.Sprintf("/var/run/netns/pod%d", i),
		Meta: podcontract.Meta{Name: fmt.Sprintf("kv-%d", i), Namespace: "demo",
			Labels: map[string]string{podcontract.LabelReplicate: "true"}, Annotations: a}}
}

func TestManagerAttachDetach(t *testing.T) {
	stores, apps := kvApps(t, 3)
	env := &testEnv{network: memnet.New(), dir: t.TempDir(), apps: map[string]string{}}
	t.Cleanup(env.network.Close) // after the managers close
	ic := &recordingInterceptor{}
	m := env.manager(t, ic)
	ctx := context.Background()
	for i := range 3 {
		ref := kvPodRef(i, nil)
		env.apps[ref.NetNSPath] = apps[i]
		if err := m.Attach(ctx, ref); err != nil {
			t.Fatalf("attach %d: %v", i, err)
		}
	}
	// Attaching again is a no-op; a pod without the label is ignored.
	if err := m.Attach(ctx, kvPodRef(0, nil)); err != nil {
		t.Fatal(err)
	}
	plain := kvPodRef(9, nil)
	plain.Meta.Labels = nil
	if err := m.Attach(ctx, plain); err != nil {
		t.Fatal(err)
	}
	if got := m.Attached(); !slices.Equal(got, []string{"sb0", "sb1", "sb2"}) {
		t.Fatalf("attached %v", got)
	}
	addr, _ := env.addrs.Load("/var/run/netns/pod1")
	incr(t, addr.(string), 1)
	incr(t, addr.(string), 2)
	waitFor(t, "all apps to count 2", func() bool {
		for _, s := range stores {
			if direct(t, s, "/kv/c") != "200 2" {
				return false
			}
		}
		return true
	})
	if err := m.Detach(ctx, "sb2"); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if err := m.Detach(ctx, "unknown"); err != nil {
		t.Fatalf("detach of an unknown sandbox: %v", err)
	}
	want := []string{
		"apply /var/run/netns/pod0 ports=[8080] listener=15006 exclude=[7480]",
		"apply /var/run/netns/pod1 ports=[8080] listener=15006 exclude=[7480]",
		"apply /var/run/netns/pod2 ports=[8080] listener=15006 exclude=[7480]",
		"cleanup /var/run/netns/pod2",
	}
	if got := ic.Calls(); !slices.Equal(got, want) {
		t.Fatalf("interceptor calls\n got %q\nwant %q", got, want)
	}
	incr(t, addr.(string), 3) // the remaining majority serves
}

func TestManagerAttachErrors(t *testing.T) {
	env := &testEnv{network: memnet.New(), dir: t.TempDir(), apps: map[string]string{}}
	t.Cleanup(env.network.Close) // after the managers close
	ctx := context.Background()
	noNetns := kvPodRef(0, nil)
	noNetns.NetNSPath = ""
	tests := []struct {
		name      string
		ref       podcontract.Pod
		applyErr  error
		want      string
		wantCalls []string
	}{
		{"bad annotation", kvPodRef(0, map[string]string{podcontract.AnnotationPorts: "6379/grpc"}), nil, `protocol "grpc" unknown`, nil},
		{"no netns", noNetns, nil, "network namespace are required", nil},
		{"listener port clash", kvPodRef(0, map[string]string{podcontract.AnnotationPorts: "15006/http"}), nil, "interception spec", nil},
		{"interception fails", kvPodRef(0, nil), errors.New("iptables-restore: exit 1"), "intercept: iptables-restore",
			[]string{"apply /var/run/netns/pod0 ports=[8080] listener=15006 exclude=[7480]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ic := &recordingInterceptor{applyErr: tt.applyErr}
			m := env.manager(t, ic)
			err := m.Attach(ctx, tt.ref)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if got := ic.Calls(); !slices.Equal(got, tt.wantCalls) {
				t.Fatalf("interceptor calls %q, want %q", got, tt.wantCalls)
			}
			if len(m.Attached()) != 0 {
				t.Fatalf("failed attach left %v", m.Attached())
			}
		})
	}
	if _, err := NewManager(ManagerConfig{}); err == nil {
		t.Fatal("NewManager without Intercept and StartGroup: want an error")
	}
}

// The repair-loop bound counts repairs per cause within the window: the
// same cause again and again is a loop, unrelated faults are not.
func TestRepairHistory(t *testing.T) {
	t0 := time.Unix(1000, 0)
	type repair struct {
		after time.Duration
		cause string
		want  int // repairs for that cause within the window, this one included
	}
	for _, tc := range []struct {
		name    string
		repairs []repair
	}{
		{"one cause, loop", []repair{{0, "container-restart", 1}, {time.Minute, "container-restart", 2},
			{2 * time.Minute, "container-restart", 3}, {3 * time.Minute, "container-restart", 4}}},
		{"unrelated causes do not add up", []repair{{0, "container-restart", 1}, {time.Minute, "session-broken", 1},
			{2 * time.Minute, "divergence", 1}, {3 * time.Minute, "container-restart", 2}}},
		{"old repairs leave the window", []repair{{0, "divergence", 1}, {5 * time.Minute, "divergence", 2},
			{repairWindow + time.Minute, "divergence", 2}, {2 * repairWindow, "divergence", 2}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h repairHistory
			for i, r := range tc.repairs {
				if got := h.add(t0.Add(r.after), r.cause); got != r.want {
					t.Fatalf("repair %d (%s at +%s): %d in the window, want %d", i, r.cause, r.after, got, r.want)
				}
			}
			if tc.repairs[len(tc.repairs)-1].want > maxRepairs != (tc.name == "one cause, loop") {
				t.Fatalf("loop verdict wrong for %q", tc.name)
			}
		})
	}
}

// A detached member's open HTTP keep-alive connection is told why it ends
// (503 with "; try another replica"), never closed bare, and so is a
// client that arrives while the member stops.
func TestManagerDetachTellsOpenClients(t *testing.T) {
	_, apps := kvApps(t, 3)
	env := &testEnv{network: memnet.New(), dir: t.TempDir(), apps: map[string]string{}}
	t.Cleanup(env.network.Close)
	m := env.manager(t, &recordingInterceptor{})
	ctx := context.Background()
	for i := range 3 {
		ref := kvPodRef(i, nil)
		env.apps[ref.NetNSPath] = apps[i]
		if err := m.Attach(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := env.addrs.Load("/var/run/netns/pod0")
	addr := a.(string)
	incr(t, addr, 1)
	open, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	_ = open.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(open)
	if _, err := open.Write([]byte("GET /kv/c HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET before the detach: %v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	if err := m.Detach(ctx, "sb0"); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("the open connection ended with %v after %q, want the refusal and a clean close", err, rest)
	}
	if s := string(rest); !strings.HasPrefix(s, "HTTP/1.1 503 Service Unavailable\r\n") ||
		!strings.Contains(s, "replica restarting or stopping; try another replica") {
		t.Errorf("open keep-alive connection at the detach got %q, want a 503 saying why", s)
	}
}
