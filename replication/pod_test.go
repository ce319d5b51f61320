package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

// kvPod starts replica i (0-based) of a 3-replica "kv" group from its parsed
// contract: the path the node daemon takes, with the kernel parts (netns
// listener, dialer) replaced by loopback and raft on an in-memory network.
// The raft data of replica i lives in dir/m<i+1>, so starting it again
// replays its log.
func kvPod(t *testing.T, network *memnet.Network, dir string, i int, app string) (*Pod, string) {
	t.Helper()
	return kvPodWith(t, network, dir, i, app, nil, nil)
}

// kvPodWith is kvPod with the pod's listener wrapped by wrap (nil: as is)
// and extra contract annotations.
func kvPodWith(t *testing.T, network *memnet.Network, dir string, i int, app string, wrap func(net.Listener) net.Listener,
	extra map[string]string) (*Pod, string) {
	t.Helper()
	ann := map[string]string{podcontract.AnnotationPorts: "8080/http", podcontract.AnnotationPeers: "1=m1:7480,2=m2:7480,3=m3:7480"}
	maps.Copy(ann, extra)
	spec, ok, err := ParsePod(podcontract.Meta{Name: fmt.Sprintf("kv-%d", i), Namespace: "demo",
		Labels: map[string]string{podcontract.LabelReplicate: "true"}, Annotations: ann})
	if err != nil || !ok {
		t.Fatalf("ParsePod: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var podLn net.Listener = ln
	if wrap != nil {
		podLn = wrap(ln)
	}
	raftPeers := map[uint64]string{}
	for _, p := range spec.Peers {
		raftPeers[p.ID] = strings.TrimSuffix(p.Addr, ":7480")
	}
	self := raftPeers[spec.MemberID]
	pod, err := StartPod(context.Background(), PodConfig{
		Spec: spec, Listener: podLn, Dialer: &addrDialer{addr: app},
		StartGroup: func(sm raftcore.StateMachine) (Orderer, func() error, error) {
			node, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: filepath.Join(dir, self),
				Transport: network.Endpoint(self), TickInterval: 10 * time.Millisecond, UnsafeNoFsync: true})
			if err != nil {
				return nil, nil, err
			}
			g, err := node.StartGroup(raftcore.GroupConfig{Name: spec.GroupKey(), SelfID: spec.MemberID, Peers: raftPeers}, sm)
			if err != nil {
				node.Close()
				return nil, nil, err
			}
			return g, node.Close, nil
		},
	})
	if err != nil {
		t.Fatalf("StartPod %d: %v", i, err)
	}
	t.Cleanup(func() { _ = pod.Stop() })
	return pod, ln.Addr().String()
}

func incr(t *testing.T, addr string, want int) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	if code, body := do(t, client, "POST", "http://"+addr+"/incr/c", ""); code != 200 || body != fmt.Sprint(want) {
		t.Fatalf("incr via %s: %d %q, want %d", addr, code, body, want)
	}
}

func TestStartPodFromContract(t *testing.T) {
	stores, apps := kvApps(t, 3)
	network := memnet.New()
	t.Cleanup(network.Close) // after the pods stop (cleanups run last-in first-out)
	dir := t.TempDir()
	var addrs []string
	for i := range 3 {
		_, addr := kvPod(t, network, dir, i, apps[i])
		addrs = append(addrs, addr)
	}
	for i := range 6 {
		incr(t, addrs[i%3], i+1)
	}
	waitFor(t, "every replica to apply the increments", func() bool {
		for _, s := range stores {
			if direct(t, s, "/kv/c") != "200 6" {
				return false
			}
		}
		return true
	})
}

// A replica restarted with a fresh, empty app rebuilds the app's state by
// replaying the log before it answers: its first answer is computed by its
// own new app and already counts every earlier increment.
func TestRestartedReplicaRebuildsAppFromLog(t *testing.T) {
	stores, apps := kvApps(t, 4)
	network := memnet.New()
	t.Cleanup(network.Close) // after the pods stop (cleanups run last-in first-out)
	dir := t.TempDir()
	var pods []*Pod
	var addrs []string
	for i := range 3 {
		p, addr := kvPod(t, network, dir, i, apps[i])
		pods, addrs = append(pods, p), append(addrs, addr)
	}
	for i := 1; i <= 5; i++ {
		incr(t, addrs[0], i)
	}
	if err := pods[2].Stop(); err != nil {
		t.Fatalf("stop replica 3: %v", err)
	}
	for i := 6; i <= 10; i++ {
		incr(t, addrs[1], i) // the remaining majority keeps serving
	}
	// Replica 3 comes back with a new, empty app (apps[3]).
	_, addr3 := kvPod(t, network, dir, 2, apps[3])
	incr(t, addr3, 11)
	if got := direct(t, stores[3], "/kv/c"); got != "200 11" {
		t.Fatalf("rebuilt app: %q, want 200 11", got)
	}
}

func TestStartPodBadConfig(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	two := Spec{Namespace: "n", Group: "g", MemberID: 1, Ports: []Port{{1, framing.ProtoRESP}, {2, framing.ProtoHTTP}}}
	start := func(raftcore.StateMachine) (Orderer, func() error, error) { return nil, nil, errors.New("no raft") }
	tests := []struct {
		name string
		cfg  PodConfig
		want string
	}{
		{"missing parts", PodConfig{Spec: two}, "needs Listener, Dialer and StartGroup"},
		{"several ports without OriginalPort", PodConfig{Spec: two, Listener: ln, Dialer: failDialer{}, StartGroup: start}, "needs OriginalPort"},
		{"group fails to start", PodConfig{Spec: Spec{Namespace: "n", Group: "g", MemberID: 1, Ports: two.Ports[:1]},
			Listener: ln, Dialer: failDialer{}, StartGroup: start}, "start raft group n.g: no raft"},
	}
	for _, tt := range tests {
		if _, err := StartPod(context.Background(), tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
}

// A redirected connection for a port the pod does not replicate is closed.
func TestPodDropsUnknownPort(t *testing.T) {
	p := &Pod{cfg: PodConfig{Spec: Spec{Ports: []Port{{8080, framing.ProtoHTTP}}},
		OriginalPort: func(net.Conn) (int, error) { return 9999, nil }}, servers: map[int]*Server{8080: {}}}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := p.serverFor(a); err == nil || !strings.Contains(err.Error(), "port 9999 is not replicated") {
		t.Fatalf("serverFor: %v", err)
	}
	p.cfg.OriginalPort = func(net.Conn) (int, error) { return 0, io.ErrClosedPipe }
	if _, err := p.serverFor(a); err == nil || !strings.Contains(err.Error(), "original destination") {
		t.Fatalf("serverFor: %v", err)
	}
}

// flakyListener fails its first Accepts the way a process out of file
// descriptors does.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// Running out of file descriptors for a moment does not end the replicated
// port: the pod accepts again once it can.
func TestPodAcceptRetriesAfterEMFILE(t *testing.T) {
	_, apps := kvApps(t, 3)
	network := memnet.New()
	t.Cleanup(network.Close)
	dir := t.TempDir()
	var addrs []string
	for i := range 3 {
		_, addr := kvPodWith(t, network, dir, i, apps[i], func(ln net.Listener) net.Listener {
			f := &flakyListener{Listener: ln}
			f.fails.Store(5)
			return f
		}, nil)
		addrs = append(addrs, addr)
	}
	for i, a := range addrs {
		incr(t, a, i+1)
	}
}
