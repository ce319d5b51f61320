package raftnode

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/raftcore/kvtest"
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
	peers string
	mu    sync.Mutex
	procs map[uint64]*proc
	live  map[uint64]bool
	hc    *http.Client
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func newProcCluster(t *testing.T, n int) *procCluster {
	c := &procCluster{t: t, procs: map[uint64]*proc{}, live: map[uint64]bool{},
		hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	var parts []string
	for id := uint64(1); id <= uint64(n); id++ {
		p := &proc{id: id, raft: freePort(t), http: freePort(t), dir: t.TempDir()}
		c.procs[id] = p
		parts = append(parts, fmt.Sprintf("%d=%s", id, p.raft))
	}
	c.peers = strings.Join(parts, ",")
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
	cmd := exec.Command(os.Args[0], "-id", fmt.Sprint(id), "-peers", c.peers, "-http", p.http,
		"-data", p.dir, "-tick", "50ms", "-snapshot-every", "200")
	cmd.Env = append(os.Environ(), "RAFTNODE_CHILD=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start member %d: %v", id, err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "http=") {
		c.t.Fatalf("member %d did not start: %q %v", id, line, err)
	}
	p.cmd = cmd
	c.mu.Lock()
	c.live[id] = true
	c.mu.Unlock()
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
	var st raftcore.Status
	resp, err := c.hc.Get("http://" + c.procs[id].http + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (c *procCluster) leader(ctx context.Context) uint64 {
	for ctx.Err() == nil {
		for id := range c.procs {
			if st, err := c.status(id); err == nil && st.State == "StateLeader" {
				return id
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatal("no leader")
	return 0
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
			cctx, stop := context.WithCancel(ctx)
			done := make(chan *kvtest.History)
			go func() {
				done <- kvtest.RunClients(cctx, kvtest.ClientConfig{Clients: 6, Keys: 4, Targets: c.targets, Seed: uint64(n)})
			}()
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
			stop()
			h := <-done
			// Final reads on every member: each acknowledged write must be
			// visible (the checker fails otherwise).
			for id := range c.procs {
				for k := 0; k < 4; k++ {
					key := fmt.Sprintf("k%d", k)
					// Retry through elections (a loaded machine delays
					// heartbeats); only the successful read is recorded.
					var v string
					var err error
					call := time.Since(h.Base()).Nanoseconds()
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
		})
	}
}
