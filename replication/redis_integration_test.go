package replication

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/test/lab/redisproc"
)

// Integration tests against real redis-server processes (one per replica).
// They run with SMR_INTEGRATION=1 (hack/test.sh) and then fail if
// redis-server is missing.

func requireIntegration(t testing.TB) {
	t.Helper()
	if os.Getenv("SMR_INTEGRATION") != "1" {
		t.Skip("integration test: run with SMR_INTEGRATION=1 (hack/test.sh) and redis-server installed")
	}
}

// startRedis runs a private redis-server on a free 127.0.0.1 port.
func startRedis(t testing.TB, extraArgs ...string) string {
	t.Helper()
	return redisproc.Start(t, extraArgs...)
}

var respPort = Port{Number: 6379, Protocol: framing.ProtoRESP}

type redisCluster struct {
	*cluster
	apps []string
}

func newRedisCluster(t *testing.T) *redisCluster {
	requireIntegration(t)
	apps := []string{startRedis(t), startRedis(t), startRedis(t)}
	return &redisCluster{cluster: newCluster(t, clusterOpts{port: respPort, appAddrs: apps}), apps: apps}
}

// client connects through replica i (0-based) like any Redis client would.
func (rc *redisCluster) client(t *testing.T, i int, opts *redis.Options) *redis.Client {
	o := &redis.Options{}
	if opts != nil {
		o = opts
	}
	o.Addr = rc.replicas[i].addr
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// direct connects to replica i's redis-server, bypassing replication.
func (rc *redisCluster) direct(t *testing.T, i, db int) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: rc.apps[i], DB: db})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRedisConcurrentIncrEqualOnEveryReplica(t *testing.T) {
	rc := newRedisCluster(t)
	ctx := context.Background()
	const perReplica, incrs = 4, 40
	var (
		mu   sync.Mutex
		seen []int64
		wg   sync.WaitGroup
	)
	for i := range rc.replicas {
		c := rc.client(t, i, &redis.Options{PoolSize: perReplica})
		for range perReplica {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range incrs {
					n, err := c.Incr(ctx, "counter").Result()
					if err != nil {
						t.Errorf("INCR via replica %d: %v", i+1, err)
						return
					}
					mu.Lock()
					seen = append(seen, n)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	total := int64(len(rc.replicas) * perReplica * incrs)
	slices.Sort(seen)
	for i, n := range seen {
		if n != int64(i+1) {
			t.Fatalf("INCR results are not 1..%d (lost or duplicated increments)", total)
		}
	}
	// Writes through one replica, reads through another (read-only path).
	if err := rc.client(t, 0, nil).Set(ctx, "greeting", "hello", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := rc.client(t, 2, nil).Get(ctx, "greeting").Result(); err != nil || got != "hello" {
		t.Fatalf("GET via replica 3 = %q, %v", got, err)
	}
	rc.waitCaughtUp()
	for i := range rc.apps {
		d := rc.direct(t, i, 0)
		if got, err := d.Get(ctx, "counter").Int64(); err != nil || got != total {
			t.Errorf("replica %d redis: counter = %d, %v; want %d", i+1, got, err, total)
		}
		// The read-only GET ran on one replica only, the SET on all.
		if got, err := d.Get(ctx, "greeting").Result(); err != nil || got != "hello" {
			t.Errorf("replica %d redis: greeting = %q, %v", i+1, got, err)
		}
	}
}

// SELECT and MULTI/EXEC are connection state: each replicated session has
// its own app connection on every replica, so they behave as on one server.
func TestRedisSelectAndTransactions(t *testing.T) {
	rc := newRedisCluster(t)
	ctx := context.Background()
	db2 := rc.client(t, 1, &redis.Options{DB: 2}) // go-redis sends SELECT 2 on connect
	if err := db2.Set(ctx, "k", "in-db-2", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// A transaction: queued commands get +QUEUED, EXEC returns the array.
	var incr *redis.IntCmd
	var get *redis.StringCmd
	if _, err := db2.TxPipelined(ctx, func(p redis.Pipeliner) error {
		incr = p.Incr(ctx, "tx")
		p.Incr(ctx, "tx")
		get = p.Get(ctx, "k")
		return nil
	}); err != nil {
		t.Fatalf("MULTI/EXEC: %v", err)
	}
	if incr.Val() != 1 || get.Val() != "in-db-2" {
		t.Fatalf("EXEC results: incr=%d get=%q", incr.Val(), get.Val())
	}
	// WATCH + a conflicting write from another replica aborts the transaction.
	other := rc.client(t, 2, &redis.Options{DB: 2})
	err := db2.Watch(ctx, func(tx *redis.Tx) error {
		if err := other.Set(ctx, "tx", "changed", 0).Err(); err != nil {
			return err
		}
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error { return p.Incr(ctx, "tx").Err() })
		return err
	}, "tx")
	if err != redis.TxFailedErr {
		t.Fatalf("WATCH conflict: err = %v, want %v", err, redis.TxFailedErr)
	}
	// DISCARD leaves no trace; commands after it are reads again.
	raw := rc.client(t, 0, nil)
	conn := raw.Conn()
	defer conn.Close()
	for _, cmd := range [][]any{{"MULTI"}, {"SET", "discarded", "1"}, {"DISCARD"}} {
		if err := conn.Do(ctx, cmd...).Err(); err != nil {
			t.Fatalf("%v: %v", cmd, err)
		}
	}
	// Refused commands get a clear error and the connection keeps working.
	for _, cmd := range [][]any{{"SPOP", "s"}, {"BLPOP", "l", "0"}, {"WAIT", "1", "0"}} {
		if err := conn.Do(ctx, cmd...).Err(); err == nil || !strings.Contains(err.Error(), "smr-cri") {
			t.Errorf("%v: err = %v, want an smr-cri refusal", cmd, err)
		}
	}
	if err := conn.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after refusals: %v", err)
	}
	rc.waitCaughtUp()
	for i := range rc.apps {
		d2, d0 := rc.direct(t, i, 2), rc.direct(t, i, 0)
		if got := d2.Get(ctx, "k").Val(); got != "in-db-2" {
			t.Errorf("replica %d db 2: k = %q", i+1, got)
		}
		if got := d2.Get(ctx, "tx").Val(); got != "changed" {
			t.Errorf("replica %d db 2: tx = %q, want changed (aborted transaction)", i+1, got)
		}
		if n := d0.Exists(ctx, "k", "tx", "discarded").Val(); n != 0 {
			t.Errorf("replica %d db 0 has %d keys that belong to db 2 or a discarded transaction", i+1, n)
		}
	}
}

// Pipelined requests in one read, an oversized request and a malformed one.
func TestRedisPipelineAndBadInput(t *testing.T) {
	rc := newRedisCluster(t)
	ctx := context.Background()
	c := rc.client(t, 0, nil)
	cmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range 50 {
			p.RPush(ctx, "list", i)
		}
		p.LRange(ctx, "list", 0, -1)
		return nil
	})
	if err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	if got := cmds[len(cmds)-1].(*redis.StringSliceCmd).Val(); len(got) != 50 || got[49] != "49" {
		t.Fatalf("LRANGE after pipeline: %v", got)
	}
	tests := []struct{ name, send, want string }{
		{"malformed", "*2\r\n$3\r\nGET\r\n:1\r\n", "-ERR smr-cri: malformed request"},
		{"oversized", fmt.Sprintf("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n", 2<<20), "-ERR smr-cri: too large"},
	}
	for _, tt := range tests {
		if got := rawExchange(t, rc.replicas[1].addr, tt.send); !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s: reply %q, want prefix %q", tt.name, got, tt.want)
		}
	}
	// The group still serves.
	if n, err := rc.client(t, 2, nil).LLen(ctx, "list").Result(); err != nil || n != 50 {
		t.Fatalf("LLEN after bad clients: %d, %v", n, err)
	}
	rc.waitCaughtUp()
	for i := range rc.apps {
		if got := rc.direct(t, i, 0).LRange(ctx, "list", 0, -1).Val(); len(got) != 50 || got[0] != "0" {
			t.Errorf("replica %d list: %v", i+1, got)
		}
	}
}
