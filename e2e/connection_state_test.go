package e2e

import (
	"context"
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/test/lab/cluster"
)

// stateSession is one client connection through the Service that changed its connection
// state (RESP3, a client name, database 2) and, by kind, holds an open MULTI or a WATCH.
type stateSession struct {
	name   string
	kind   string // "plain", "multi" or "watch"
	origin string // the replica pod serving it
	client *redis.Client
	conn   *redis.Conn
	ended  bool
}

// Session kinds.
const (
	kindPlain = "plain"
	kindMulti = "multi"
	kindWatch = "watch"
	// kindWatchKept: a WATCH session the restart rebuilt by executing the log (opened after
	// the snapshot the restarted replica restored), not ended.
	kindWatchKept = "watch-kept"
)

// inPod dials 127.0.0.1 inside pod's network namespace (the replica's own app).
func inPod(ctx context.Context, t *testing.T, cl *cluster.Cluster, pod string) func(context.Context, string, string) (net.Conn, error) {
	t.Helper()
	netns, err := cl.PodNetNS(ctx, replicaNodes(ctx, t)[pod], smrNS, pod)
	if err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netintercept.DialInNetns(ctx, netns, network, addr)
	}
}

var runIDLine = regexp.MustCompile(`run_id:([0-9a-f]+)`)

// runIDs maps each replica app's run_id (INFO server) to its pod.
func runIDs(ctx context.Context, t *testing.T, cl *cluster.Cluster) map[string]string {
	t.Helper()
	out := map[string]string{}
	for pod := range replicaNodes(ctx, t) {
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", Dialer: inPod(ctx, t, cl, pod), PoolSize: 1, MaxRetries: -1})
		info, err := rdb.Info(ctx, "server").Result()
		rdb.Close()
		m := runIDLine.FindStringSubmatch(info)
		if err != nil || m == nil {
			t.Fatalf("INFO server of %s: %v", pod, err)
		}
		out[m[1]] = pod
	}
	return out
}

// openStateSessions opens sessions through the Service until the replicas other than victim
// serve at least two of each kind; sessions served by victim are closed (a restart of its
// smr-cri ends them with its RESET anyway). INFO is served by the replica holding the
// connection, so its run_id names the session's origin.
func openStateSessions(ctx context.Context, t *testing.T, cl *cluster.Cluster, dial func(context.Context, string, string) (net.Conn, error), addr, victim string) []*stateSession {
	t.Helper()
	ids := runIDs(ctx, t, cl)
	kinds := []string{kindPlain, kindMulti, kindWatch}
	count := map[string]int{}
	var out []*stateSession
	for i := 0; i < 60 && (count[kindPlain] < 2 || count[kindMulti] < 2 || count[kindWatch] < 2); i++ {
		s := &stateSession{name: fmt.Sprintf("cs-%d", i), kind: kinds[i%3]}
		s.client = redis.NewClient(&redis.Options{Addr: addr, Dialer: dial, PoolSize: 1, MaxRetries: -1,
			Protocol: 3, ClientName: s.name, DB: 2})
		s.conn = s.client.Conn()
		info, err := s.conn.Info(ctx, "server").Result()
		m := runIDLine.FindStringSubmatch(info)
		if err != nil || m == nil || ids[m[1]] == "" {
			t.Fatalf("session %s: INFO server = %v (run_id of no replica)", s.name, err)
		}
		s.origin = ids[m[1]]
		if s.origin == victim {
			s.close()
			continue
		}
		if err := s.conn.Set(ctx, s.name+":before", "1", 0).Err(); err != nil {
			t.Fatalf("session %s: %v", s.name, err)
		}
		switch s.kind {
		case kindMulti:
			for _, cmd := range [][]any{{"MULTI"}, {"SET", s.name + ":tx", "1"}, {"INCR", s.name + ":n"}} {
				if err := s.conn.Do(ctx, cmd...).Err(); err != nil {
					t.Fatalf("session %s: %v: %v", s.name, cmd, err)
				}
			}
		case kindWatch:
			if err := s.conn.Do(ctx, "WATCH", s.name+":w").Err(); err != nil {
				t.Fatalf("session %s: WATCH: %v", s.name, err)
			}
		}
		count[s.kind]++
		out = append(out, s)
	}
	if count[kindPlain] < 2 || count[kindMulti] < 2 || count[kindWatch] < 2 {
		t.Fatalf("the Service sent too few sessions to the replicas other than %s: %v", victim, count)
	}
	return out
}

func (s *stateSession) close() {
	_ = s.conn.Close()
	_ = s.client.Close()
}

