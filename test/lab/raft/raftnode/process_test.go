package raftnode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// TestMain lets the test binary act as the raftnode process, so the
// multi-process tests need no separate build step.
func TestMain(m *testing.M) {
	if os.Getenv("RAFTNODE_CHILD") == "1" {
		if err := Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "raftnode:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParsePeers(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"1=a:1,2=b:2", 2, false},
		{"", 0, true},
		{"1=a:1,1=b:2", 0, true},
		{"0=a:1", 0, true},
		{"x=a:1", 0, true},
		{"1=", 0, true},
		{"1", 0, true},
	}
	for _, tc := range tests {
		got, err := ParsePeers(tc.in)
		if (err != nil) != tc.wantErr || len(got) != tc.want {
			t.Errorf("ParsePeers(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-id", "1", "-peers", "1=127.0.0.1:1", "-data", ""},
		{"-id", "3", "-peers", "1=127.0.0.1:1", "-data", t.TempDir()},
		{"-id", "1", "-peers", "bad", "-data", t.TempDir()},
		{"-nosuchflag"},
		{"-id", "1", "-peers", "1=127.0.0.1:0", "-data", t.TempDir()},                                            // neither -pki-dir nor -insecure-raft
		{"-id", "1", "-peers", "1=127.0.0.1:0", "-data", t.TempDir(), "-insecure-raft", "-pki-dir", t.TempDir()}, // both
		{"-id", "1", "-peers", "1=127.0.0.1:0", "-data", t.TempDir(), "-pki-dir", t.TempDir()},                   // no CA there
	} {
		var out, errb strings.Builder
		if err := Run(context.Background(), args, &out, &errb); err == nil {
			t.Errorf("Run(%v) accepted bad flags", args)
		}
	}
}

type proc struct {
	id   uint64
	raft string
	http string
	dir  string
	cmd  *exec.Cmd
}

type procCluster struct {
	t     *testing.T
	links map[[2]uint64]*proxy // from -> to: raft traffic of member from to member to
	mu    sync.Mutex
	procs map[uint64]*proc
	live  map[uint64]bool
	hc    *http.Client
	pki   string // cluster CA directory: raft runs over mutual TLS, as by default
}

func newProcCluster(t *testing.T, n int) *procCluster {
	c := &procCluster{t: t, procs: map[uint64]*proc{}, live: map[uint64]bool{},
		hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}, pki: t.TempDir()}
	if _, _, err := pki.EnsureCADir(c.pki); err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= uint64(n); id++ {
		c.procs[id] = &proc{id: id, raft: freeport.AddrT(t), http: freeport.AddrT(t), dir: t.TempDir()}
	}
	// Every directed link goes through its own TCP proxy, so tests can cut
	// links between real processes.
	c.links = map[[2]uint64]*proxy{}
	for from := range c.procs {
		for to, p := range c.procs {
			if from != to {
				c.links[[2]uint64{from, to}] = newProxy(t, p.raft)
			}
		}
	}
	for id := range c.procs {
		c.start(id)
	}
	t.Cleanup(func() {
		for id := range c.procs {
			c.kill(id)
		}
	})
	return c
}

func (c *procCluster) start(id uint64) {
	p := c.procs[id]
	var parts []string
	for to, q := range c.procs {
		addr := q.raft
		if to != id {
			addr = c.links[[2]uint64{id, to}].addr()
		}
		parts = append(parts, fmt.Sprintf("%d=%s", to, addr))
	}
	cmd := exec.Command(os.Args[0], "-id", fmt.Sprint(id), "-peers", strings.Join(parts, ","), "-http", p.http,
		"-data", p.dir, "-tick", "50ms", "-snapshot-every", "200", "-pki-dir", c.pki,
		"-no-advertise") // every link goes through its own proxy: a learned address would bypass it
	cmd.Env = append(os.Environ(), "RAFTNODE_CHILD=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start member %d: %v", id, err)
	}
	// Live before the check below, so cleanup also kills a member that started badly.
	p.cmd = cmd
	c.mu.Lock()
	c.live[id] = true
	c.mu.Unlock()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "http=") {
		c.t.Fatalf("member %d did not start: %q %v", id, line, err)
	}
}

// isolate cuts every link between id and the other members (both ways).
func (c *procCluster) isolate(id uint64, cut bool) {
	for k, l := range c.links {
		if k[0] == id || k[1] == id {
			l.setCut(cut)
		}
	}
}

// proxy forwards TCP connections to target unless cut; cutting closes the
// open connections and refuses new ones.
type proxy struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
}

func newProxy(t *testing.T, target string) *proxy {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{lis: lis, target: target, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { lis.Close(); p.setCut(true) })
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.lis.Addr().String() }

func (p *proxy) serve() {
	for {
		in, err := p.lis.Accept()
		if err != nil {
			return
		}
		go p.forward(in)
	}
}

func (p *proxy) forward(in net.Conn) {
	p.mu.Lock()
	cut := p.cut
	p.mu.Unlock()
	if cut {
		in.Close()
		return
	}
	out, err := net.Dial("tcp", p.target)
	if err != nil {
		in.Close()
		return
	}
	p.mu.Lock()
	p.conns[in], p.conns[out] = true, true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(out, in); done <- struct{}{} }()
	go func() { io.Copy(in, out); done <- struct{}{} }()
	<-done
	in.Close()
	out.Close()
	p.mu.Lock()
	delete(p.conns, in)
	delete(p.conns, out)
	p.mu.Unlock()
}

