package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/raftcore/memnet"
	"github.com/smr-io/smr-cri/replication/framing"
)

// StartPod wires a pod from its parsed contract: the same path the node
// daemon takes, with the kernel parts (netns listener, dialer) replaced by
// loopback and raft on an in-memory network.
func TestStartPodFromContract(t *testing.T) {
	stores, apps := kvApps(t, 3)
	network := memnet.New()
	defer network.Close()
	dir := t.TempDir()
	peers := "1=m1:7480,2=m2:7480,3=m3:7480"
	var pods []*Pod
	var addrs []string
	for i := range 3 {
		spec, ok, err := ParsePod(PodMeta{Name: fmt.Sprintf("kv-%d", i), Namespace: "demo",
			Labels:      map[string]string{LabelReplicate: "true"},
			Annotations: map[string]string{AnnotationPorts: "8080/http", AnnotationPeers: peers}})
		if err != nil || !ok {
			t.Fatalf("ParsePod: %v", err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		raftPeers := map[uint64]string{}
		for _, p := range spec.Peers {
			raftPeers[p.ID] = strings.TrimSuffix(p.Addr, ":7480")
		}
		self := raftPeers[spec.MemberID]
		pod, err := StartPod(context.Background(), PodConfig{
			Spec: spec, Listener: ln, Dialer: &addrDialer{addr: apps[i]},
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
		pods = append(pods, pod)
	}
	client := &http.Client{Transport: &http.Transport{}}
	for i := range 6 {
		code, body := do(t, client, "POST", "http://"+addrs[i%3]+"/incr/c", "")
		if code != 200 || body != fmt.Sprint(i+1) {
			t.Fatalf("incr %d: %d %q", i, code, body)
		}
	}
	client.CloseIdleConnections()
	waitFor(t, "every replica to apply the increments", func() bool {
		for _, s := range stores {
			if direct(t, s, "/kv/c") != "200 6" {
				return false
			}
		}
		return true
	})
	for _, p := range pods {
		if err := p.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
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
