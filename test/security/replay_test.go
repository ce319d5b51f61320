package security

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// recProxy forwards TCP connections to target and records the bytes each
// connection's dialer sent (the captured traffic an attacker on the path
// would hold).
type recProxy struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	rec    []*recording
}

type recording struct {
	target string
	mu     sync.Mutex
	sent   []byte
}

const maxRecord = 4 << 20

func (r *recording) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sent) < maxRecord {
		r.sent = append(r.sent, b[:min(len(b), maxRecord-len(r.sent))]...)
	}
	return len(b), nil
}

func (r *recording) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.sent...)
}

func newRecProxy(t *testing.T, target string) *recProxy {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recProxy{lis: lis, target: target}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			go p.forward(in)
		}
	}()
	return p
}

func (p *recProxy) addr() string { return p.lis.Addr().String() }

func (p *recProxy) forward(in net.Conn) {
	defer in.Close()
	out, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer out.Close()
	r := &recording{target: p.target}
	p.mu.Lock()
	p.rec = append(p.rec, r)
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(io.MultiWriter(out, r), in); done <- struct{}{} }()
	go func() { io.Copy(in, out); done <- struct{}{} }()
	<-done
}

// largest returns the recording with the most captured bytes.
func (c *cluster) largestRecording() *recording {
	var best *recording
	n := 0
	for _, p := range c.links {
		p.mu.Lock()
		for _, r := range p.rec {
			if b := len(r.bytes()); b > n {
				best, n = r, b
			}
		}
		p.mu.Unlock()
	}
	return best
}

// Bytes of a real TLS session between two members, captured on the path
// while the group ordered writes, are replayed to the member that received
// them: the handshake fails (the server's fresh key share makes the
// recorded records undecryptable), the connection is closed, the refusal
// is logged, and the group's log and state are unchanged.
func TestReplayCapturedTraffic(t *testing.T) {
	integration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startCluster(t)
	for i := 0; i < 50; i++ {
		c.put(ctx, keys[i%3], fmt.Sprint("v", i))
	}
	before := c.state(ctx)
	rec := c.largestRecording()
	if rec == nil {
		t.Fatal("no traffic was captured")
	}
	captured := rec.bytes()
	var victim *member
	for _, m := range c.members {
		if m.raft == rec.target {
			victim = m
		}
	}
	t.Logf("replaying %d captured bytes to member %d (%s)", len(captured), victim.id, rec.target)
	mark := victim.logs.len()
	conn, err := net.Dial("tcp", rec.target)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	local := conn.LocalAddr().String()
	go conn.Write(captured) // the server may close before taking it all
	// The server answers the replayed ClientHello and then closes: read
	// until EOF or reset (bounded only to fail instead of hanging).
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, rerr := io.ReadAll(conn)
	var ne net.Error
	if errors.As(rerr, &ne) && ne.Timeout() {
		testcheck.ReportOutcome(t, "replay", "connection-kept-open")
		t.Fatalf("server kept the replayed connection open (read %d bytes)", len(got))
	}
	line := victim.logs.waitFor(mark, 30*time.Second, "refused peer connection", "remote="+local)
	if line == "" {
		testcheck.ReportOutcome(t, "replay", "NOT-refused")
		t.Fatalf("member %d logged no refusal for %s", victim.id, local)
	}
	t.Logf("member %d: %s", victim.id, line)
	if d := before.diff(c.state(ctx)); d != "" {
		testcheck.ReportOutcome(t, "replay", "state-changed")
		t.Fatalf("group state changed after the replay: %s", d)
	}
	testcheck.ReportOutcome(t, "replay", "rejected")
}
