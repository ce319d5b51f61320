package replication

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/rediscmd"
	"github.com/smr-io/smr-cri/test/lab/freeport"
)

func newRedisClusterAllow(t *testing.T, allow rediscmd.Allow, appAddrs []string) *redisCluster {
	requireIntegration(t)
	if appAddrs == nil {
		appAddrs = []string{startRedis(t), startRedis(t), startRedis(t)}
	}
	return &redisCluster{cluster: newCluster(t, clusterOpts{port: respPort, appAddrs: appAddrs,
		framing: framing.Options{RedisAllow: allow}}), apps: appAddrs}
}

// redisState reads every key of db 0 of one replica's redis-server directly:
// type, value (in a canonical order) and absolute expiry in ms (-1: none).
func redisState(t *testing.T, addr string) map[string]string {
	t.Helper()
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range keys {
		typ := c.Type(ctx, k).Val()
		var val any
		switch typ {
		case "string":
			val = c.Get(ctx, k).Val()
		case "list":
			val = c.LRange(ctx, k, 0, -1).Val()
		case "stream":
			val = c.XRange(ctx, k, "-", "+").Val()
		case "hash":
			val = c.HGetAll(ctx, k).Val()
		case "set":
			m := c.SMembers(ctx, k).Val()
			slices.Sort(m)
			val = m
		case "zset":
			val = c.ZRangeWithScores(ctx, k, 0, -1).Val()
		}
		exp, err := c.Do(ctx, "PEXPIRETIME", k).Int64()
		if err != nil {
			t.Fatalf("PEXPIRETIME %s: %v", k, err)
		}
		out[k] = fmt.Sprintf("%s %v expiry=%d", typ, val, exp)
	}
	return out
}

// assertReplicasEqual compares every replica's app state directly.
func (rc *redisCluster) assertReplicasEqual(t *testing.T) map[string]string {
	t.Helper()
	first := redisState(t, rc.apps[0])
	for i := 1; i < len(rc.apps); i++ {
		if got := redisState(t, rc.apps[i]); !reflect.DeepEqual(got, first) {
			t.Fatalf("replica %d differs from replica 1:\n%v\n%v", i+1, got, first)
		}
	}
	return first
}

