package replication

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

// The harness runs N replicas in this process: real raftcore groups over an
// in-memory raft network, one Executor per replica feeding that replica's
// own app (a real server on 127.0.0.1), and a Server per replica taking
// client connections on 127.0.0.1.

const testGroup = "test.app"

// addrDialer dials a fixed app address for every port (the app under test
// listens on a random port).
type addrDialer struct {
	mu   sync.Mutex
	addr string
}

func (d *addrDialer) set(addr string) { d.mu.Lock(); d.addr = addr; d.mu.Unlock() }

func (d *addrDialer) DialApp(ctx context.Context, _ int) (net.Conn, error) {
	d.mu.Lock()
	addr := d.addr
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", addr)
}

type replica struct {
	id     uint64
	node   *raftcore.Node
	group  *raftcore.Group
	exec   *Executor
	dialer *addrDialer
	addr   string // client address of this replica's Server
	trace  *syncBuffer
	tracer *Tracer
	// prog is the progress record (clusterOpts.progress): a replica runs
	// its executor as a member does, resumable after a restart.
	prog *Progress
	cfg  ExecutorConfig
}

type cluster struct {
	t        testing.TB
	replicas []*replica
	metrics  *Metrics
	reg      *prometheus.Registry
	// for replicas restarted by a test (rebuildReplica)
	network *memnet.Network
	dir     string
	peers   map[uint64]string
	setup   func(*Executor) // clusterOpts.setup, for restarted executors too
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type clusterOpts struct {
	port     Port
	framing  framing.Options
	appAddrs []string              // one per replica
	fsync    bool                  // WAL fsync on (benchmarks); tests skip it for speed
	wrap     func(Orderer) Orderer // optional fault injection between Server and raft
	exec     func(*ExecutorConfig)
	budget   *ClientBudget // every replica's servers share it (one node's budget)
	// progress runs each executor behind a progress record as a member
	// does (restartExecutor resumes it at the running app's position) and
	// lets it propose (END entries).
	progress bool
	// setup, if set, is called with each new executor before its group
	// starts (e.g. EnableSnapshots with the app's credentials).
	setup func(*Executor)
}

func newCluster(t testing.TB, o clusterOpts) *cluster {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	network := memnet.New()
	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, metrics: metrics, reg: reg}
	peers := map[uint64]string{}
	for i := range o.appAddrs {
		peers[uint64(i+1)] = fmt.Sprintf("m%d", i+1)
	}
	dir := t.TempDir()
	c.network, c.dir, c.peers, c.setup = network, dir, peers, o.setup
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		for _, r := range c.replicas {
			_ = r.node.Close()
			_ = r.exec.Close()
			if r.prog != nil {
				_ = r.prog.Close()
			}
		}
		network.Close()
	})
	for i, appAddr := range o.appAddrs {
		id := uint64(i + 1)
		r := &replica{id: id, dialer: &addrDialer{addr: appAddr}, trace: &syncBuffer{}}
		r.tracer = NewTracer(r.trace)
		t.Cleanup(func() { _ = r.tracer.Close() })
		cfg := ExecutorConfig{
			Group: testGroup, Self: id, Ports: []Port{o.port}, Dialer: r.dialer, Framing: o.framing,
			Trace: r.tracer, Metrics: metrics,
		}
		if o.exec != nil {
			o.exec(&cfg)
		}
		if r.exec, err = NewExecutor(cfg); err != nil {
			t.Fatal(err)
		}
		if o.setup != nil {
			o.setup(r.exec)
		}
		r.cfg = cfg
		r.node, err = raftcore.NewNode(raftcore.NodeConfig{
			DataDir: filepath.Join(dir, peers[id]), Transport: network.Endpoint(peers[id]),
			TickInterval: 10 * time.Millisecond, UnsafeNoFsync: !o.fsync,
		})
		if err != nil {
			t.Fatal(err)
		}
		var sm raftcore.StateMachine = r.exec
		if o.progress {
			if r.prog, err = OpenProgress(filepath.Join(dir, peers[id]+"-progress"), "sandbox-"+peers[id]); err != nil {
				t.Fatal(err)
			}
			sm = newResumingSM(r.exec, r.prog, testGroup, slog.New(slog.DiscardHandler))
		}
		if r.group, err = r.node.StartGroup(raftcore.GroupConfig{Name: testGroup, SelfID: id, Peers: peers}, sm); err != nil {
			t.Fatal(err)
		}
		if o.progress {
			r.exec.reportTo(r.group)
		}
		c.replicas = append(c.replicas, r)
	}
	for _, r := range c.replicas {
		var orderer Orderer = r.group
		if o.wrap != nil {
			orderer = o.wrap(orderer)
		}
		srv, err := NewServer(ServerConfig{Group: testGroup, Self: r.id, Port: o.port, Framing: o.framing, Orderer: orderer, Exec: r.exec, Metrics: metrics,
			Budget: o.budget})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r.addr = ln.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := orderReset(ctx, r.group); err != nil && ctx.Err() == nil {
				t.Errorf("reset origin %d: %v", r.id, err)
			}
			_ = srv.Serve(ctx, ln)
		}()
	}
	return c
}

// waitFor polls cond until it holds; the test's own deadline bounds it.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitIdle waits until every replica applied the same index and has no
// open sessions left (all clients closed): no app connection and no
// de-duplication state in raftcore (CLOSE ends the session there too).
func (c *cluster) waitIdle() {
	c.t.Helper()
	waitFor(c.t, "replicas to apply every CLOSE", func() bool {
		var idx uint64
		for i, r := range c.replicas {
			st := r.group.Status()
			if r.exec.Sessions() != 0 || st.Sessions != 0 || st.Applied != st.Commit || (i > 0 && st.Applied != idx) {
				return false
			}
			idx = st.Applied
		}
		return true
	})
}

// waitCaughtUp waits until every replica applied everything committed so
// far (followers apply asynchronously), so their apps can be compared.
func (c *cluster) waitCaughtUp() {
	c.t.Helper()
	var target uint64
	for _, r := range c.replicas {
		target = max(target, r.group.Status().Commit)
	}
	waitFor(c.t, fmt.Sprintf("every replica to apply index %d", target), func() bool {
		for _, r := range c.replicas {
			if r.exec.Applied() < target {
				return false
			}
		}
		return true
	})
}

// traceText returns everything the replica traced so far.
func (r *replica) traceText() string {
	r.tracer.Flush()
	return r.trace.String()
}

// orderReset orders RESET, retrying like a pod does (pod.go): a new group
// may need more than waitLeader's two election timeouts on a loaded
// machine, and ErrNoLeader then is not a failure of the test.
func orderReset(ctx context.Context, o Orderer) error {
	for {
		err := ResetOrigin(ctx, o)
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}
