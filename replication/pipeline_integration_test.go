package replication

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// orderLog is a log of 50 sessions' entries whose effect reveals the order
// in which the app executed them: every pushing request appends a value
// naming its log position to a list of the session's current database, and
// the reply of RPUSH is the list's length, so both the final lists and each
// reply must equal what executing the log strictly in order gives. The
// first stateful sessions move from the shared pipelined connection to their
// own ones (CLIENT SETNAME, SELECT, MULTI/EXEC, WATCH) and interleave with
// the others, which is where a pipeline that let two connections have
// requests outstanding at once would reorder.
type orderLog struct {
	entries []raftcore.Entry
	// want is the expected reply of each entry ("" = not checked), and
	// lists the expected content of list "order" per database.
	want  []string
	lists map[int][]string
}

func newOrderLog(seed uint64, sessions, stateful, requests int) *orderLog {
	rnd := rand.New(rand.NewPCG(seed, 1))
	l := &orderLog{lists: map[int][]string{}}
	type sess struct {
		db     int
		multi  bool
		queued []string // values pushed at EXEC
		seq    uint64
	}
	ss := make([]*sess, sessions)
	index := uint64(0)
	add := func(id int, op Op, want string) {
		index++
		s := ss[id]
		s.seq++
		l.entries = append(l.entries, raftcore.Entry{Group: testGroup, Index: index, Session: uint64(1000 + id), Seq: s.seq,
			Origin: 1, Data: op.Encode()})
		l.want = append(l.want, want)
	}
	req := func(args ...string) Op {
		bs := make([][]byte, len(args))
		for i, a := range args {
			bs[i] = []byte(a)
		}
		name := strings.ToUpper(args[0])
		if name == "CLIENT" {
			name += " " + strings.ToUpper(args[1])
		}
		return Op{Kind: KindRequest, Port: respPort.Number, Protocol: respPort.Protocol, Name: name, Raw: rediscmd.EncodeRequest(bs)}
	}
	for id := range ss {
		ss[id] = &sess{}
		add(id, Op{Kind: KindOpen, Port: respPort.Number, Protocol: respPort.Protocol}, "")
	}
	push := func(s *sess, v string) string {
		l.lists[s.db] = append(l.lists[s.db], v)
		return ":" + strconv.Itoa(len(l.lists[s.db]))
	}
	for range requests {
		id := rnd.IntN(sessions)
		s := ss[id]
		v := fmt.Sprintf("e%d", index+1)
		k := rnd.IntN(20)
		if id >= stateful {
			k = 19 // a session that never has connection state
		}
		switch {
		case s.multi && k < 6:
			add(id, req("EXEC"), "")
			for _, q := range s.queued {
				push(s, q)
			}
			s.multi, s.queued = false, nil
		case s.multi:
			add(id, req("RPUSH", "order", v), "+QUEUED")
			s.queued = append(s.queued, v)
		case k == 0:
			db := rnd.IntN(3)
			add(id, req("SELECT", strconv.Itoa(db)), "+OK")
			s.db = db
		case k == 1:
			add(id, req("CLIENT", "SETNAME", fmt.Sprintf("s%d", id)), "+OK")
		case k == 2:
			add(id, req("MULTI"), "+OK")
			s.multi = true
		case k == 3:
			add(id, req("WATCH", "w"), "+OK")
		case k == 4:
			add(id, req("UNWATCH"), "+OK")
		default:
			add(id, req("RPUSH", "order", v), "")
			l.want[len(l.want)-1] = push(s, v)
		}
	}
	return l
}

// The ordered pipeline never reorders two entries: three executors, each on
// its own real redis-server, apply one log of 50 sessions in batches of
// random sizes; every reply and every replica's lists equal executing the
// log strictly in order. (Checked to fail when a session's SELECT may go on
// the shared connection.)
func TestPipelineNeverReorders(t *testing.T) {
	requireIntegration(t)
	l := newOrderLog(7, 50, 10, 3000)
	ctx := context.Background()
	for r := range 3 {
		addr := startRedis(t)
		reg := prometheus.NewRegistry()
		metrics, err := NewMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		x, err := NewExecutor(ExecutorConfig{Group: testGroup, Self: uint64(r + 1), Ports: []Port{respPort},
			Dialer: &addrDialer{addr: addr}, Metrics: metrics})
		if err != nil {
			t.Fatal(err)
		}
		rnd := rand.New(rand.NewPCG(uint64(r), 9))
		var got []raftcore.ApplyResult
		for i := 0; i < len(l.entries); {
			n := min(len(l.entries)-i, 1+rnd.IntN(raftcore.MaxApplyBatch))
			got = append(got, x.ApplyBatch(l.entries[i:i+n])...)
			i += n
		}
		_ = x.Close()
		for i, w := range l.want {
			if w != "" && strings.TrimSpace(string(got[i].Value)) != w {
				t.Fatalf("replica %d entry %d (%s): reply %q, want %q (the app did not execute the log in order)",
					r+1, i+1, opName(l.entries[i]), got[i].Value, w)
			}
		}
		for db := range 3 {
			c := redis.NewClient(&redis.Options{Addr: addr, DB: db})
			list, err := c.LRange(ctx, "order", 0, -1).Result()
			_ = c.Close()
			if err != nil {
				t.Fatal(err)
			}
			if want := l.lists[db]; !slices.Equal(list, want) && (len(list) > 0 || len(want) > 0) {
				t.Fatalf("replica %d db %d: order list differs from the log's order (%d vs %d values; first difference at %d)",
					r+1, db, len(list), len(want), firstDiff(list, want))
			}
		}
		if runs, entries := pipelineRuns(t, reg); entries < 2*runs {
			t.Fatalf("replica %d: %d pipeline runs for %d entries: the log was not pipelined", r+1, runs, entries)
		}
	}
}

