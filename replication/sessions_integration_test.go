package replication

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/appstate"
	"github.com/smr-io/smr-cri/replication/connstate"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// restartExecutor stops replica i's ordering node and executor as a killed
// smr-cri would (the app keeps running, the executor's app connections end
// with its process), then starts them again as a restarted daemon does:
// the executor resumes at the running app's position (progress record),
// reopens the sessions still open, and the replica orders its RESET.
func (c *cluster) restartExecutor(t *testing.T, i int) {
	t.Helper()
	r := c.replicas[i]
	_ = r.node.Close()
	_ = r.exec.Close()
	_ = r.prog.Close()
	exec, err := NewExecutor(r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.setup != nil {
		c.setup(exec)
	}
	prog, err := OpenProgress(filepath.Join(c.dir, c.peers[r.id]+"-progress"), "sandbox-"+c.peers[r.id])
	if err != nil {
		t.Fatal(err)
	}
	if idx, _ := prog.Resume(); idx == 0 || prog.Uncertain() != "" {
		t.Fatalf("restarted replica resumes at %d (uncertain: %q), want the running app's position", idx, prog.Uncertain())
	}
	node, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: filepath.Join(c.dir, c.peers[r.id]),
		Transport: c.network.Endpoint(c.peers[r.id]), TickInterval: 10 * time.Millisecond, UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	group, err := node.StartGroup(raftcore.GroupConfig{Name: testGroup, SelfID: r.id, Peers: c.peers},
		newResumingSM(exec, prog, testGroup, slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	exec.reportTo(group)
	r.exec, r.node, r.group, r.prog = exec, node, group, prog
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := orderReset(ctx, group); err != nil {
		t.Fatalf("RESET of the restarted replica: %v", err)
	}
}

// connStates lists the connection state of every client connection of one
// redis-server, as the server itself reports it (CLIENT LIST): name,
// database, protocol, queued commands of an open MULTI, flags. The
// connection asking is left out.
func connStates(t *testing.T, addr string, password ...string) []string {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true, Password: strings.Join(password, "")})
	defer c.Close()
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		f := map[string]string{}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			f[k] = v
		}
		if f["cmd"] == "client|list" || f["name"] == appstate.ManagementConnName {
			continue // this listing's own connection; the audit's kept management connection
		}
		out = append(out, fmt.Sprintf("name=%s db=%s resp=%s multi=%s flags=%s", f["name"], f["db"], f["resp"], f["multi"], f["flags"]))
	}
	slices.Sort(out)
	return out
}

// keyspace reads every key of databases 0..maxDB of one redis-server
// directly (redisState per database).
func keyspace(t *testing.T, addr string, maxDB int, password ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for db := range maxDB + 1 {
		c := redis.NewClient(&redis.Options{Addr: addr, DB: db, Protocol: 2, DisableIdentity: true, Password: strings.Join(password, "")})
		keys, err := c.Keys(context.Background(), "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			v, err := c.Dump(context.Background(), k).Result()
			if err != nil {
				t.Fatal(err)
			}
			out[fmt.Sprintf("db%d/%s", db, k)] = fmt.Sprintf("%q", v)
		}
		_ = c.Close()
	}
	return out
}

// endedSessions returns the sessions the executor saw ended (not closed since).
func (x *Executor) endedSessions() map[uint64]connstate.Ended {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	return x.conns.Ends()
}

