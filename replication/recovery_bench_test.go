package replication

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

// TestBenchRecovery is `make bench-recovery` (SMR_BENCH_RECOVERY=1): N
// writes (SMR_RECOVERY_WRITES, default 200000, from benchSessions clients
// at once) to a 3-member group of real
// redis-servers with snapshot-every 10000, then a brand-new member joins
// by state transfer; the same history is replayed from the start into a
// fresh app through an executor (the cost without snapshots, minus raft).
// Last line: recovery: writes=N log_bytes=B snapshot_bytes=S transfer_s=T replay_from_start_s=R
func TestBenchRecovery(t *testing.T) {
	if os.Getenv("SMR_BENCH_RECOVERY") != "1" {
		t.Skip("benchmark: make bench-recovery")
	}
	requireIntegration(t)
	writes := 200000
	if v := os.Getenv("SMR_RECOVERY_WRITES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("SMR_RECOVERY_WRITES=%q", v)
		}
		writes = n
	}
	const every = 10000
	if writes < 2*every {
		t.Fatalf("SMR_RECOVERY_WRITES=%d: the benchmark needs at least %d writes (two snapshots of every %d entries)", writes, 2*every, every)
	}
	network := memnet.New()
	t.Cleanup(network.Close)
	dir := t.TempDir()
	peers := map[uint64]string{1: "m1", 2: "m2", 3: "m3"}
	var ms []*snapMember
	for id := uint64(1); id <= 3; id++ {
		ms = append(ms, startSnapMember(t, network, dir, id, startRedis(t), peers, every))
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.stop()
		}
	})
	var lead *snapMember
	waitFor(t, "a leader", func() bool {
		for _, m := range ms {
			if m.group.Status().Leader == m.id {
				lead = m
				return true
			}
		}
		return false
	})
	benchWrite(t, lead.group, writes)
	logBytes, _, err := lead.group.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}
	// The writes settle before the transfer is timed: every member applied
	// what was committed and no periodic snapshot is being written (a
	// member's snap directory holds a .tmp state file meanwhile; the one
	// due at the last writes captures every key under the leader's apply
	// loop and would hold up the join, which is not the transfer's cost).
	// log_bytes is the larger of the figures before and after.
	settled := 0 // consecutive checks (20 ms apart) that found it settled
	waitForLong(t, "the writes to settle", func() bool {
		for _, m := range ms {
			st := m.group.Status()
			tmp, _ := filepath.Glob(filepath.Join(dir, peers[m.id], testGroup, "snap", "*.tmp"))
			if st.Applied < st.Commit || len(tmp) > 0 {
				settled = 0
				return false
			}
		}
		settled++
		return settled >= 25
	})
	if b, _, err := lead.group.DiskUsage(); err == nil {
		logBytes = max(logBytes, b)
	}
	states, _ := filepath.Glob(filepath.Join(dir, peers[lead.id], testGroup, "snap", "*.state"))
	slices.Sort(states)
	var snapBytes int64
	if len(states) > 0 {
		if fi, err := os.Stat(states[len(states)-1]); err == nil {
			snapBytes = fi.Size()
		}
	}

	// A brand-new member joins and catches up by state transfer.
	peers[4] = "m4"
	t0 := time.Now()
	if err := lead.group.AddMember(t.Context(), 4, "m4"); err != nil {
		t.Fatal(err)
	}
	nm := startSnapMember(t, network, dir, 4, startRedis(t), peers, every)
	ms = append(ms, nm)
	commit := lead.group.Status().Commit
	waitForLong(t, "the new member to catch up", func() bool { return nm.group.Status().Applied >= commit })
	transfer := time.Since(t0)
	if nm.count("restore") != 1 {
		t.Fatalf("the new member did not join by state transfer")
	}
	for _, line := range strings.Split(nm.trace.String(), "\n") {
		if strings.Contains(line, "smr=restore ") {
			t.Logf("the new member's restore: %s", line)
		}
	}

	// The same history replayed from the start into a fresh app.
	x, err := NewExecutor(ExecutorConfig{Group: testGroup, Self: 9, Ports: []Port{respPort}, Dialer: &addrDialer{addr: startRedis(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	t0 = time.Now()
	index := uint64(0)
	for s := range uint64(benchSessions) {
		index++
		if _, err := x.Apply(raftcore.Entry{Group: testGroup, Index: index, Session: benchSession + s, Seq: 1, Origin: 1,
			Data: Op{Kind: KindOpen, Port: respPort.Number, Protocol: framing.ProtoRESP}.Encode()}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range writes {
		index++
		val, err := x.Apply(raftcore.Entry{Group: testGroup, Index: index, Session: benchSession + uint64(i%benchSessions),
			Seq: uint64(i/benchSessions) + 2, Origin: 1, Data: benchSET(i)})
		if err != nil || string(val) != "+OK\r\n" {
			t.Fatalf("replay %d: %q %v", i, val, err)
		}
	}
	replay := time.Since(t0)
	fmt.Printf("recovery: writes=%d log_bytes=%d snapshot_bytes=%d transfer_s=%.2f replay_from_start_s=%.2f\n",
		writes, logBytes, snapBytes, transfer.Seconds(), replay.Seconds())
}

// The benchmark's writers: benchSessions client sessions, each writing
// every benchSessions-th key, one request in flight per session (as that
// many clients would).
const (
	benchSessions = 8
	benchSession  = 0x5eed00
)

// benchSET is the entry data of write i: SET key:i value-i.
func benchSET(i int) []byte {
	k, v := fmt.Sprintf("key:%d", i), fmt.Sprintf("value-%d", i)
	raw := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(k), k, len(v), v)
	return Op{Kind: KindRequest, Name: "SET", Raw: []byte(raw)}.Encode()
}

// benchWrite makes writes SETs through g's log from benchSessions
// sessions at once; each proposal has its own timeout (a run of 1,000,000
// writes takes many minutes on a loaded machine).
func benchWrite(t *testing.T, g *raftcore.Group, writes int) {
	t.Helper()
	// A proposal whose outcome is unknown (a leader change under load) is
	// retried with the same (session, seq), as Server.propose does: it
	// applies at most once.
	propose := func(p raftcore.Proposal) (raftcore.Result, error) {
		backoff := 20 * time.Millisecond
		for attempt := 0; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			res, err := g.Propose(ctx, p)
			cancel()
			if err == nil || !retryable(err) || attempt >= 20 {
				return res, err
			}
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, benchSessions)
	for s := range benchSessions {
		wg.Go(func() {
			session := benchSession + uint64(s)
			if _, err := propose(raftcore.Proposal{Session: session, Seq: 1,
				Data: Op{Kind: KindOpen, Port: respPort.Number, Protocol: framing.ProtoRESP}.Encode()}); err != nil {
				errs <- fmt.Errorf("open session %d: %w", s, err)
				return
			}
			for i := s; i < writes; i += benchSessions {
				res, err := propose(raftcore.Proposal{Session: session, Seq: uint64(i/benchSessions) + 2, Data: benchSET(i)})
				if err != nil || string(res.Value) != "+OK\r\n" {
					errs <- fmt.Errorf("SET key:%d: %q %w", i, res.Value, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// waitForLong is waitFor with a bound for large states.
func waitForLong(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