// pipelineRuns reads smr_pipeline_run_entries: how many runs were drained
// and how many entries they held.
func pipelineRuns(t *testing.T, reg *prometheus.Registry) (runs, entries uint64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "smr_pipeline_run_entries" {
			continue
		}
		for _, m := range mf.GetMetric() {
			runs += m.GetHistogram().GetSampleCount()
			entries += uint64(m.GetHistogram().GetSampleSum())
		}
	}
	return runs, entries
}

func opName(e raftcore.Entry) string {
	op, err := DecodeOp(e.Data)
	if err != nil {
		return err.Error()
	}
	if op.Kind != KindRequest {
		return op.Kind.String()
	}
	return op.Name
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// 50 concurrent sessions through 3 replicas with real Redis, pipelined:
// plain SET/GET sessions (sharing the pipelined connection), sessions with a
// name (their own connection) on the same keys, sessions in database 1, in
// MULTI/EXEC transactions, and WATCH-based optimistic increments. The
// history of the shared keys is linearizable (porcupine), every replica's
// keyspace is identical (compared directly), and the transactions' and
// optimistic increments' totals are exact.
func TestPipelineMixedSessionsLinearizable(t *testing.T) {
	rc := newRedisCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const (
		plain, named, selected, multi, watch = 30, 5, 5, 5, 5
		ops, keys                            = 40, 5
	)
	base := time.Now()
	var (
		mu       sync.Mutex
		history  []porcupine.Operation
		watchWon atomic.Int64
		wg       sync.WaitGroup
	)
	client := func(n int, o redis.Options) *redis.Client {
		// Every other session sends no connection-state command at all
		// (protocol 2, no CLIENT SETINFO); the others are go-redis' default
		// (HELLO 3, CLIENT SETINFO): both kinds share connections per state.
		if n%2 == 0 {
			o.Protocol, o.DisableIdentity = 2, true
		}
		o.PoolSize, o.MaxRetries = 1, -1
		return rc.client(t, n%len(rc.replicas), &o)
	}
	record := func(cl int, in kvtest.Op, call int64, out kvtest.Output) {
		mu.Lock()
		history = append(history, porcupine.Operation{ClientId: cl, Input: in, Call: call, Output: out,
			Return: time.Since(base).Nanoseconds()})
		mu.Unlock()
	}
	kv := func(cl int, c *redis.Client) {
		rnd := rand.New(rand.NewPCG(uint64(cl), 3))
		for i := range ops {
			key := fmt.Sprintf("k%d", rnd.IntN(keys))
			call := time.Since(base).Nanoseconds()
			if rnd.IntN(2) == 0 {
				v := fmt.Sprintf("c%d-%d", cl, i)
				if err := c.Set(ctx, key, v, 0).Err(); err != nil {
					t.Errorf("client %d SET: %v", cl, err)
					return
				}
				record(cl, kvtest.Op{Kind: "put", Key: key, Value: v}, call, kvtest.Output{})
				continue
			}
			v, err := c.Get(ctx, key).Result()
			if errors.Is(err, redis.Nil) {
				v, err = "", nil
			}
			if err != nil {
				t.Errorf("client %d GET: %v", cl, err)
				return
			}
			record(cl, kvtest.Op{Kind: "get", Key: key}, call, kvtest.Output{Value: v})
		}
	}
	id := 0
	next := func() int { id++; return id }
	for range plain {
		cl := next()
		c := client(cl, redis.Options{})
		wg.Add(1)
		go func() { defer wg.Done(); kv(cl, c) }()
	}
	for range named {
		cl := next()
		c := client(cl, redis.Options{ClientName: fmt.Sprintf("named-%d", cl)})
		wg.Add(1)
		go func() { defer wg.Done(); kv(cl, c) }()
	}
	for range selected {
		cl := next()
		c := client(cl, redis.Options{DB: 1})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ops {
				if err := c.Incr(ctx, "db1-counter").Err(); err != nil {
					t.Errorf("client %d INCR in db 1: %v", cl, err)
					return
				}
				if err := c.Set(ctx, fmt.Sprintf("db1-%d", cl), i, 0).Err(); err != nil {
					t.Errorf("client %d SET in db 1: %v", cl, err)
					return
				}
			}
		}()
	}
	for range multi {
		cl := next()
		c := client(cl, redis.Options{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ops {
				_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Set(ctx, fmt.Sprintf("tx-%d", cl), i, 0)
					p.Incr(ctx, "tx-counter")
					return nil
				})
				if err != nil {
					t.Errorf("client %d MULTI/EXEC: %v", cl, err)
					return
				}
			}
		}()
	}
	for range watch {
		cl := next()
		c := client(cl, redis.Options{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range ops {
				err := c.Watch(ctx, func(tx *redis.Tx) error {
					n, err := tx.Get(ctx, "watched").Int()
					if err != nil && !errors.Is(err, redis.Nil) {
						return err
					}
					_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
						p.Set(ctx, "watched", n+1, 0)
						return nil
					})
					return err
				}, "watched")
				switch {
				case err == nil:
					watchWon.Add(1)
				case errors.Is(err, redis.TxFailedErr):
				default:
					t.Errorf("client %d WATCH increment: %v", cl, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if res := porcupine.CheckOperationsTimeout(kvtest.Model, history, time.Minute); res != porcupine.Ok {
		t.Fatalf("history of %d SET/GET operations of %d sessions (shared and own app connections): porcupine says %v",
			len(history), plain+named, res)
	}
	rc.waitCaughtUp()
	totals := map[string]int64{"tx-counter": multi * ops, "watched": watchWon.Load()}
	for key, want := range totals {
		if got, err := rc.direct(t, 0, 0).Get(ctx, key).Int64(); err != nil || got != want {
			t.Errorf("replica 1: %s = %d, %v; want %d", key, got, err, want)
		}
	}
	if got, err := rc.direct(t, 0, 1).Get(ctx, "db1-counter").Int64(); err != nil || got != selected*ops {
		t.Errorf("replica 1 db 1: db1-counter = %d, %v; want %d", got, err, selected*ops)
	}
	first := keyspace(t, rc.apps[0], 1)
	for i := 1; i < len(rc.apps); i++ {
		if got := keyspace(t, rc.apps[i], 1); !maps.Equal(got, first) {
			t.Errorf("replica %d: keyspace (databases 0 and 1) differs from replica 1's (%d vs %d keys)", i+1, len(got), len(first))
		}
	}
	if runs, entries := pipelineRuns(t, rc.reg); entries <= runs {
		t.Errorf("%d pipeline runs for %d entries: nothing was pipelined", runs, entries)
	}
}

// Local reads of sessions without connection state share one pipelined app
// connection: 200 concurrent reads of 50 sessions all get their own key's
// value, the app sees one read connection, and a read connection that the
// app closed while idle (Redis' timeout) is replaced without an error.
func TestPipelinedLocalReads(t *testing.T) {
	requireIntegration(t)
	addr := startRedis(t, "--timeout", "1")
	x, err := NewExecutor(ExecutorConfig{Group: testGroup, Self: 1, Ports: []Port{respPort}, Dialer: &addrDialer{addr: addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	const sessions = 50
	var log []raftcore.Entry
	for id := range sessions {
		log = append(log, raftcore.Entry{Index: uint64(len(log) + 1), Session: uint64(id + 1), Seq: 1, Origin: 1,
			Data: Op{Kind: KindOpen, Port: respPort.Number, Protocol: respPort.Protocol}.Encode()})
		set := rediscmd.EncodeRequest([][]byte{[]byte("SET"), fmt.Appendf(nil, "k%d", id), fmt.Appendf(nil, "v%d", id)})
		log = append(log, raftcore.Entry{Index: uint64(len(log) + 1), Session: uint64(id + 1), Seq: 2, Origin: 1,
			Data: Op{Kind: KindRequest, Name: "SET", Raw: set}.Encode()})
	}
	for _, r := range x.ApplyBatch(log) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	readAll := func() {
		var wg sync.WaitGroup
		for i := range 4 * sessions {
			id := i % sessions
			wg.Add(1)
			go func() {
				defer wg.Done()
				get := rediscmd.EncodeRequest([][]byte{[]byte("GET"), fmt.Appendf(nil, "k%d", id)})
				val, err := x.Read(context.Background(), uint64(id+1), framing.Request{Raw: get, Op: "GET", ReadOnly: true}, uint64(len(log)))
				if want := fmt.Sprintf("$%d\r\nv%d\r\n", len(fmt.Sprint(id))+1, id); err != nil || string(val) != want {
					t.Errorf("session %d: GET = %q, %v; want %q", id+1, val, err, want)
				}
			}()
		}
		wg.Wait()
	}
	readAll()
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true})
	defer c.Close()
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	// The write connection, the read connection and this one.
	if n := strings.Count(list, "\n"); n > 3 {
		t.Errorf("the app has %d connections after reads of %d sessions, want at most 3:\n%s", n, sessions, list)
	}
	time.Sleep(2500 * time.Millisecond) // Redis closes the idle read connection
	readAll()
}
