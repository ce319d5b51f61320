package kvtest

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

// GroupName is the group every Cluster member runs.
const GroupName = "kv"

// Options configure an in-process Cluster.
type Options struct {
	Members       int
	SnapshotEvery uint64
	Tick          time.Duration // default 20ms
	// SessionEndGrace is passed to every member's GroupConfig.
	SessionEndGrace uint64
}

// Member is one in-process member: its own Node, Group and KV.
type Member struct {
	ID    uint64
	Addr  string
	Node  *raftcore.Node
	Group *raftcore.Group
	KV    *KV
}

// Propose implements Target.
func (m *Member) Propose(ctx context.Context, p raftcore.Proposal) (raftcore.Result, error) {
	return m.Group.Propose(ctx, p)
}

// Read implements Target.
func (m *Member) Read(ctx context.Context, key string) (string, error) {
	if _, err := m.Group.ReadIndex(ctx); err != nil {
		return "", err
	}
	return m.KV.Get(key), nil
}

// Cluster runs members of one group in this process over a memnet.Network,
// each with its own data dir (a "crash" closes the node; restart replays
// its WAL).
type Cluster struct {
	T    testing.TB
	Net  *memnet.Network
	Dir  string
	Opts Options

	mu      sync.Mutex
	peers   map[uint64]string
	members map[uint64]*Member
}

// NewCluster starts opts.Members members (ids 1..N) and stops them at
// test cleanup.
func NewCluster(t testing.TB, opts Options) *Cluster {
	if opts.Tick == 0 {
		opts.Tick = 20 * time.Millisecond
	}
	c := &Cluster{T: t, Net: memnet.New(), Dir: t.TempDir(), Opts: opts,
		peers: map[uint64]string{}, members: map[uint64]*Member{}}
	for id := uint64(1); id <= uint64(opts.Members); id++ {
		c.peers[id] = Addr(id)
	}
	for id := uint64(1); id <= uint64(opts.Members); id++ {
		if err := c.Start(id, false); err != nil {
			t.Fatalf("start member %d: %v", id, err)
		}
	}
	t.Cleanup(func() {
		for _, id := range c.Live() {
			c.Stop(id)
		}
		c.Net.Close()
	})
	return c
}

// Addr is the memnet address of member id.
func Addr(id uint64) string { return fmt.Sprintf("m%d", id) }

// Start (re)starts member id from its data dir; join starts it as a new
// member that waits for the leader (after AddMember).
func (c *Cluster) Start(id uint64, join bool) error {
	return c.StartWith(id, StartOptions{Join: join})
}

// StartOptions are the GroupConfig choices of a (re)start.
type StartOptions struct {
	Join, CatchUpBeforeVoting bool
}

// StartWith (re)starts member id from its data dir with o.
func (c *Cluster) StartWith(id uint64, o StartOptions) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.members[id]; ok {
		return fmt.Errorf("member %d already running", id)
	}
	c.peers[id] = Addr(id)
	n, err := raftcore.NewNode(raftcore.NodeConfig{
		DataDir:      filepath.Join(c.Dir, Addr(id)),
		Transport:    c.Net.Endpoint(Addr(id)),
		TickInterval: c.Opts.Tick,
	})
	if err != nil {
		return err
	}
	kv := NewRecordingKV()
	g, err := n.StartGroup(raftcore.GroupConfig{
		Name: GroupName, SelfID: id, Peers: maps.Clone(c.peers), Join: o.Join, CatchUpBeforeVoting: o.CatchUpBeforeVoting,
		SnapshotEvery: c.Opts.SnapshotEvery, SessionEndGrace: c.Opts.SessionEndGrace,
	}, kv)
	if err != nil {
		n.Close()
		return err
	}
	c.members[id] = &Member{ID: id, Addr: Addr(id), Node: n, Group: g, KV: kv}
	return nil
}

// Stop closes member id's node (its WAL stays on disk).
func (c *Cluster) Stop(id uint64) {
	c.mu.Lock()
	m := c.members[id]
	delete(c.members, id)
	c.mu.Unlock()
	if m != nil {
		if err := m.Node.Close(); err != nil {
			c.T.Logf("close member %d: %v", id, err)
		}
	}
}

// Member returns a running member.
func (c *Cluster) Member(id uint64) *Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[id]
}

// Live lists running member ids.
func (c *Cluster) Live() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := slices.Collect(maps.Keys(c.members))
	slices.Sort(ids)
	return ids
}

// Targets returns the running members (or only ids, if given) as Targets.
func (c *Cluster) Targets(ids ...uint64) func() []Target {
	return func() []Target {
		c.mu.Lock()
		defer c.mu.Unlock()
		var out []Target
		for id, m := range c.members {
			if len(ids) == 0 || slices.Contains(ids, id) {
				out = append(out, m)
			}
		}
		return out
	}
}

// WaitLeader waits until the given running members (all, if none given)
// agree on one leader that is itself among them, and returns it.
func (c *Cluster) WaitLeader(ctx context.Context, ids ...uint64) (uint64, error) {
	for {
		if len(ids) == 0 {
			ids = c.Live()
		}
		var lead uint64
		agree := true
		for _, id := range ids {
			m := c.Member(id)
			if m == nil {
				agree = false
				break
			}
			st := m.Group.Status()
			if st.Leader == 0 || (lead != 0 && st.Leader != lead) {
				agree = false
				break
			}
			lead = st.Leader
		}
		if agree && slices.Contains(ids, lead) && c.Member(lead).Group.Status().State == "StateLeader" {
			return lead, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no agreed leader among %v: %w", ids, ctx.Err())
		case <-time.After(c.Opts.Tick):
		}
	}
}

// WaitConverged waits until every running member applied the same index
// with the same hash chain (the same applied sequence), after a final
// barrier write so the last index is known.
func (c *Cluster) WaitConverged(ctx context.Context) (uint64, error) {
	var target uint64
	for target == 0 {
		for _, t := range c.Targets()() {
			actx, cancel := context.WithTimeout(ctx, time.Second)
			res, err := t.Propose(actx, raftcore.Proposal{Data: Op{Kind: "get", Key: "barrier"}.Encode()})
			cancel()
			if err == nil {
				target = res.Index
				break
			}
		}
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("barrier write: %w", err)
		}
	}
	// With clients stopped, every member ends at the same index; then
	// their hash chains must be equal.
	for {
		idxs := map[uint64]bool{}
		chains := map[[32]byte]bool{}
		low := false
		for _, id := range c.Live() {
			idx, chain := c.Member(id).KV.Chain()
			idxs[idx], chains[chain] = true, true
			low = low || idx < target
		}
		if !low && len(idxs) == 1 {
			if len(chains) != 1 {
				return 0, fmt.Errorf("members applied different sequences up to index %d", target)
			}
			return target, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("members did not converge at index >= %d (indexes %v): %w", target, idxs, ctx.Err())
		case <-time.After(c.Opts.Tick):
		}
	}
}