// One replica's smr-cri restarts while clients of the other replicas keep
// their sessions open with connection state: RESP3 with a client name in
// database 2, a name and NO-EVICT in database 5, an open MULTI with queued
// commands, and a WATCH. The restarted replica rebuilds every connection
// exactly (CLIENT LIST of all three redis-servers compared directly, before
// and after), the sessions' later writes land in the same databases
// everywhere, and the WATCH session, which replay cannot rebuild, is ended
// on every member at one log index with a clear error to its client.
func TestSessionsSurviveExecutorRestart(t *testing.T) {
	requireIntegration(t)
	apps := []string{startRedis(t), startRedis(t), startRedis(t)}
	c := newCluster(t, clusterOpts{port: respPort, appAddrs: apps, progress: true})
	ctx := context.Background()
	client := func(replica int, o redis.Options) *redis.Conn {
		o.Addr, o.PoolSize = c.replicas[replica].addr, 1
		cl := redis.NewClient(&o)
		t.Cleanup(func() { _ = cl.Close() })
		conn := cl.Conn()
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	must := func(what string, cmd redis.Cmder) {
		t.Helper()
		if err := cmd.Err(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	alpha := client(0, redis.Options{Protocol: 3, ClientName: "alpha", DB: 2})
	must("alpha SET", alpha.Set(ctx, "a0", "1", 0))
	beta := client(1, redis.Options{Protocol: 3, ClientName: "beta", DB: 1})
	must("beta SET", beta.Set(ctx, "b0", "1", 0))
	delta := client(0, redis.Options{Protocol: 2})
	must("delta SETNAME", delta.Do(ctx, "CLIENT", "SETNAME", "delta"))
	must("delta SELECT", delta.Do(ctx, "SELECT", "5"))
	must("delta NO-EVICT", delta.Do(ctx, "CLIENT", "NO-EVICT", "on"))
	tx := client(0, redis.Options{Protocol: 2, ClientName: "tx"})
	must("tx MULTI", tx.Do(ctx, "MULTI"))
	must("tx SET", tx.Do(ctx, "SET", "m1", "x"))
	must("tx INCR", tx.Do(ctx, "INCR", "m2"))
	watcher := client(0, redis.Options{Protocol: 2, ClientName: "watcher"})
	must("watcher WATCH", watcher.Do(ctx, "WATCH", "w"))
	c.waitCaughtUp()
	before := connStates(t, apps[0])
	for i := 1; i < 3; i++ {
		if got := connStates(t, apps[i]); !reflect.DeepEqual(got, before) {
			t.Fatalf("before the restart, replica %d's connections differ:\n%v\n%v", i+1, got, before)
		}
	}

	c.restartExecutor(t, 2)

	// The WATCH session is ended on every member, at the same index.
	var end connstate.Ended
	var ended uint64
	waitFor(t, "the WATCH session's END on every member", func() bool {
		var idx []uint64
		for _, r := range c.replicas {
			for id, e := range r.exec.endedSessions() {
				ended, end = id, e
				idx = append(idx, e.Index)
			}
		}
		return len(idx) == 3
	})
	for i, r := range c.replicas {
		e, ok := r.exec.SessionEnded(ended)
		if !ok || e.Index != end.Index || e.Reason != end.Reason {
			t.Fatalf("replica %d: END of %x = %+v %v, want %+v on every member", i+1, ended, e, ok, end)
		}
	}
	if !strings.Contains(end.Reason, "WATCH is active") {
		t.Fatalf("END reason %q", end.Reason)
	}
	err := watcher.Do(ctx, "SET", "w", "1").Err()
	want := fmt.Sprintf("ERR smr-cri: session ended at log index %d on every replica: connection state cannot be rebuilt by replay: WATCH is active", end.Index)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("the ended session's client got %v, want %q...", err, want)
	}

	// The rebuilt sessions' later writes land where they do elsewhere.
	must("alpha SET after", alpha.Set(ctx, "a1", "2", 0))
	must("beta SET after", beta.Set(ctx, "b1", "2", 0))
	must("delta SET after", delta.Do(ctx, "SET", "d1", "3"))
	if got, err := tx.Do(ctx, "EXEC").Slice(); err != nil || len(got) != 2 || got[1] != int64(1) {
		t.Fatalf("EXEC after the restart = %v, %v", got, err)
	}
	c.waitCaughtUp()
	after := connStates(t, apps[0])
	for i := 1; i < 3; i++ {
		if got := connStates(t, apps[i]); !reflect.DeepEqual(got, after) {
			t.Fatalf("after the restart, replica %d's connections differ:\n%v\n%v", i+1, got, after)
		}
	}
	for _, want := range []string{"name=alpha db=2 resp=3", "name=beta db=1 resp=3", "name=delta db=5 resp=2 multi=-1 flags=e"} {
		if !slices.ContainsFunc(after, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("no connection %q on the replicas: %v", want, after)
		}
	}
	state := keyspace(t, apps[0], 5)
	for i := 1; i < 3; i++ {
		if got := keyspace(t, apps[i], 5); !reflect.DeepEqual(got, state) {
			t.Fatalf("replica %d's keyspace differs from replica 1's:\n%v\n%v", i+1, got, state)
		}
	}
	for _, k := range []string{"db2/a0", "db2/a1", "db1/b1", "db5/d1", "db0/m1", "db0/m2"} {
		if _, ok := state[k]; !ok {
			t.Errorf("key %s missing (keyspace %v)", k, state)
		}
	}
	if _, ok := state["db0/w"]; ok {
		t.Error("the ended session's write was executed")
	}
	if err := c.replicas[2].exec.Health(); err != nil {
		t.Fatalf("restarted replica: %v", err)
	}
}

// entryFeeder applies hand-made log entries to executors, in order.
type entryFeeder struct {
	t   *testing.T
	idx uint64
}

// request is a REQUEST op as the framer would order it.
func request(args ...string) Op {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	var sub []byte
	if len(bs) > 1 {
		sub = bs[1]
	}
	c, _ := rediscmd.Lookup(bs[0], sub)
	return Op{Kind: KindRequest, Name: c.DisplayName(), Raw: rediscmd.EncodeRequest(bs)}
}

// apply applies op of session (origin 1) at the next index on every
// executor and returns their replies.
func (f *entryFeeder) apply(xs []*Executor, session uint64, op Op) []string {
	f.t.Helper()
	f.idx++
	e := raftcore.Entry{Group: testGroup, Index: f.idx, Session: session, Origin: 1, Data: op.Encode()}
	var out []string
	for _, x := range xs {
		val, err := x.Apply(e)
		if err != nil {
			f.t.Fatalf("apply %v at %d: %v", op.Kind, f.idx, err)
		}
		out = append(out, string(val))
	}
	return out
}

// A replica restored from an app snapshot gets the connection state of the
// sessions open at the snapshot position (RESP3 and a name in database 3,
// an open MULTI in database 1): the sessions' later requests end the same
// on it as on the replica that took the snapshot (CLIENT LIST and every
// database compared directly). Sessions replay cannot rebuild (WATCH, AUTH)
// are proposed for END by the restored replica; a request of one applied
// before the END makes it uncertain (repair), and after the END every
// replica answers with the same error. The snapshot holds no password.
func TestSnapshotCarriesConnectionState(t *testing.T) {
	requireIntegration(t)
	appA, appB := startRedis(t), startRedis(t)
	newExec := func(app string) *Executor {
		x, err := NewExecutor(ExecutorConfig{Group: testGroup, Self: 2, Ports: []Port{respPort}, Dialer: &addrDialer{addr: app}})
		if err != nil {
			t.Fatal(err)
		}
		if err := x.EnableSnapshots(SnapshotConfig{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = x.Close() })
		return x
	}
	a, b := newExec(appA), newExec(appB)
	ord := &recordingOrderer{}
	b.reportTo(ord)
	lost := make(chan Cause, 4)
	b.OnUncertain(func(c Cause) { lost <- c })
	f := &entryFeeder{t: t}
	open := Op{Kind: KindOpen, Port: respPort.Number, Protocol: respPort.Protocol}
	const (
		named, tx, watching, quit, authed = 11, 12, 13, 14, 15
	)
	only := []*Executor{a}
	for _, s := range []struct {
		session uint64
		ops     []Op
	}{
		{named, []Op{open, request("HELLO", "3", "SETNAME", "named"), request("SELECT", "3"), request("SET", "k", "1")}},
		{tx, []Op{open, request("SELECT", "1"), request("MULTI"), request("SET", "q", "1"), request("INCR", "n")}},
		{watching, []Op{open, request("WATCH", "k")}},
		{quit, []Op{open, request("QUIT")}},
		{authed, []Op{open, request("AUTH", "pw-not-kept")}},
	} {
		for _, op := range s.ops {
			f.apply(only, s.session, op)
		}
	}
	var snap bytes.Buffer
	if err := a.SnapshotTo(f.idx, &snap); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(snap.Bytes(), []byte("pw-not-kept")) {
		t.Fatal("the snapshot holds the AUTH password")
	}
	if err := b.RestoreFrom(f.idx, &snap); err != nil {
		t.Fatal(err)
	}
	both := []*Executor{a, b}

	// The restored replica proposed END for the two it cannot rebuild.
	var ends []EndOp
	waitFor(t, "END proposals", func() bool {
		ord.mu.Lock()
		defer ord.mu.Unlock()
		ends = ends[:0]
		for _, p := range ord.props {
			if op, err := DecodeOp(p); err == nil && op.Kind == KindEnd {
				ends = append(ends, *op.End)
			}
		}
		return len(ends) == 2
	})
	slices.SortFunc(ends, func(x, y EndOp) int { return int(x.Session) - int(y.Session) })
	if ends[0].Session != watching || !strings.Contains(ends[0].Reason, "WATCH is active") ||
		ends[1].Session != authed || !strings.Contains(ends[1].Reason, "it ran AUTH") {
		t.Fatalf("END proposals %+v", ends)
	}
	// A request of a lost session before its END: the restored replica
	// cannot run it, so its app is uncertain.
	f.apply(both, watching, request("DEL", "nothing"))
	select {
	case c := <-lost:
		if c.Kind != CauseSessionLost {
			t.Fatalf("cause %+v", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a request of a lost session did not make the replica uncertain")
	}
	for _, end := range ends {
		f.apply(both, 0, Op{Kind: KindEnd, End: &end})
		for i, x := range both {
			if e, ok := x.SessionEnded(end.Session); !ok || e.Index != f.idx {
				t.Fatalf("executor %d: END of %d = %+v %v, want index %d", i, end.Session, e, ok, f.idx)
			}
		}
	}
	for i, reply := range f.apply(both, watching, request("SET", "w", "1")) {
		if !strings.HasPrefix(reply, "-ERR smr-cri: session ended at log index ") {
			t.Fatalf("executor %d: request of an ended session = %q", i, reply)
		}
	}
	f.apply(both, named, request("SET", "k2", "2"))
	if r := f.apply(both, tx, request("EXEC")); r[0] != r[1] || !strings.HasPrefix(r[0], "*2\r\n") {
		t.Fatalf("EXEC replies %q", r)
	}
	for i, reply := range f.apply(both, quit, request("SET", "z", "1")) {
		if !strings.HasPrefix(reply, "-") {
			t.Fatalf("executor %d: request after QUIT = %q, want an error", i, reply)
		}
	}
	if ca, cb := connStates(t, appA), connStates(t, appB); !reflect.DeepEqual(ca, cb) {
		t.Fatalf("connections differ:\n%v\n%v", ca, cb)
	}
	ka, kb := keyspace(t, appA, 3), keyspace(t, appB, 3)
	if !reflect.DeepEqual(ka, kb) {
		t.Fatalf("keyspaces differ:\n%v\n%v", ka, kb)
	}
	for _, k := range []string{"db3/k", "db3/k2", "db1/q", "db1/n"} {
		if _, ok := ka[k]; !ok {
			t.Errorf("key %s missing: %v", k, ka)
		}
	}
}

// sessionProposer orders one session's entries through a raft group, as a
// Server does for one client connection.
type sessionProposer struct {
	t       *testing.T
	g       *raftcore.Group
	session uint64
	seq     uint64
}

func (p *sessionProposer) do(op Op) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p.seq++
	res, err := p.g.Propose(ctx, raftcore.Proposal{Session: p.session, Seq: p.seq, Data: op.Encode(), EndSession: op.Kind == KindClose})
	if err != nil {
		p.t.Fatalf("session %x: propose %v: %v", p.session, op.Kind, err)
	}
	return string(res.Value)
}

// A member cut off while the log is compacted past it installs the
// leader's snapshot mid-session: the sessions open at the snapshot position
// (RESP3 and a name in database 2, an open MULTI, a WATCH) get their
// connection state on its app from the snapshot, their later writes land
// alike on all three redis-servers (CLIENT LIST and every database
// compared directly), and the WATCH session is ended on every member at
// one log index, with the error to its client.
func TestSnapshotTransferMidSession(t *testing.T) {
	requireIntegration(t)
	const every = 200
	network, _, peers, ms, leader := startSnapGroup(t, every, func(m *snapMember) { m.exec.reportTo(m.group) })
	open := Op{Kind: KindOpen, Port: respPort.Number, Protocol: respPort.Protocol}
	named := &sessionProposer{t: t, g: leader, session: 0x1_0000_0000_0001}
	tx := &sessionProposer{t: t, g: leader, session: 0x1_0000_0000_0002}
	watcher := &sessionProposer{t: t, g: leader, session: 0x1_0000_0000_0003}
	for _, step := range []struct {
		p   *sessionProposer
		ops []Op
	}{
		{named, []Op{open, request("HELLO", "3", "SETNAME", "named"), request("SELECT", "2"), request("SET", "a0", "1")}},
		{tx, []Op{open, request("CLIENT", "SETNAME", "tx"), request("MULTI"), request("SET", "q", "1"), request("INCR", "n")}},
		{watcher, []Op{open, request("CLIENT", "SETNAME", "watcher"), request("WATCH", "w")}},
	} {
		for _, op := range step.ops {
			step.p.do(op)
		}
	}
	lid := leader.ID()
	lag := ms[lid%3+1] // a follower
	network.Isolate(peers[lag.id], peers[lid], peers[6-lid-lag.id])
	writeKeys(t, leader, 0xabc1, 0, 1500) // > compactMargin (1024) past a snapshot
	network.Heal()
	waitFor(t, "the cut-off member to install a snapshot and catch up", func() bool {
		return lag.count("restore") == 1 && lag.exec.Applied() >= leader.Status().Commit
	})
	var end connstate.Ended
	waitFor(t, "the WATCH session's END on every member", func() bool {
		n := 0
		for _, m := range ms {
			if e, ok := m.exec.SessionEnded(watcher.session); ok {
				end = e
				n++
			}
		}
		return n == 3
	})
	for _, m := range ms {
		if e, _ := m.exec.SessionEnded(watcher.session); e != end {
			t.Fatalf("member %d: END %+v, want %+v on every member", m.id, e, end)
		}
	}
	want := fmt.Sprintf("-ERR smr-cri: session ended at log index %d on every replica: connection state cannot be rebuilt by replay: WATCH is active", end.Index)
	if got := watcher.do(request("SET", "w", "1")); !strings.HasPrefix(got, want) {
		t.Fatalf("the ended session's reply %q, want %q...", got, want)
	}
	named.do(request("SET", "a1", "2"))
	if got := tx.do(request("EXEC")); !strings.HasPrefix(got, "*2\r\n") {
		t.Fatalf("EXEC after the transfer = %q", got)
	}
	for _, m := range ms {
		waitFor(t, "every member to apply the last write", func() bool { return m.exec.Applied() >= leader.Status().Commit })
	}
	conns, keys := connStates(t, ms[1].app), keyspace(t, ms[1].app, 2)
	for id := uint64(2); id <= 3; id++ {
		if got := connStates(t, ms[id].app); !reflect.DeepEqual(got, conns) {
			t.Fatalf("member %d's connections differ from member 1's:\n%v\n%v", id, got, conns)
		}
		if got := keyspace(t, ms[id].app, 2); !reflect.DeepEqual(got, keys) {
			t.Fatalf("member %d's keyspace differs from member 1's", id)
		}
	}
	for _, k := range []string{"db2/a0", "db2/a1", "db0/q", "db0/n"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("key %s missing", k)
		}
	}
	if !slices.ContainsFunc(conns, func(s string) bool { return strings.HasPrefix(s, "name=named db=2 resp=3") }) {
		t.Errorf("no RESP3 connection named in database 2: %v", conns)
	}
}

// A password-protected Redis (requirepass, an ACL user): a session that
// authenticated as the user smr-cri has a credential for (the pod
// contract's Secret) is rebuilt after a restart of smr-cri, authentication
// included, and its later writes land in its database on every replica; a
// session authenticated as another user, and one whose AUTH failed (not in
// the log as accepted), are ended on every member at one log index. No
// password is in the log's connection-state record.
func TestSessionsSurviveRestartWithAuth(t *testing.T) {
	requireIntegration(t)
	const pw = "pod-secret-pw"
	apps := []string{startRedis(t, "--requirepass", pw), startRedis(t, "--requirepass", pw), startRedis(t, "--requirepass", pw)}
	c := newCluster(t, clusterOpts{port: respPort, appAddrs: apps, progress: true, setup: func(x *Executor) {
		creds := appstate.Credentials{Password: pw, Source: "test Secret"}
		if err := x.EnableSnapshots(SnapshotConfig{Credentials: creds}); err != nil {
			t.Fatal(err)
		}
	}})
	ctx := context.Background()
	client := func(o redis.Options) *redis.Conn {
		o.Addr, o.PoolSize, o.MaxRetries = c.replicas[0].addr, 1, -1
		cl := redis.NewClient(&o)
		t.Cleanup(func() { _ = cl.Close() })
		conn := cl.Conn()
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	admin := client(redis.Options{Password: pw})
	if err := admin.Do(ctx, "ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	good := client(redis.Options{Password: pw, Protocol: 3, ClientName: "good", DB: 2})
	if err := good.Set(ctx, "g0", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	alice := client(redis.Options{Username: "alice", Password: "alice-pw", ClientName: "alice", DB: 3})
	if err := alice.Set(ctx, "a0", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	failed := client(redis.Options{Password: pw, ClientName: "failed"})
	if err := failed.Do(ctx, "AUTH", "wrong-pw").Err(); err == nil {
		t.Fatal("AUTH with a wrong password succeeded")
	}
	c.waitCaughtUp()
	for _, r := range c.replicas {
		r.exec.cmu.Lock()
		enc, _ := r.exec.conns.MarshalBinary()
		r.exec.cmu.Unlock()
		for _, secret := range []string{pw, "alice-pw", "wrong-pw"} {
			if bytes.Contains(enc, []byte(secret)) {
				t.Fatalf("replica %d's connection-state record holds a password", r.id)
			}
		}
	}

	c.restartExecutor(t, 2)

	var ends map[uint64]connstate.Ended
	waitFor(t, "two ENDs on every member", func() bool {
		for _, r := range c.replicas {
			if len(r.exec.endedSessions()) != 2 {
				return false
			}
		}
		ends = c.replicas[0].exec.endedSessions()
		return true
	})
	for _, r := range c.replicas[1:] {
		if got := r.exec.endedSessions(); !reflect.DeepEqual(got, ends) {
			t.Fatalf("member %d ended %+v, member 1 %+v", r.id, got, ends)
		}
	}
	var reasons []string
	for _, e := range ends {
		reasons = append(reasons, e.Reason)
	}
	for _, want := range []string{`it authenticated as "alice" and smr-cri's credential (test Secret) is for "default"`,
		"it ran AUTH and whether that succeeded is not in the log"} {
		if !slices.ContainsFunc(reasons, func(r string) bool { return strings.Contains(r, want) }) {
			t.Fatalf("END reasons %q, want one with %q", reasons, want)
		}
	}
	if err := alice.Set(ctx, "a1", "2", 0).Err(); err == nil || !strings.Contains(err.Error(), "session ended at log index") {
		t.Fatalf("alice's session after the restart: %v", err)
	}
	if err := good.Set(ctx, "g1", "2", 0).Err(); err != nil {
		t.Fatalf("the rebuilt session: %v", err)
	}
	c.waitCaughtUp()
	conns := connStates(t, apps[0], pw)
	keys := keyspace(t, apps[0], 3, pw)
	for i := 1; i < 3; i++ {
		if got := connStates(t, apps[i], pw); !reflect.DeepEqual(got, conns) {
			t.Fatalf("replica %d's connections differ:\n%v\n%v", i+1, got, conns)
		}
		if got := keyspace(t, apps[i], 3, pw); !reflect.DeepEqual(got, keys) {
			t.Fatalf("replica %d's keyspace differs:\n%v\n%v", i+1, got, keys)
		}
	}
	for _, k := range []string{"db2/g0", "db2/g1", "db3/a0"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("key %s missing: %v", k, keys)
		}
	}
	if _, ok := keys["db3/a1"]; ok {
		t.Error("the ended session's write ran")
	}
}
