// Package security holds smr-cri's security tests with real processes:
// three raftnode processes on loopback ordering one group over mutual TLS,
// attacked by rogue processes (no certificate, plaintext, a foreign CA, a
// certificate for another group, a non-member, a member ID it does not
// hold, an expired certificate) and by a replay of captured traffic; and
// the node daemon's CRI socket mode. Each attack must be refused with a
// clear reason in the target's log, and the group's log and every
// replica's state must be unchanged afterwards.
//
// hack/test-security.sh runs them (env SMR_SECURITY_REPORT names a file
// where each test writes what it observed) and prints the summary line.
package security

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/raftcore/transport"
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
	"github.com/smr-io/smr-cri/test/lab/raft/raftnode"
	"github.com/smr-io/smr-cri/test/lab/testcheck"
	"go.etcd.io/raft/v3/raftpb"
)

// TestMain lets the test binary act as a raftnode member or as a rogue
// process, so the tests need no separate build step.
func TestMain(m *testing.M) {
	switch {
	case os.Getenv("RAFTNODE_CHILD") == "1":
		if err := raftnode.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "raftnode:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case os.Getenv("SMR_ROGUE") == "1":
		if err := rogue(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "rogue:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const group = "kv"

// ------------------------------------------------------------ rogue process

// rogue dials -target as a raft peer and keeps sending a proposal that, if
// accepted, would write rogue=pwned into the group's KV state, claiming to
// be member -from of -group. -cert selects what it presents.
func rogue(args []string) error {
	fs := flag.NewFlagSet("rogue", flag.ContinueOnError)
	target := fs.String("target", "", "raft address of the member to attack")
	grp := fs.String("group", group, "group named in the messages")
	from := fs.Uint64("from", 2, "member id claimed as sender")
	to := fs.Uint64("to", 1, "member id addressed")
	mode := fs.String("cert", "none", "plaintext | none | foreign-ca | expired | issued")
	caDir := fs.String("ca", "", "cluster CA dir (to issue certificates the rogue 'stole' or was given)")
	certGroup := fs.String("cert-group", group, "group in the issued certificate")
	certMember := fs.Uint64("cert-member", 2, "member id in the issued certificate")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var tc *tls.Config
	if *mode != "plaintext" {
		var cert *tls.Certificate
		id := []pki.Identity{{Group: *certGroup, Member: *certMember}}
		now := time.Now()
		switch *mode {
		case "none":
		case "foreign-ca":
			ca, err := pki.NewCA("rogue CA", time.Hour)
			if err != nil {
				return err
			}
			if cert, err = ca.Issue(id, pki.IssueOptions{}); err != nil {
				return err
			}
		case "expired", "issued":
			ca, err := pki.LoadCA(*caDir)
			if err != nil {
				return err
			}
			opts := pki.IssueOptions{}
			if *mode == "expired" {
				opts = pki.IssueOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}
			}
			if cert, err = ca.Issue(id, opts); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown -cert %q", *mode)
		}
		tc = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
	}
	cfg := transport.Config{TLS: tc, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	if tc != nil {
		cfg.AuthorizePeer = func(*x509.Certificate, string, uint64) error { return nil } // a rogue trusts anyone
	}
	tr, err := transport.New(cfg)
	if err != nil {
		return err
	}
	if err := tr.Start(nopHandler{}); err != nil {
		return err
	}
	defer tr.Close()
	fmt.Println("rogue: sending")
	for i := uint64(1); ; i++ {
		tr.Send(*grp, *to, *target, []*raftpb.Message{rogueProposal(*from, *to, i)})
		time.Sleep(100 * time.Millisecond)
	}
}

// rogueProposal is a MsgProp whose entry raftcore would apply as a put of
// rogue=pwned (the envelope layout of raftcore/envelope.go: version,
// origin, pid, session, seq, payload).
func rogueProposal(from, to, pid uint64) *raftpb.Message {
	data := []byte{1}
	for _, v := range []uint64{from, 1<<40 + pid, 0, 0} {
		data = binary.AppendUvarint(data, v)
	}
	data = append(data, kvtest.Op{Kind: "put", Key: "rogue", Value: "pwned"}.Encode()...)
	return &raftpb.Message{Type: raftpb.MsgProp.Enum(), From: new(from), To: new(to),
		Entries: []*raftpb.Entry{{Type: raftpb.EntryNormal.Enum(), Data: data}}}
}

type nopHandler struct{}

func (nopHandler) Deliver(string, []*raftpb.Message)   {}
func (nopHandler) ReportUnreachable(string, uint64)    {}
func (nopHandler) ReportSnapshot(string, uint64, bool) {}

// ------------------------------------------------------------ cluster

type member struct {
	id         uint64
	raft, http string
	cmd        *exec.Cmd
	logs       *logTail
}

// logTail keeps a member's stderr lines so tests can wait for one.
type logTail struct {
	mu    sync.Mutex
	lines []string
	cond  *sync.Cond
}

func newLogTail(r io.Reader) *logTail {
	l := &logTail{}
	l.cond = sync.NewCond(&l.mu)
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			l.cond.Broadcast()
			l.mu.Unlock()
		}
	}()
	return l
}

// waitFor returns the first line at or after position from that contains
// every substring, or "" if none came before the (failure-only) bound; a
// bound <= 0 only looks at the lines already there.
func (l *logTail) waitFor(from int, bound time.Duration, substrs ...string) string {
	timer := time.AfterFunc(bound, func() { l.mu.Lock(); l.cond.Broadcast(); l.mu.Unlock() })
	defer timer.Stop()
	deadline := time.Now().Add(bound)
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := from; ; {
		for ; i < len(l.lines); i++ {
			ok := true
			for _, s := range substrs {
				ok = ok && strings.Contains(l.lines[i], s)
			}
			if ok {
				return l.lines[i]
			}
		}
		if bound <= 0 || time.Now().After(deadline) {
			return ""
		}
		l.cond.Wait()
	}
}

func (l *logTail) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

type cluster struct {
	t       *testing.T
	caDir   string
	members map[uint64]*member
	links   []*recProxy
	hc      *http.Client
}

// startCluster runs three raftnode members over mutual TLS; every link
// between them goes through a recording proxy (the captured traffic the
// replay test uses).
func startCluster(t *testing.T) *cluster {
	c := &cluster{t: t, caDir: t.TempDir(), members: map[uint64]*member{}, hc: &http.Client{Timeout: 10 * time.Second}}
	if _, _, err := pki.EnsureCADir(c.caDir); err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= 3; id++ {
		c.members[id] = &member{id: id, raft: freeport.AddrT(t), http: freeport.AddrT(t)}
	}
	// Registered before any start, so a member that fails to start does not
	// leave the ones started before it running.
	t.Cleanup(func() {
		for _, m := range c.members {
			if m.cmd != nil {
				m.cmd.Process.Kill()
				m.cmd.Wait()
			}
		}
	})
	for id, m := range c.members {
		var peers []string
		for to, p := range c.members {
			addr := p.raft
			if to != id {
				px := newRecProxy(t, p.raft)
				c.links = append(c.links, px)
				addr = px.addr()
			}
			peers = append(peers, fmt.Sprintf("%d=%s", to, addr))
		}
		cmd := exec.Command(os.Args[0], "-id", fmt.Sprint(id), "-group", group, "-peers", strings.Join(peers, ","),
			"-http", m.http, "-data", t.TempDir(), "-pki-dir", c.caDir,
			// Slow ticks (election after 2s): a spurious election on a
			// loaded machine would append an entry and look like an
			// injected one.
			"-tick", "200ms")
		cmd.Env = append(os.Environ(), "RAFTNODE_CHILD=1")
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start member %d: %v", id, err)
		}
		m.cmd, m.logs = cmd, newLogTail(io.TeeReader(stderr, prefixWriter{os.Stderr, fmt.Sprintf("[member %d] ", id)}))
		if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || !strings.HasPrefix(line, "http=") {
			t.Fatalf("member %d did not start: %q %v", id, line, err)
		}
		go io.Copy(io.Discard, stdout)
	}
	return c
}