// replicaConnStates lists, per replica pod, the connection state its app reports (CLIENT LIST)
// for the connections named cs-*: name, database, protocol, queued commands, flags.
func replicaConnStates(ctx context.Context, t *testing.T, cl *cluster.Cluster) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for pod := range replicaNodes(ctx, t) {
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", Dialer: inPod(ctx, t, cl, pod), PoolSize: 1, MaxRetries: -1})
		list, err := rdb.ClientList(ctx).Result()
		rdb.Close()
		if err != nil {
			t.Fatalf("CLIENT LIST of %s: %v", pod, err)
		}
		var conns []string
		for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
			f := map[string]string{}
			for _, kv := range strings.Fields(line) {
				k, v, _ := strings.Cut(kv, "=")
				f[k] = v
			}
			if strings.HasPrefix(f["name"], "cs-") {
				conns = append(conns, fmt.Sprintf("name=%s db=%s resp=%s multi=%s flags=%s", f["name"], f["db"], f["resp"], f["multi"], f["flags"]))
			}
		}
		slices.Sort(conns)
		out[pod] = conns
	}
	return out
}

// sameEverywhere reports the first replica whose value differs from another's, or "".
func sameEverywhere[V any](m map[string]V, eq func(a, b V) bool) string {
	pods := slices.Sorted(maps.Keys(m))
	for _, pod := range pods[min(1, len(pods)):] {
		if !eq(m[pods[0]], m[pod]) {
			return fmt.Sprintf("%s: %v, %s: %v", pods[0], m[pods[0]], pod, m[pod])
		}
	}
	return ""
}

// pumpWrites orders n SETs (keys cs-pump:*) through the Service, from 8 connections at once
// (one connection's requests are ordered one after the other).
func pumpWrites(ctx context.Context, t *testing.T, dial func(context.Context, string, string) (net.Conn, error), addr string, n int) {
	t.Helper()
	const conns = 8
	errs := make(chan error, conns)
	for c := range conns {
		go func() {
			rdb := redis.NewClient(&redis.Options{Addr: addr, Dialer: dial, PoolSize: 1, MaxRetries: -1, ReadTimeout: time.Minute})
			defer rdb.Close()
			var err error
			for done := c; done < n && err == nil; done += conns * 100 {
				_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
					for i := done; i < min(done+conns*100, n); i += conns {
						p.Set(ctx, fmt.Sprintf("cs-pump:%d", i%100), i, 0)
					}
					return nil
				})
			}
			errs <- err
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Fatalf("pump writes: %v", err)
		}
	}
}

var endedIndex = regexp.MustCompile(`session ended at log index (\d+) on every replica: `)

