package replication

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/replication/framing"
)

// RestoreApp on a real Redis: data in several databases and a function
// library are gone, the replica serves again, and the repair is counted.
// An app that is down is waited for until the deadline, then the replica is
// broken with a clear error (no loop); an HTTP app cannot be emptied.
func TestRestoreAppRedis(t *testing.T) {
	requireIntegration(t)
	addr := startRedis(t)
	ctx := context.Background()
	direct := redis.NewClient(&redis.Options{Addr: addr})
	defer direct.Close()
	for db, key := range []string{"a", "b"} {
		c := redis.NewClient(&redis.Options{Addr: addr, DB: db})
		if err := c.Set(ctx, key, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	lib := "#!lua name=smrtest\nredis.register_function('f', function() return 1 end)"
	if err := direct.FunctionLoad(ctx, lib).Err(); err != nil {
		t.Fatal(err)
	}
	newExec := func(t *testing.T, port Port, d AppDialer) *Executor {
		x, err := NewExecutor(ExecutorConfig{Group: "ns.g", Self: 1, Ports: []Port{port}, Dialer: d, RetryInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = x.Close() })
		return x
	}
	x := newExec(t, respPort, &addrDialer{addr: addr})
	if idx, err := x.RestoreApp(ctx, Cause{Kind: CauseInFlight, Detail: "test"}); err != nil || idx != 0 {
		t.Fatalf("RestoreApp = %d, %v", idx, err)
	}
	for db := range 2 {
		c := redis.NewClient(&redis.Options{Addr: addr, DB: db})
		if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
			t.Errorf("db %d holds %d keys after the repair (%v), want 0", db, n, err)
		}
		c.Close()
	}
	if libs, err := direct.FunctionList(ctx, redis.FunctionListQuery{}).Result(); err != nil || len(libs) != 0 {
		t.Errorf("function libraries after the repair: %v (%v), want none", libs, err)
	}
	if s := x.ReplicaState(); s != StateServing {
		t.Errorf("state after the repair = %s, want serving", s)
	}

	t.Run("app down until the deadline", func(t *testing.T) {
		x := newExec(t, respPort, &addrDialer{addr: "127.0.0.1:1"})
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := x.RestoreApp(dctx, Cause{Kind: CauseInFlight, Detail: "test"})
		if err == nil || !strings.Contains(err.Error(), "repair failed") || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("RestoreApp of an app that stays down: %v", err)
		}
		if s := x.ReplicaState(); s != StateBroken {
			t.Fatalf("state = %s, want broken", s)
		}
		if h := x.Health(); h == nil {
			t.Fatal("a broken replica reports healthy")
		}
	})
	t.Run("http app", func(t *testing.T) {
		x := newExec(t, Port{Number: 8080, Protocol: framing.ProtoHTTP}, &addrDialer{addr: addr})
		_, err := x.RestoreApp(ctx, Cause{Kind: CauseInFlight, Detail: "test"})
		if err == nil || !strings.Contains(err.Error(), "no way to empty it") {
			t.Fatalf("RestoreApp of an HTTP app: %v", err)
		}
	})
}
