package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"

	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// The Redis workload of the e2e scenarios: concurrent clients read, write and increment keys
// through one address (a Service); every operation is recorded and the history is checked for
// linearizability with porcupine. Keys "s:N" take SET/GET, keys "n:N" take INCR/GET (an INCR on
// a SET value would fail), so each key has a simple sequential model.

// redisOp is one client operation.
type redisOp struct {
	Kind  string // get, set, incr
	Key   string
	Value string // set: the value written
}

// redisOut is its result. Unknown marks a write whose outcome the client could not learn (a
// timeout, a dropped connection): it may take effect at any time after its call.
type redisOut struct {
	Value   string // get: the value ("" for nil); incr: the new value
	Unknown bool
}

var redisModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(redisOp).Key
			byKey[k] = append(byKey[k], op)
		}
		return slices.Collect(maps.Values(byKey))
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(redisOp), output.(redisOut)
		switch in.Kind {
		case "get":
			return out.Value == st, st
		case "set":
			return true, in.Value
		case "incr":
			n, _ := strconv.Atoi(st) // "" is 0, as in Redis
			next := strconv.Itoa(n + 1)
			return out.Unknown || out.Value == next, next
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(redisOp), output.(redisOut)
		if out.Unknown {
			return fmt.Sprintf("%s(%s,%q) -> ?", in.Kind, in.Key, in.Value)
		}
		return fmt.Sprintf("%s(%s,%q) -> %q", in.Kind, in.Key, in.Value, out.Value)
	},
}

// history is the recorded operations of one scenario.
type history struct {
	mu      sync.Mutex
	base    time.Time
	ops     []porcupine.Operation
	ok      int
	unknown int
	failed  int // reads that got no answer (not recorded: they constrain nothing)
}

func (h *history) now() int64 { return time.Since(h.base).Nanoseconds() }

func (h *history) record(client int, in redisOp, out redisOut, call int64) {
	ret := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if out.Unknown {
		h.unknown++
		ret = math.MaxInt64 / 2
	} else {
		h.ok++
	}
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
}

// workload configures runWorkload.
type workload struct {
	Addr    string                                                            // host:port of the service
	Dial    func(ctx context.Context, network, addr string) (net.Conn, error) // e.g. from a node's netns
	Clients int
	Keys    int // per kind
	Seed    uint64
	Prefix  string // of every key, so runs on one Redis do not share keys
}

func (w workload) client() *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr: w.Addr, Dialer: w.Dial, PoolSize: 1, MaxRetries: -1, // a retried write would be recorded once
		DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
	})
}

// finalReader is the client ID of the reads made after the workload stopped.
const finalReader = 1 << 20

// runWorkload runs the clients until ctx ends, then reads every key once more, and returns the
// history (final reads included).
func runWorkload(ctx context.Context, w workload) *history {
	h := &history{base: time.Now()}
	var wg sync.WaitGroup
	for c := 0; c < w.Clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rdb := w.client()
			defer rdb.Close()
			rnd := rand.New(rand.NewPCG(w.Seed, uint64(c)))
			for seq := 0; ctx.Err() == nil; seq++ {
				k := rnd.IntN(w.Keys)
				var op redisOp
				switch p := rnd.IntN(10); {
				case p < 2:
					op = redisOp{Kind: "get", Key: fmt.Sprintf("%ss:%d", w.Prefix, k)}
				case p < 4:
					op = redisOp{Kind: "get", Key: fmt.Sprintf("%sn:%d", w.Prefix, k)}
				case p < 7:
					op = redisOp{Kind: "set", Key: fmt.Sprintf("%ss:%d", w.Prefix, k), Value: fmt.Sprintf("c%d-%d", c, seq)}
				default:
					op = redisOp{Kind: "incr", Key: fmt.Sprintf("%sn:%d", w.Prefix, k)}
				}
				do(ctx, rdb, h, c, op)
			}
		}()
	}
	wg.Wait()
	// Final reads, after every client stopped: they pin the end state every write must explain.
	final, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rdb := w.client()
	defer rdb.Close()
	for k := 0; k < w.Keys; k++ {
		finalRead(final, rdb, h, fmt.Sprintf("%ss:%d", w.Prefix, k), fmt.Sprintf("%sn:%d", w.Prefix, k))
	}
	return h
}