// TestReplicatedRestartConnectionState (issue 13): smr-cri on a follower's node is SIGKILLed
// and restarted while clients of the other replicas hold sessions with connection state
// (RESP3, a client name, database 2; some with an open MULTI, some with a WATCH). Afterwards
// every replica's app reports the same connections (CLIENT LIST, compared inside each pod), the
// sessions' later writes land in database 2 on every replica, the open transactions execute,
// and each WATCH session (replay cannot rebuild it) is ended with a clear error whose log index
// every member logged for it.
func TestReplicatedRestartConnectionState(t *testing.T) {
	cl := requireCluster(t)
	ctx := context.Background()
	deployRedisSet(ctx, t, cl)
	victim := victimPod(ctx, t, cl, false)
	victimNode := replicaNodes(ctx, t)[victim]
	clientNode := otherNode(cl, victimNode)
	dial, addr := serviceClient(ctx, t, cl, clientNode)
	sessions := openStateSessions(ctx, t, cl, dial, addr, victim)
	defer func() {
		for _, s := range sessions {
			s.close()
		}
	}()
	scenario(t, "smr-cri-restart-connection-state", clientNode, func(ctx context.Context, t *testing.T) {
		// More writes than smr.io/snapshot-every (10000) after the sessions opened: every
		// member's latest snapshot holds them, so the restarted member, which restores its
		// latest snapshot (or resumes after it), must rebuild them from it.
		pumpWrites(ctx, t, dial, addr, 11000)
		eventually(ctx, t, time.Minute, "the same connections on every replica before the fault", func() error {
			if d := sameEverywhere(replicaConnStates(ctx, t, cl), slices.Equal[[]string]); d != "" {
				return fmt.Errorf("connections differ: %s", d)
			}
			return nil
		})
		t.Logf("killing smr-cri on %s (replica %s) under %d sessions", victimNode, victim, len(sessions))
		if err := cl.KillSmrCRI(victimNode); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		if err := cl.RestartSmrCRI(ctx, victimNode); err != nil {
			t.Fatal(err)
		}
		waitRedisSet(ctx, t)

		// Each WATCH session that was open at the restarted replica's resume point (or at the
		// snapshot it restored) ends on every member at one index: replay cannot rebuild it.
		// PING is served by the origin alone, so polling with it never runs a request of the
		// session on the restarted replica (which would have to repair its app). A session
		// opened after the snapshot the restarted replica restored is rebuilt by executing
		// the log suffix instead, WATCH included: its transaction below must then abort on
		// every replica alike (database 2 is compared).
		group := smrNS + ".redis"
		for _, s := range sessions {
			if s.kind != kindWatch {
				continue
			}
			var idx uint64
			deadline := time.Now().Add(30 * time.Second)
			for idx == 0 && time.Now().Before(deadline) {
				if err := s.conn.Ping(ctx).Err(); err != nil {
					m := endedIndex.FindStringSubmatch(err.Error())
					if m == nil || !strings.Contains(err.Error(), "WATCH is active") {
						t.Fatalf("session %s: %v, want %q ... WATCH is active", s.name, err, endedIndex)
					}
					idx, _ = strconv.ParseUint(m[1], 10, 64)
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if idx == 0 {
				t.Logf("session %s was not ended: rebuilt by executing the log after a snapshot; checking its WATCH", s.name)
				s.kind = kindWatchKept
				continue
			}
			s.ended = true
			eventually(ctx, t, time.Minute, fmt.Sprintf("every member's END of %s at index %d", s.name, idx), func() error {
				ends, err := cl.SessionEnds(group)
				if err != nil {
					return err
				}
				nodes := map[string]bool{}
				for _, e := range ends {
					if e.Index == idx {
						nodes[e.Node] = true
					}
				}
				if len(nodes) != 3 {
					return fmt.Errorf("END at index %d logged on %d nodes: %+v", idx, len(nodes), ends)
				}
				return nil
			})
		}
		if !slices.ContainsFunc(sessions, func(s *stateSession) bool { return s.ended }) {
			t.Errorf("no WATCH session was ended by the restart, although a snapshot taken after they opened holds them")
		}
		// The others keep working, in their database, on every replica.
		for _, s := range sessions {
			switch s.kind {
			case kindPlain:
				if err := s.conn.Set(ctx, s.name+":after", "2", 0).Err(); err != nil {
					t.Errorf("session %s after the restart: %v", s.name, err)
				}
			case kindMulti:
				res, err := s.conn.Do(ctx, "EXEC").Slice()
				if err != nil || len(res) != 2 {
					t.Errorf("session %s: EXEC after the restart = %v, %v", s.name, res, err)
				}
			case kindWatchKept:
				// Another client touches the watched key: the transaction must abort.
				other := redis.NewClient(&redis.Options{Addr: addr, Dialer: dial, PoolSize: 1, MaxRetries: -1, DB: 2})
				if err := other.Set(ctx, s.name+":w", "touched", 0).Err(); err != nil {
					t.Errorf("touch %s:w: %v", s.name, err)
				}
				other.Close()
				_ = s.conn.Do(ctx, "MULTI").Err()
				_ = s.conn.Do(ctx, "SET", s.name+":aborted", "1").Err()
				if res, err := s.conn.Do(ctx, "EXEC").Slice(); err != redis.Nil {
					t.Errorf("session %s: EXEC after a write to its watched key = %v, %v; want an aborted transaction", s.name, res, err)
				}
			}
		}
		eventually(ctx, t, time.Minute, "the same connections and database 2 on every replica", func() error {
			if d := sameEverywhere(replicaConnStates(ctx, t, cl), slices.Equal[[]string]); d != "" {
				return fmt.Errorf("connections differ: %s", d)
			}
			db2 := map[string]map[string]string{}
			for pod := range replicaNodes(ctx, t) {
				st, err := appStateDB(ctx, "127.0.0.1:6379", inPod(ctx, t, cl, pod), 2)
				if err != nil {
					return err
				}
				db2[pod] = st
			}
			if d := sameEverywhere(db2, func(a, b map[string]string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }); d != "" {
				return fmt.Errorf("database 2 differs: %s", d)
			}
			for _, s := range sessions {
				want := map[string]string{kindPlain: s.name + ":after", kindMulti: s.name + ":tx", kindWatch: s.name + ":before",
					kindWatchKept: s.name + ":w"}[s.kind]
				for pod, st := range db2 {
					if _, ok := st[want]; !ok {
						return fmt.Errorf("replica %s: key %s missing in database 2", pod, want)
					}
				}
			}
			return nil
		})
	})
}