func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
	}
}

// kill sends SIGKILL: no shutdown path runs, only what was fsynced survives.
func (c *procCluster) kill(id uint64) {
	p := c.procs[id]
	c.mu.Lock()
	live := c.live[id]
	delete(c.live, id)
	c.mu.Unlock()
	if live && p.cmd != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
	}
}

func (c *procCluster) client(id uint64) *Client {
	return &Client{Base: "http://" + c.procs[id].http, HTTP: c.hc}
}

func (c *procCluster) targets() []kvtest.Target {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []kvtest.Target
	for id := range c.live {
		out = append(out, c.client(id))
	}
	return out
}

func (c *procCluster) status(id uint64) (raftcore.Status, error) {
	return c.client(id).Status(context.Background())
}

func (c *procCluster) leader(ctx context.Context) uint64 {
	members := map[uint64]*Client{}
	for id := range c.procs {
		members[id] = c.client(id)
	}
	id, err := Leader(ctx, members, 20*time.Millisecond)
	if err != nil {
		c.t.Fatal(err)
	}
	return id
}

// Separate processes on loopback gRPC: SIGKILL a minority (including the
// leader) while clients run, restart it; the history stays linearizable,
// so no acknowledged write was lost, and every member ends with the same
// state.
func TestProcessesSigkillMinority(t *testing.T) {
	for _, n := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d-members", n), func(t *testing.T) {
			c := newProcCluster(t, n)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			lead := c.leader(ctx)
			stopClients := c.runClients(ctx, uint64(n))
			time.Sleep(700 * time.Millisecond)
			victims := []uint64{lead}
			for id := uint64(1); len(victims) < (n-1)/2; id++ {
				if id != lead {
					victims = append(victims, id)
				}
			}
			for _, id := range victims {
				c.kill(id)
			}
			time.Sleep(time.Second)
			for _, id := range victims {
				c.start(id)
			}
			time.Sleep(time.Second)
			c.finish(ctx, stopClients())
		})
	}
}

// runClients starts 6 kvtest clients on 4 keys against the live members; the
// returned function stops them and returns their history.
func (c *procCluster) runClients(ctx context.Context, seed uint64) (stop func() *kvtest.History) {
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan *kvtest.History)
	go func() {
		done <- kvtest.RunClients(cctx, kvtest.ClientConfig{Clients: 6, Keys: 4, Targets: c.targets, Seed: seed})
	}()
	return func() *kvtest.History {
		cancel()
		return <-done
	}
}

// finish reads every key on every member (each acknowledged write must be
// visible, or the checker fails) and checks the history with porcupine.
func (c *procCluster) finish(ctx context.Context, h *kvtest.History) {
	t := c.t
	// Final reads on every member: each acknowledged write must be
	// visible (the checker fails otherwise).
	for id := range c.procs {
		for k := 0; k < 4; k++ {
			key := fmt.Sprintf("k%d", k)
			// Retry through elections (a loaded machine delays
			// heartbeats); only the successful read is recorded.
			var v string
			var err error
			var call int64
			for {
				call = time.Since(h.Base()).Nanoseconds()
				if v, err = c.client(id).Read(ctx, key); err == nil || ctx.Err() != nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("final read %s on %d: %v", key, id, err)
			}
			h.Record(100+int(id), kvtest.Op{Kind: "get", Key: key}, kvtest.Output{Value: v}, call, time.Since(h.Base()).Nanoseconds())
		}
	}
	t.Logf("history: ok=%d unknown=%d failed=%d", h.OK, h.Unknown, h.Failed)
	if h.OK < 20 {
		t.Fatalf("too few successful operations: %d", h.OK)
	}
	if err := h.Check(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// Separate processes, leader isolated by cutting its TCP links: the
// majority elects a new leader and keeps serving, the isolated member fails
// requests with a typed error before the caller's deadline, and after the
// partition heals the history is linearizable.
func TestProcessesPartitionLeader(t *testing.T) {
	c := newProcCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lead := c.leader(ctx)
	stopClients := c.runClients(ctx, 11)
	time.Sleep(500 * time.Millisecond)
	c.isolate(lead, true)
	// The isolated member answers with a typed error well before 10s.
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	var err error
	for pctx.Err() == nil {
		_, err = c.client(lead).Propose(pctx, raftcore.Proposal{Data: kvtest.Op{Kind: "put", Key: "iso", Value: "x"}.Encode()})
		if errors.Is(err, raftcore.ErrNoLeader) {
			break
		}
	}
	early := pctx.Err() == nil
	pcancel()
	if !early || !errors.Is(err, raftcore.ErrNoLeader) {
		t.Fatalf("isolated leader %d: got %v (before deadline: %v), want ErrNoLeader", lead, err, early)
	}
	time.Sleep(time.Second)
	c.isolate(lead, false)
	time.Sleep(time.Second)
	c.finish(ctx, stopClients())
}
