package raftcore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// envelope is what raftcore stores in every normal raft entry (and in the
// Context of every ConfChange): who proposed it, the proposer-local waiter id
// and the client's de-duplication key, then the opaque payload.
//
// Layout: version byte, uvarint origin, pid, session, seq, then payload.
// Version 3 adds a uvarint of flags after seq; it is only written when a
// flag is set, so ordinary entries keep the version 1 layout.
type envelope struct {
	Origin  uint64 // member id that proposed the entry
	PID     uint64 // proposal id, unique on the origin member
	Session uint64 // client session (0 = no de-duplication)
	Seq     uint64 // client sequence within the session
	Flags   uint64 // envEnd* bits
	Data    []byte
}

const (
	envelopeVersion      = 1
	envelopeFlagsVersion = 3 // 2 is the batch entry
)

// Envelope flags: what the applied entry ends in the session table.
const (
	envEndSession        = 1 << iota // drop this entry's session
	envEndOriginSessions             // drop every session last proposed by Origin
	envKnownFlags        = envEndSession | envEndOriginSessions
)

var errBadEnvelope = errors.New("raftcore: malformed entry envelope")

func (e envelope) marshal() []byte {
	b := make([]byte, 0, 1+5*binary.MaxVarintLen64+len(e.Data))
	if e.Flags == 0 {
		b = append(b, envelopeVersion)
	} else {
		b = append(b, envelopeFlagsVersion)
	}
	b = binary.AppendUvarint(b, e.Origin)
	b = binary.AppendUvarint(b, e.PID)
	b = binary.AppendUvarint(b, e.Session)
	b = binary.AppendUvarint(b, e.Seq)
	if e.Flags != 0 {
		b = binary.AppendUvarint(b, e.Flags)
	}
	return append(b, e.Data...)
}

func unmarshalEnvelope(b []byte) (envelope, error) {
	var e envelope
	if len(b) == 0 || (b[0] != envelopeVersion && b[0] != envelopeFlagsVersion) {
		return e, fmt.Errorf("%w: version", errBadEnvelope)
	}
	r := reader{b: b[1:]}
	e.Origin = r.uvarint()
	e.PID = r.uvarint()
	e.Session = r.uvarint()
	e.Seq = r.uvarint()
	if b[0] == envelopeFlagsVersion {
		e.Flags = r.uvarint()
		if r.err == nil && e.Flags&^envKnownFlags != 0 {
			return e, fmt.Errorf("%w: unknown flags %#x", errBadEnvelope, e.Flags)
		}
	}
	if r.err != nil {
		return e, r.err
	}
	e.Data = r.b
	return e, nil
}

// reader decodes uvarints and length-prefixed byte strings, remembering the
// first error so callers check once.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("%w: truncated varint", errBadEnvelope)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if uint64(len(r.b)) < n {
		r.err = fmt.Errorf("%w: truncated bytes", errBadEnvelope)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// A batch entry carries several envelopes proposed together:
// version byte 2, uvarint count, then (uvarint length, envelope) each.
const batchVersion = 2

func isBatch(b []byte) bool { return len(b) > 0 && b[0] == batchVersion }

func marshalBatch(envs [][]byte, size int) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64*(len(envs)+1)+size)
	b = append(b, batchVersion)
	b = binary.AppendUvarint(b, uint64(len(envs)))
	for _, e := range envs {
		b = appendBytes(b, e)
	}
	return b
}

func unmarshalBatch(b []byte) ([][]byte, error) {
	if !isBatch(b) {
		return nil, fmt.Errorf("%w: not a batch", errBadEnvelope)
	}
	r := reader{b: b[1:]}
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)) {
		return nil, fmt.Errorf("%w: batch count %d", errBadEnvelope, n)
	}
	out := make([][]byte, 0, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		out = append(out, r.bytes())
	}
	if r.err == nil && len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes in batch", errBadEnvelope, len(r.b))
	}
	return out, r.err
}

// sessionResult is the stored outcome of the last applied (session, seq).
type sessionResult struct {
	Origin  uint64 // member that proposed the session's last applied entry
	EndedAt uint64 // log index where the session ended (0 = open)
	Seq     uint64
	Index   uint64
	Term    uint64
	Value   []byte
	ErrMsg  string // non-empty when StateMachine.Apply returned an error
}

