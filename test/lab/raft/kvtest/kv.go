// Package kvtest holds test helpers for raftcore: a deterministic key-value
// StateMachine, a porcupine model for it, concurrent clients that record a
// history, and an in-process cluster over memnet.
package kvtest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/smr-io/smr-cri/raftcore"
)

// Op is one KV request; it is the entry payload (JSON).
type Op struct {
	Kind  string `json:"k"` // "put", "append", "get"
	Key   string `json:"key"`
	Value string `json:"v,omitempty"`
}

// Encode returns the entry payload for op.
func (o Op) Encode() []byte {
	b, _ := json.Marshal(o)
	return b
}

// KV is a deterministic map[string]string StateMachine. It also keeps a
// hash chain over every applied (index, data) so tests can compare the
// exact applied sequence of different members.
type KV struct {
	mu      sync.Mutex
	data    map[string]string
	chain   [32]byte
	applied uint64
	count   uint64              // entries applied (including replays after restart)
	history map[uint64][32]byte // chain after each applied index
}

// NewKV returns an empty KV.
func NewKV() *KV { return &KV{data: map[string]string{}} }

// NewRecordingKV returns a KV that also remembers the hash chain at every
// applied index (for ChainAt; memory grows with the log).
func NewRecordingKV() *KV {
	kv := NewKV()
	kv.history = map[uint64][32]byte{}
	return kv
}

// ChainAt returns the hash chain right after index idx was applied here.
func (kv *KV) ChainAt(idx uint64) ([32]byte, bool) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	c, ok := kv.history[idx]
	return c, ok
}

// Apply implements raftcore.StateMachine.
func (kv *KV) Apply(e raftcore.Entry) ([]byte, error) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	h := sha256.New()
	h.Write(kv.chain[:])
	var ib [8]byte
	binary.BigEndian.PutUint64(ib[:], e.Index)
	h.Write(ib[:])
	h.Write(e.Data)
	copy(kv.chain[:], h.Sum(nil))
	kv.applied = e.Index
	if kv.history != nil {
		kv.history[e.Index] = kv.chain
	}
	kv.count++
	var op Op
	if err := json.Unmarshal(e.Data, &op); err != nil {
		return nil, fmt.Errorf("kv: bad op at %d: %w", e.Index, err)
	}
	switch op.Kind {
	case "put":
		kv.data[op.Key] = op.Value
		return nil, nil
	case "append":
		kv.data[op.Key] += op.Value
		return []byte(kv.data[op.Key]), nil
	case "get":
		return []byte(kv.data[op.Key]), nil
	default:
		return nil, fmt.Errorf("kv: unknown op %q", op.Kind)
	}
}

// Get reads locally (call after Group.ReadIndex for a linearizable read).
func (kv *KV) Get(key string) string {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return kv.data[key]
}

// Chain returns the last applied index and the hash chain up to it.
func (kv *KV) Chain() (uint64, [32]byte) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return kv.applied, kv.chain
}

type kvSnap struct {
	Data    map[string]string `json:"data"`
	Chain   [32]byte          `json:"chain"`
	Applied uint64            `json:"applied"`
}

// Snapshot implements raftcore.Snapshotter.
func (kv *KV) Snapshot() ([]byte, error) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return json.Marshal(kvSnap{Data: kv.data, Chain: kv.chain, Applied: kv.applied})
}

// Restore implements raftcore.Snapshotter.
func (kv *KV) Restore(b []byte) error {
	var s kvSnap
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("kv: restore: %w", err)
	}
	kv.mu.Lock()
	defer kv.mu.Unlock()
	kv.data, kv.chain, kv.applied = s.Data, s.Chain, s.Applied
	if kv.history != nil {
		kv.history[s.Applied] = s.Chain
	}
	if kv.data == nil {
		kv.data = map[string]string{}
	}
	return nil
}
