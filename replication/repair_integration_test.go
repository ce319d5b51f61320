package replication

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/raftcore"
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

// A Redis that closes a session's connection on its own while it runs (an
// idle timeout, a CLIENT KILL from outside) does so on this replica only:
// the replica goes to the repair path, or the session's later requests
// would be skipped here alone. A close after QUIT, or by an app that is
// down, happens on every replica alike and repairs nothing.
func TestAppClosedSessionRepairsOnlyWhenLocal(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	resp := func(args ...string) []byte {
		b := fmt.Appendf(nil, "*%d\r\n", len(args))
		for _, a := range args {
			b = fmt.Appendf(b, "$%d\r\n%s\r\n", len(a), a)
		}
		return b
	}
	for _, tc := range []struct {
		name       string
		close      func(t *testing.T, direct *redis.Client, d *addrDialer) // after the first request
		next       string                                                  // the session's next command
		wantRepair bool
	}{
		{name: "CLIENT KILL from outside, app running", next: "SET",
			close: func(t *testing.T, direct *redis.Client, _ *addrDialer) {
				if err := direct.ClientKillByFilter(ctx, "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
					t.Fatal(err)
				}
			}, wantRepair: true},
		{name: "QUIT", next: "QUIT", close: func(*testing.T, *redis.Client, *addrDialer) {}},
		{name: "app down", next: "SET",
			close: func(t *testing.T, direct *redis.Client, d *addrDialer) {
				d.set("127.0.0.1:1") // no app listens any more
				if err := direct.ClientKillByFilter(ctx, "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startRedis(t)
			direct := redis.NewClient(&redis.Options{Addr: addr})
			defer direct.Close()
			d := &addrDialer{addr: addr}
			x, err := NewExecutor(ExecutorConfig{Group: "ns.g", Self: 1, Ports: []Port{respPort}, Dialer: d,
				RetryInterval: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer x.Close()
			causes := make(chan Cause, 4)
			x.OnUncertain(func(c Cause) { causes <- c })
			apply := func(idx uint64, op Op) []byte {
				t.Helper()
				val, err := x.Apply(raftcore.Entry{Group: "ns.g", Index: idx, Session: 7, Seq: idx, Origin: 2, Data: op.Encode()})
				if err != nil {
					t.Fatalf("apply %d: %v", idx, err)
				}
				return val
			}
			apply(1, Op{Kind: KindOpen, Port: respPort.Number, Protocol: respPort.Protocol})
			if got := apply(2, Op{Kind: KindRequest, Name: "SET", Raw: resp("SET", "a", "1")}); string(got) != "+OK\r\n" {
				t.Fatalf("first SET answered %q", got)
			}
			tc.close(t, direct, d)
			raw := resp("SET", "a", "2")
			if tc.next == "QUIT" {
				raw = resp("QUIT")
			}
			apply(3, Op{Kind: KindRequest, Name: tc.next, Raw: raw})
			if tc.next == "QUIT" { // the app has closed the connection now: the next request finds it dead
				apply(4, Op{Kind: KindRequest, Name: "SET", Raw: resp("SET", "a", "3")})
			}
			select {
			case c := <-causes:
				if !tc.wantRepair || c.Kind != CauseSessionBroken {
					t.Fatalf("repair for %s (%s), want none", c.Kind, c.Detail)
				}
			case <-time.After(500 * time.Millisecond):
				if tc.wantRepair {
					t.Fatal("no repair for a session the running app closed on this replica only")
				}
			}
		})
	}
}