// snapshotState is what raftcore stores in a raft snapshot: the replicated
// session table and member addresses beside the state machine's own bytes.
type snapshotState struct {
	Sessions map[uint64]sessionResult
	Addrs    map[uint64]string
	SM       []byte
	// Ext, when set, says the state machine's part is not in SM but in the
	// group's state file for the snapshot's index (statefile.go): a
	// StreamSnapshotter's state, streamed to disk and between members in
	// chunks instead of living in the raft snapshot.
	Ext *stateRef
}

// stateRef identifies a state file: its size and SHA-256.
type stateRef struct {
	Size uint64
	Sum  [32]byte
}

// Snapshot versions: 2 adds each session's origin and end index (version 1
// is still read, with both 0); 3 adds the state file reference (a
// version-2 snapshot, written before state files existed, is still read:
// its state machine part is inline).
const (
	snapshotVersion   = 3
	snapshotVersionV2 = 2
	snapshotVersionV1 = 1
)

func (s snapshotState) marshal() []byte {
	b := []byte{snapshotVersion}
	if s.Ext != nil {
		b = append(b, 1)
		b = binary.AppendUvarint(b, s.Ext.Size)
		b = append(b, s.Ext.Sum[:]...)
	} else {
		b = append(b, 0)
	}
	ids := make([]uint64, 0, len(s.Sessions))
	for id := range s.Sessions {
		ids = append(ids, id)
	}
	// Sorted so every member writes byte-identical snapshots.
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		r := s.Sessions[id]
		b = binary.AppendUvarint(b, id)
		b = binary.AppendUvarint(b, r.Origin)
		b = binary.AppendUvarint(b, r.EndedAt)
		b = binary.AppendUvarint(b, r.Seq)
		b = binary.AppendUvarint(b, r.Index)
		b = binary.AppendUvarint(b, r.Term)
		b = appendBytes(b, r.Value)
		b = appendBytes(b, []byte(r.ErrMsg))
	}
	ids = ids[:0]
	for id := range s.Addrs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = binary.AppendUvarint(b, id)
		b = appendBytes(b, []byte(s.Addrs[id]))
	}
	return appendBytes(b, s.SM)
}

func unmarshalSnapshotState(b []byte) (snapshotState, error) {
	s := snapshotState{Sessions: map[uint64]sessionResult{}, Addrs: map[uint64]string{}}
	if len(b) == 0 {
		return s, nil // empty snapshot (e.g. a follower's initial state)
	}
	ver := b[0]
	if ver != snapshotVersion && ver != snapshotVersionV2 && ver != snapshotVersionV1 {
		return s, fmt.Errorf("%w: snapshot version %d", errBadEnvelope, ver)
	}
	r := reader{b: b[1:]}
	if ver == snapshotVersion {
		if len(r.b) == 0 {
			return s, fmt.Errorf("%w: snapshot state flag", errBadEnvelope)
		}
		ext := r.b[0]
		r.b = r.b[1:]
		switch ext {
		case 0:
		case 1:
			ref := &stateRef{Size: r.uvarint()}
			if len(r.b) < 32 {
				return s, fmt.Errorf("%w: snapshot state reference", errBadEnvelope)
			}
			copy(ref.Sum[:], r.b[:32])
			r.b = r.b[32:]
			s.Ext = ref
		default:
			return s, fmt.Errorf("%w: snapshot state flag %d", errBadEnvelope, ext)
		}
	}
	n := r.uvarint()
	for i := uint64(0); i < n && r.err == nil; i++ {
		id := r.uvarint()
		var sr sessionResult
		if ver >= snapshotVersionV2 {
			sr.Origin, sr.EndedAt = r.uvarint(), r.uvarint()
		}
		sr.Seq, sr.Index, sr.Term = r.uvarint(), r.uvarint(), r.uvarint()
		sr.Value = r.bytes()
		sr.ErrMsg = string(r.bytes())
		s.Sessions[id] = sr
	}
	n = r.uvarint()
	for i := uint64(0); i < n && r.err == nil; i++ {
		id := r.uvarint()
		s.Addrs[id] = string(r.bytes())
	}
	s.SM = r.bytes()
	return s, r.err
}