// finalRead reads each key as client finalReader, retrying a failed read (it proves nothing)
// until it succeeds or ctx ends.
func finalRead(ctx context.Context, rdb *redis.Client, h *history, keys ...string) {
	for _, key := range keys {
		for ctx.Err() == nil {
			before := h.recorded()
			do(ctx, rdb, h, finalReader, redisOp{Kind: "get", Key: key})
			if h.recorded() > before {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

func (h *history) recorded() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

// do runs one operation and records it.
func do(ctx context.Context, rdb *redis.Client, h *history, client int, op redisOp) {
	call := h.now()
	var (
		val string
		err error
	)
	switch op.Kind {
	case "get":
		val, err = rdb.Get(ctx, op.Key).Result()
		if errors.Is(err, redis.Nil) {
			val, err = "", nil
		}
	case "set":
		err = rdb.Set(ctx, op.Key, op.Value, 0).Err()
	case "incr":
		var n int64
		n, err = rdb.Incr(ctx, op.Key).Result()
		val = strconv.FormatInt(n, 10)
	}
	switch {
	case err == nil:
		h.record(client, op, redisOut{Value: val}, call)
	case op.Kind == "get" || notSent(err):
		h.mu.Lock()
		h.failed++
		h.mu.Unlock()
		if ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond) // the service is down: do not spin
		}
	default:
		h.record(client, op, redisOut{Unknown: true}, call)
		if ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// notSent: the request never reached the replicated service (testcheck.NotSent).
func notSent(err error) bool { return testcheck.NotSent(err) }

// verdict is what a scenario reports (summed into the e2e summary line).
type verdict struct {
	Linearizable bool
	LostWrites   int // acknowledged increments missing from the final value
	Diverged     int // replicas whose app state differs from the first replica's
	Ops, Unknown int
}

// check runs porcupine and counts lost increments: the final read of an "n:" key must be at
// least the largest value an acknowledged INCR returned.
func (h *history) check(t *testing.T) verdict {
	t.Helper()
	h.mu.Lock()
	ops := slices.Clone(h.ops)
	h.mu.Unlock()
	v := verdict{Ops: len(ops), Unknown: h.unknown}
	res, info := porcupine.CheckOperationsVerbose(redisModel, ops, time.Minute)
	v.Linearizable = res == porcupine.Ok
	if res != porcupine.Ok {
		t.Errorf("history of %d operations: %v", len(ops), res)
		if path := t.TempDir() + "/history.html"; porcupine.VisualizePath(redisModel, info, path) == nil {
			t.Logf("visualization: %s", path)
		}
	}
	maxAcked, final := map[string]int{}, map[string]int{}
	for _, op := range ops {
		in, out := op.Input.(redisOp), op.Output.(redisOut)
		n, _ := strconv.Atoi(out.Value)
		switch {
		case in.Kind == "incr" && !out.Unknown:
			maxAcked[in.Key] = max(maxAcked[in.Key], n)
		case in.Kind == "get" && op.ClientId == finalReader:
			final[in.Key] = n
		}
	}
	for key, acked := range maxAcked {
		got, read := final[key]
		if !read {
			t.Errorf("key %s: the final read failed; cannot check its acknowledged writes", key)
			v.LostWrites += acked
			continue
		}
		if got < acked {
			v.LostWrites += acked - got
			t.Errorf("key %s: final value %d, but an acknowledged INCR returned %d", key, got, acked)
		}
	}
	return v
}

// appState reads every key of the Redis at addr, dialled with dial (a replica's own app at
// 127.0.0.1 inside its pod), for comparing replicas.
func appState(ctx context.Context, addr string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (map[string]string, error) {
	return appStateDB(ctx, addr, dial, 0)
}

// appStateDB is appState of database db.
func appStateDB(ctx context.Context, addr string, dial func(ctx context.Context, network, addr string) (net.Conn, error), db int) (map[string]string, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr, Dialer: dial, PoolSize: 1, MaxRetries: -1, DB: db})
	defer rdb.Close()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		return nil, fmt.Errorf("KEYS * at %s db %d: %w", addr, db, err)
	}
	state := map[string]string{}
	for _, k := range keys {
		v, err := rdb.Get(ctx, k).Result()
		if err != nil {
			return nil, fmt.Errorf("GET %s at %s db %d: %w", k, addr, db, err)
		}
		state[k] = v
	}
	return state, nil
}