// Each rewritten class through 3 replicas with real redis-servers: relative
// expiries become the same absolute deadline on every replica, XADD * gives
// the same IDs everywhere (also inside MULTI and behind an ID from a clock
// far ahead), approximate trimming becomes exact.
func TestRedisRewrittenClassesEqualOnEveryReplica(t *testing.T) {
	rc := newRedisClusterAllow(t, rediscmd.AllowExpiry, nil)
	ctx := context.Background()
	cl := []*redis.Client{rc.client(t, 0, nil), rc.client(t, 1, nil), rc.client(t, 2, nil)}
	before := time.Now().UnixMilli()
	const ttl = 100_000 // ms
	expiring := map[string][]any{
		"set-ex":   {"SET", "set-ex", "v", "EX", ttl / 1000},
		"set-px":   {"SET", "set-px", "v", "PX", ttl},
		"setex":    {"SETEX", "setex", ttl / 1000, "v"},
		"psetex":   {"PSETEX", "psetex", ttl, "v"},
		"expire":   {"EXPIRE", "expire", ttl / 1000},
		"pexpire":  {"PEXPIRE", "pexpire", ttl},
		"getex":    {"GETEX", "getex", "EX", ttl / 1000},
		"restored": nil,
	}
	for _, k := range []string{"expire", "pexpire", "getex"} {
		if err := cl[0].Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	i := 0
	for k, cmd := range expiring {
		if cmd == nil {
			continue
		}
		if err := cl[i%3].Do(ctx, cmd...).Err(); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		i++
	}
	dump := rc.direct(t, 0, 0).Dump(ctx, "getex").Val()
	if err := cl[1].Do(ctx, "RESTORE", "restored", ttl, dump).Err(); err != nil {
		t.Fatalf("RESTORE: %v", err)
	}

	// Streams.
	var ids []string
	for i := range 9 {
		id, err := cl[i%3].XAdd(ctx, &redis.XAddArgs{Stream: "st", Values: []any{"n", i}}).Result()
		if err != nil {
			t.Fatalf("XADD *: %v", err)
		}
		ids = append(ids, id)
	}
	var txID *redis.StringCmd
	if _, err := cl[2].TxPipelined(ctx, func(p redis.Pipeliner) error {
		txID = p.XAdd(ctx, &redis.XAddArgs{Stream: "st", Values: []any{"n", "tx"}})
		p.Do(ctx, "SET", "tx-ex", "v", "PX", ttl)
		return nil
	}); err != nil {
		t.Fatalf("MULTI XADD/SET PX: %v", err)
	}
	after := time.Now().UnixMilli()
	expiring["tx-ex"] = nil
	ids = append(ids, txID.Val())
	// A far-future explicit ID (another client's clock): * never fails.
	if err := cl[0].XAdd(ctx, &redis.XAddArgs{Stream: "skew", ID: "99999999999999-5", Values: []any{"f", "v"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if id, err := cl[1].XAdd(ctx, &redis.XAddArgs{Stream: "skew", Values: []any{"f", "v"}}).Result(); err != nil || id != "99999999999999-6" {
		t.Fatalf("XADD * behind a far-future ID = %q, %v; want 99999999999999-6", id, err)
	}
	for i := range 40 {
		if err := cl[i%3].XAdd(ctx, &redis.XAddArgs{Stream: "capped", MaxLen: 5, Approx: true, Values: []any{"n", i}}).Err(); err != nil {
			t.Fatalf("XADD MAXLEN ~: %v", err)
		}
	}
	if err := cl[0].Do(ctx, "XTRIM", "st", "MAXLEN", "~", 4, "LIMIT", 100).Err(); err != nil {
		t.Fatalf("XTRIM ~: %v", err)
	}
	// NOMKSTREAM on a missing stream answers nil, as XADD does.
	if err := cl[0].Do(ctx, "XADD", "missing", "NOMKSTREAM", "*", "f", "v").Err(); err != redis.Nil {
		t.Fatalf("XADD NOMKSTREAM on a missing key: %v, want nil reply", err)
	}
	if err := cl[0].Do(ctx, "XADD", "tx-ex", "*", "f", "v").Err(); err == nil || !strings.HasPrefix(err.Error(), "WRONGTYPE") {
		t.Fatalf("XADD * on a string: %v, want WRONGTYPE", err)
	}

	rc.waitCaughtUp()
	state := rc.assertReplicasEqual(t)
	for k := range expiring {
		var exp int64
		if _, err := fmt.Sscanf(state[k][strings.LastIndex(state[k], "expiry="):], "expiry=%d", &exp); err != nil {
			t.Fatalf("%s: %q", k, state[k])
		}
		if exp < before+ttl || exp > after+ttl {
			t.Errorf("%s: absolute expiry %d outside [%d, %d]", k, exp, before+ttl, after+ttl)
		}
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] && len(ids[i]) <= len(ids[i-1]) {
			t.Errorf("stream IDs not increasing: %v", ids)
		}
	}
	for i := range rc.apps {
		d := rc.direct(t, i, 0)
		if n := d.XLen(ctx, "capped").Val(); n != 5 {
			t.Errorf("replica %d: capped stream has %d entries, want exactly 5", i+1, n)
		}
		if n := d.XLen(ctx, "st").Val(); n != 4 {
			t.Errorf("replica %d: trimmed stream has %d entries, want exactly 4", i+1, n)
		}
	}
}

// rebuildReplica restarts replica i's ordering node and executor against a
// fresh, empty app: it replays the whole log into it, later than the others.
func (rc *redisCluster) rebuildReplica(t *testing.T, i int, appAddr string) {
	t.Helper()
	r := rc.replicas[i]
	_ = r.node.Close()
	_ = r.exec.Close()
	r.dialer = &addrDialer{addr: appAddr}
	exec, err := NewExecutor(ExecutorConfig{Group: testGroup, Self: r.id, Ports: []Port{respPort}, Dialer: r.dialer})
	if err != nil {
		t.Fatal(err)
	}
	node, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: filepath.Join(rc.dir, rc.peers[r.id]),
		Transport: rc.network.Endpoint(rc.peers[r.id]), TickInterval: 10 * time.Millisecond, UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	group, err := node.StartGroup(raftcore.GroupConfig{Name: testGroup, SelfID: r.id, Peers: rc.peers}, exec)
	if err != nil {
		t.Fatal(err)
	}
	r.exec, r.node, r.group = exec, node, group
	rc.apps[i] = appAddr
}

// The expiry decision: by default writes that set an expiry are refused, so
// no key has a deadline and INCR/APPEND end equal on every replica however
// late a replica applies them: one lagging (its app unreachable for a while,
// then replaying its queue) and one rebuilt from the log into an empty app.
func TestRedisExpiryDefaultLateReplicasEqual(t *testing.T) {
	requireIntegration(t)
	closed, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	apps := []string{startRedis(t), startRedis(t), startRedis(t)}
	lagging := apps[2]
	rc := newRedisClusterAllow(t, 0, []string{apps[0], apps[1], closed})
	rc.apps[2] = lagging
	ctx := context.Background()
	c := rc.client(t, 0, nil)
	refused := map[string][]any{
		"SET":       {"SET", "k", "1", "PX", 50},
		"SETEX":     {"SETEX", "k", 1, "1"},
		"EXPIRE":    {"EXPIRE", "k", 1},
		"PEXPIREAT": {"PEXPIREAT", "k", time.Now().UnixMilli() + 50},
		"GETEX":     {"GETEX", "k", "PX", 50},
		"RESTORE":   {"RESTORE", "r", 50, "x"},
	}
	for name, cmd := range refused {
		err := c.Do(ctx, cmd...).Err()
		if want := "ERR smr-cri: " + name + ": sets a key expiry"; err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%v: %v, want %q...", cmd, err, want)
		}
	}
	// INCR/APPEND on keys around the deadlines the refused writes would have set.
	for round := range 3 {
		for _, cmd := range [][]any{{"INCR", "k"}, {"APPEND", "a", "x"}, {"SET", "k", "1", "PX", 50}, {"INCRBY", "k", 10}} {
			_ = c.Do(ctx, cmd...).Err()
		}
		if round == 0 {
			waitFor(t, "replica 3 to queue for its unreachable app", func() bool { return rc.replicas[2].exec.Health() != nil })
		}
		time.Sleep(80 * time.Millisecond) // past every would-be deadline
	}
	rc.replicas[2].dialer.set(lagging)
	waitFor(t, "replica 3 to replay its queue", func() bool { return rc.replicas[2].exec.Health() == nil })
	rc.rebuildReplica(t, 1, startRedis(t))
	rc.waitCaughtUp()
	waitFor(t, "the rebuilt replica to replay the log", func() bool {
		return rc.direct(t, 1, 0).Get(ctx, "a").Val() == "xxx"
	})
	state := rc.assertReplicasEqual(t)
	if want := "string 33 expiry=-1"; state["k"] != want {
		t.Errorf("k = %q, want %q", state["k"], want)
	}
}

// Scripts are refused by default and ordered once the pod declares them
// deterministic; the read-only variant is then served locally.
func TestRedisScriptsOptIn(t *testing.T) {
	ctx := context.Background()
	def := newRedisClusterAllow(t, 0, nil)
	err := def.client(t, 0, nil).Eval(ctx, "return redis.call('INCR', KEYS[1])", []string{"n"}).Err()
	if err == nil || !strings.HasPrefix(err.Error(), "ERR smr-cri: EVAL: scripts and functions may call TIME") {
		t.Fatalf("EVAL without opt-in: %v", err)
	}
	rc := newRedisClusterAllow(t, rediscmd.AllowScripts, nil)
	for i := range 3 {
		if n, err := rc.client(t, i, nil).Eval(ctx, "return redis.call('INCR', KEYS[1])", []string{"n"}).Int(); err != nil || n != i+1 {
			t.Fatalf("EVAL via replica %d = %d, %v", i+1, n, err)
		}
	}
	if n, err := rc.client(t, 2, nil).EvalRO(ctx, "return redis.call('GET', KEYS[1])", []string{"n"}).Int(); err != nil || n != 3 {
		t.Fatalf("EVAL_RO = %d, %v", n, err)
	}
	rc.waitCaughtUp()
	if got := rc.assertReplicasEqual(t)["n"]; got != "string 3 expiry=-1" {
		t.Fatalf("n = %q", got)
	}
}