type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			io.WriteString(p.w, p.prefix+line)
		}
	}
	return len(b), nil
}

func (c *cluster) client(id uint64) *raftnode.Client {
	return &raftnode.Client{Base: "http://" + c.members[id].http, HTTP: c.hc}
}

func (c *cluster) status(id uint64) (raftcore.Status, error) {
	return c.client(id).Status(context.Background())
}

func (c *cluster) leader(ctx context.Context) uint64 {
	members := map[uint64]*raftnode.Client{}
	for id := range c.members {
		members[id] = c.client(id)
	}
	id, err := raftnode.Leader(ctx, members, 50*time.Millisecond)
	if err != nil {
		c.t.Fatal(err)
	}
	return id
}

// put writes through the group, retrying through elections.
func (c *cluster) put(ctx context.Context, key, value string) {
	for ctx.Err() == nil {
		lead := c.leader(ctx)
		if _, err := c.client(lead).Propose(ctx, raftcore.Proposal{Data: kvtest.Op{Kind: "put", Key: key, Value: value}.Encode()}); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("put %s: %v", key, ctx.Err())
}

// state is what must not change under attack: every member's value of
// each key (linearizable reads) and its applied and commit index.
type state map[uint64]string

var keys = []string{"a", "b", "c", "rogue"}

func (c *cluster) state(ctx context.Context) state {
	s := state{}
	for id := range c.members {
		// Reads first: a linearizable read on a follower waits until it
		// has applied everything the leader had committed, so the status
		// taken after it is not one heartbeat behind.
		var vals []string
		for _, k := range keys {
			var v string
			var err error
			for {
				if v, err = c.client(id).Read(ctx, k); err == nil || ctx.Err() != nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				c.t.Fatalf("read %s on %d: %v", k, id, err)
			}
			vals = append(vals, k+"="+v)
		}
		st, err := c.status(id)
		if err != nil {
			c.t.Fatalf("status %d: %v", id, err)
		}
		s[id] = fmt.Sprintf("applied=%d commit=%d %s", st.Applied, st.Commit, strings.Join(vals, " "))
	}
	return s
}

func (s state) diff(o state) string {
	var out []string
	for id, v := range s {
		if o[id] != v {
			out = append(out, fmt.Sprintf("member %d: %s -> %s", id, v, o[id]))
		}
	}
	return strings.Join(out, "; ")
}

// ------------------------------------------------------------ tests

func integration(t *testing.T) {
	if os.Getenv("SMR_INTEGRATION") != "1" && os.Getenv("SMR_SECURITY") != "1" {
		t.Skip("multi-process security test: run with SMR_SECURITY=1 (or SMR_INTEGRATION=1), e.g. make test-security")
	}
}

// Rogue processes attack the leader of a running group over its raft port;
// each is refused with a clear reason in the leader's log and nothing
// reaches the group's log: every member's applied index and KV state are
// unchanged. A final control run with a genuine member certificate shows
// that the same proposal would have been applied, so the checks above are
// meaningful.
func TestRoguePeers(t *testing.T) {
	integration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t)
	for i, k := range keys[:3] {
		c.put(ctx, k, fmt.Sprint("v", i))
	}
	lead := c.leader(ctx)
	target := c.members[lead].raft
	before := c.state(ctx)
	// other and third: the two followers.
	var followers []uint64
	for id := uint64(1); id <= 3; id++ {
		if id != lead {
			followers = append(followers, id)
		}
	}
	other, third := followers[0], followers[1]
	tests := []struct {
		name, kind string // kind: the summary key
		args       []string
		want       string // substring of the leader's refusal log line
	}{
		{"plaintext", "rogue-peer", []string{"-cert", "plaintext"}, "first record does not look like a TLS handshake"},
		{"no-certificate", "rogue-peer", []string{"-cert", "none"}, "peer presented no certificate"},
		{"foreign-ca", "rogue-peer", []string{"-cert", "foreign-ca"}, "is not signed by the cluster CA"},
		{"expired", "rogue-peer", []string{"-cert", "expired"}, "expired at"},
		{"not-a-member", "rogue-peer", []string{"-cert", "issued", "-cert-member", "9", "-from", "9"}, "member 9 is not a current member of group kv"},
		{"wrong-group", "wrong-group", []string{"-cert", "issued", "-cert-group", "web", "-cert-member", fmt.Sprint(other), "-from", fmt.Sprint(other)},
			fmt.Sprintf("peer certificate for group web member %d is not valid for group kv", other)},
		// A genuine member's certificate used to speak as another member.
		{"wrong-member", "wrong-group", []string{"-cert", "issued", "-cert-member", fmt.Sprint(other), "-from", fmt.Sprint(third)}, "member id mismatch"},
	}
	verdict := map[string]string{"rogue-peer": "rejected", "wrong-group": "rejected"}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mark := c.members[lead].logs.len()
			stop := c.runRogue(t, append(tc.args, "-target", target, "-ca", c.caDir, "-to", fmt.Sprint(lead)))
			line := c.members[lead].logs.waitFor(mark, 30*time.Second, "refused peer", tc.want)
			stop()
			if line == "" {
				verdict[tc.kind] = "NOT-refused"
				t.Fatalf("leader %d logged no refusal containing %q", lead, tc.want)
			}
			t.Logf("leader %d: %s", lead, line)
			if d := before.diff(c.state(ctx)); d != "" {
				verdict[tc.kind] = "state-changed"
				t.Fatalf("group state changed under attack: %s", d)
			}
		})
	}
	// Refusals name peers and reasons, never the payload they carried or
	// key material.
	for id, m := range c.members {
		if line := m.logs.waitFor(0, 0, "pwned"); line != "" {
			t.Errorf("member %d logged a rogue payload: %s", id, line)
		}
		if line := m.logs.waitFor(0, 0, "PRIVATE KEY"); line != "" {
			t.Errorf("member %d logged key material: %s", id, line)
		}
	}
	testcheck.ReportOutcome(t, "rogue-peer", verdict["rogue-peer"])
	testcheck.ReportOutcome(t, "wrong-group", verdict["wrong-group"])

	// Control: the same rogue with a genuine certificate of member `other`
	// gets its proposal applied.
	stop := c.runRogue(t, []string{"-cert", "issued", "-cert-member", fmt.Sprint(other), "-from", fmt.Sprint(other),
		"-target", target, "-ca", c.caDir, "-to", fmt.Sprint(lead)})
	defer stop()
	for ctx.Err() == nil {
		if v, err := c.client(lead).Read(ctx, "rogue"); err == nil && v == "pwned" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("control: a proposal from a genuine member certificate was never applied; the refusal checks prove nothing")
}

// runRogue starts a rogue process; stop kills it.
func (c *cluster) runRogue(t *testing.T, args []string) (stop func()) {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "SMR_ROGUE=1")
	cmd.Stderr = prefixWriter{os.Stderr, "[rogue] "}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start rogue: %v", err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.HasPrefix(line, "rogue: sending") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("rogue did not start: %q %v", line, err)
	}
	return func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
}
