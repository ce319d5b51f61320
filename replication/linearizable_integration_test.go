package replication

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// Concurrent SET/GET clients through every replica form a linearizable
// history (checked with porcupine): read-only GETs run side by side on the
// replica's app after a ReadIndex, beside the serial executor's writes, and
// still observe every acknowledged SET.
func TestRedisConcurrentSetGetLinearizable(t *testing.T) {
	requireIntegration(t)
	apps := []string{startRedis(t), startRedis(t), startRedis(t)}
	// Replica 3's app is slow, so its executor lags behind the log and its
	// local reads must wait for their read index.
	slow := func(cfg *ExecutorConfig) {
		if cfg.Self == 3 {
			cfg.Dialer = slowDialer{inner: cfg.Dialer, delay: time.Millisecond}
		}
	}
	rc := &redisCluster{cluster: newCluster(t, clusterOpts{port: respPort, appAddrs: apps, exec: slow}), apps: apps}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const clients, opsPerClient, keys = 12, 100, 3
	base := time.Now()
	var (
		mu  sync.Mutex
		ops []porcupine.Operation
		wg  sync.WaitGroup
	)
	for cl := range clients {
		// One connection per client, so each client is one session.
		c := rc.client(t, cl%len(rc.replicas), &redis.Options{PoolSize: 1})
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(cl), 7))
			for i := range opsPerClient {
				key := fmt.Sprintf("k%d", rnd.IntN(keys))
				in := kvtest.Op{Kind: "get", Key: key}
				if rnd.IntN(2) == 0 {
					in = kvtest.Op{Kind: "put", Key: key, Value: fmt.Sprintf("c%d-%d", cl, i)}
				}
				call := time.Since(base).Nanoseconds()
				var out kvtest.Output
				var err error
				if in.Kind == "put" {
					err = c.Set(ctx, key, in.Value, 0).Err()
				} else {
					out.Value, err = c.Get(ctx, key).Result()
					if errors.Is(err, redis.Nil) {
						out.Value, err = "", nil
					}
				}
				ret := time.Since(base).Nanoseconds()
				if err != nil {
					t.Errorf("client %d %s %s: %v", cl, in.Kind, key, err)
					return
				}
				mu.Lock()
				ops = append(ops, porcupine.Operation{ClientId: cl, Input: in, Call: call, Output: out, Return: ret})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if res := porcupine.CheckOperationsTimeout(kvtest.Model, ops, 30*time.Second); res != porcupine.Ok {
		t.Fatalf("history of %d SET/GET operations through 3 replicas: porcupine says %v", len(ops), res)
	}
	rc.waitCaughtUp()
	for k := range keys {
		key := fmt.Sprintf("k%d", k)
		want, _ := rc.direct(t, 0, 0).Get(ctx, key).Result()
		for i := 1; i < len(rc.apps); i++ {
			if got, _ := rc.direct(t, i, 0).Get(ctx, key).Result(); got != want {
				t.Errorf("replica %d redis: %s = %q, replica 1 has %q", i+1, key, got, want)
			}
		}
	}
}

// slowDialer delays every write to the app (the request), as a loaded app
// would answer late.
type slowDialer struct {
	inner AppDialer
	delay time.Duration
}

func (d slowDialer) DialApp(ctx context.Context, port int) (net.Conn, error) {
	c, err := d.inner.DialApp(ctx, port)
	if err != nil {
		return nil, err
	}
	return slowConn{Conn: c, delay: d.delay}, nil
}

type slowConn struct {
	net.Conn
	delay time.Duration
}

func (c slowConn) Write(p []byte) (int, error) {
	time.Sleep(c.delay)
	return c.Conn.Write(p)
}
