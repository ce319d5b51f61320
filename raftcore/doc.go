// Package raftcore is smr-cri's ordering layer: etcd raft
// (go.etcd.io/raft/v3 v3.7.0) with many groups in one process, a durable
// log (etcd's wal + snap packages), a pluggable transport, batching and
// pipelining, linearizable reads and (session, seq) de-duplication.
//
// # Shape
//
//	node, _ := raftcore.NewNode(raftcore.NodeConfig{DataDir: dir, Transport: tr})
//	g, _ := node.StartGroup(raftcore.GroupConfig{Name: "redis-a", SelfID: 1,
//	        Peers: map[uint64]string{1: "10.0.0.1:7000", 2: "10.0.0.2:7000", 3: "10.0.0.3:7000"}}, sm)
//	res, err := g.Propose(ctx, raftcore.Proposal{Session: s, Seq: n, Data: req})
//
// A Node can host many groups (the tests run several per Node); smr-cri runs
// one Node per member, each with its own transport in the member's pod
// (docs/architecture.md says why). Member ids are stable (e.g. StatefulSet
// ordinal + 1); addresses may change at run time (SetPeerAddr, or learned
// from the member's own authenticated stream: peeraddr.go) without a
// membership change. Transports: package raftcore/transport (gRPC: one
// server per process, messages carry the group name, one long-lived stream
// per peer address, bounded queues, reconnect with backoff) and
// test/lab/raft/memnet (in-memory, with partition, drop and delay controls
// for tests).
//
// # State machine contract
//
// StateMachine.Apply is called from the group's apply goroutine strictly in
// log order, one entry at a time, on every member; it must be
// deterministic. The state machine is not assumed durable: on start the
// group calls Snapshotter.Restore with the newest snapshot (if any) and
// then Apply for every committed entry after it, so a restarted member
// re-executes the same sequence before it serves new results. Apply's
// result (or error, as *ApplyError) goes back to the proposer on this
// member. Entries with the same non-zero (Session, Seq) are applied once;
// retries get the first result (the session table is replicated and is
// part of snapshots; it keeps the last result per session until the
// session ends: a proposal with EndSession ends its session, one with
// EndOriginSessions every session last proposed by its member, both in
// apply at the same log position everywhere; an ended session stays a
// tombstone refusing late copies of its proposals for
// GroupConfig.SessionEndGrace entries, then it is dropped; a session idle
// for GroupConfig.SessionRetention log entries is forgotten as a backstop).
// Status() counts open sessions and tombstones.
//
// # Errors
//
// Every call honours its context and returns typed errors (errors.Is):
// ErrNoLeader, ErrGroupFull, ErrTooLarge (definitely not proposed: safe to
// retry), ErrLeaderLost, ErrTimeout, ErrStopped (outcome unknown: retry with
// the same Session/Seq), ErrStaleSeq, ErrInvalidConfig, ErrGroupExists.
// When a member loses its leader (partitioned into a minority, leader
// crash), pending requests fail with ErrLeaderLost and new ones with
// ErrNoLeader after at most two election timeouts, well before a caller's
// deadline. A follower also fails (ErrLeaderLost) proposals it forwarded
// that stay unanswered for two election timeouts, and re-sends unanswered
// ReadIndex requests, so message loss costs a retry, not a deadline.
//
// # Ready loop
//
// One goroutine owns each raft.RawNode (Group.run). Per Ready, in order
// (see handleReady): leader sends its messages first (its own entries only
// count after Advance, i.e. after its fsync); snapshot file + WAL snapshot
// marker; HardState + entries to the WAL with fsync; mirror into
// MemoryStorage; followers send after the fsync; ReadStates resolve; conf
// changes applied to raft; committed entries handed to the apply goroutine;
// Advance. Proposals, inbound messages and reads waiting on channels are
// all drained before each Ready, so one fsync and one network write cover
// many proposals; the drained client proposals are coalesced into one raft
// entry (applied one by one, in order, sharing that entry's Index); MaxInflightMsgs pipelines appends; PreVote and
// CheckQuorum are on; concurrent ReadIndex calls share one raft read
// request, and reads arriving while one is in flight wait for its answer
// (at most a tick) and then share the next, so a heartbeat round serves many
// reads under load.
//
// # Membership
//
// AddMember(id, addr) then start the new member with Join=true. RemoveMember
// removes through ConfChange; the removed member idles (no seat, cannot
// campaign) until its owner stops it. A member whose disk state was lost
// must not come back with its old id as if nothing happened (raft would
// see a known member forget acknowledged entries): a live member calls
// ReplaceMember(id, addr) (remove, then add with an empty log) and the
// member starts with Join=true and catches up from the leader (log or
// snapshot).
//
// TransferLeadership hands leadership to another voter (use it before
// stopping the leader's pod); Node.DeleteGroup stops a group and removes
// its data for good.
//
// # Storage
//
// <DataDir>/<group>/wal (etcd WAL, 64 MiB segments) and /snap (etcd snap
// files). With SnapshotEvery > 0 (or SnapshotBytes) and a StateMachine
// implementing Snapshotter or StreamSnapshotter, every N applied entries the
// state is captured in the apply goroutine, persisted, and the in-memory log
// compacted (keeping 1024 entries for slow followers). A StreamSnapshotter's
// state goes to a state file (statefile.go) that moves to other members in
// chunks (SnapshotSender/SnapshotReceiver). After each snapshot the WAL
// segments it released are deleted (one kept), and .snap and state files
// beyond the newest two.
//
// # Limits
//
// Without a Snapshotter the whole log stays on disk and in memory
// (raft.MemoryStorage): implement Snapshotter to bound both. Each group has
// its own WAL, so N busy groups cost N fsync streams. The gRPC transport is
// plaintext (cluster-internal network). A proposal forwarded by a follower
// whose outcome is unknown is retried only by the caller (same
// Session/Seq). Apply results of coalesced requests share one Index.
//
// # Files
//
// One concern a file: api.go and config.go (the public types), node.go (the
// Node and its groups), group.go (a Group's state, start and stop),
// propose.go (admission, batching, resolving waiters), read.go (ReadIndex),
// ready.go (the raft goroutine and the Ready rules), messages.go (to and
// from peers), membership.go (conf changes, leadership transfer),
// peeraddr.go (where a member is reached: reported vs learned), apply.go
// and applyq.go (the apply goroutine, sessions), compact.go, storage.go and
// statefile.go (snapshots, the WAL, state files), envelope.go (entry
// encoding), metrics.go.
//
// # Tests
//
// go test ./raftcore/... ./test/lab/raft/... runs: porcupine-checked KV
// histories under concurrent clients in a steady 3-member group, leader
// crash + restart, leader isolated in a minority, 15% message loss + delay,
// and a 5-member 2/3 split with snapshots (memnet); typed fast failure on
// the minority side; restart from disk (same applied sequence, with and
// without snapshots); catch-up by snapshot and after a wiped disk;
// add/remove member; de-duplication; bad input; many groups per node; the
// gRPC transport (3 nodes on loopback, transport restart); and separate
// processes (test/lab/raft/raftnode: 3 and 5 members, SIGKILL of a minority
// including the leader, restart; the leader isolated by cutting its TCP
// links through per-link proxies; porcupine check with final reads on every
// member). hack/bench-raft.sh compares against a 3-member etcd.
package raftcore
