package replication

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/smr-io/smr-cri/replication/framing"
)

// Log entry format, version 1. Every entry starts with the version byte and
// the kind; the session and sequence travel in raftcore's Proposal/Entry
// fields, not in the payload.
//
//	OPEN     v=1 k=1 port:uint16(BE) protoLen:uint8 proto
//	REQUEST  v=1 k=2 opLen:uint8 op raw-request-bytes
//	CLOSE    v=1 k=3
//	RESET    v=1 k=4   (closes every session proposed by Entry.Origin; sent by a
//	                    replica when it starts, so sessions of its previous run end)
//	AUDIT    v=1 k=5 at:int64(BE, Unix ms, the leader's clock) window:uint32(BE, ms)
//	                 n:uint8 voter:uvarint*n   (audit.go: every replica digests its app here)
//	DIGEST   v=1 k=6 audit:uint64(BE) status:uint8 (0: sum[32] keys:uvarint; 1: reason)
//	                    (one replica's digest at that AUDIT, proposed by it: Entry.Origin)
//	END      v=1 k=7 session:uint64(BE) reasonLen:uint8 reason
//	                    (ends that session on every replica at this position: a
//	                    replica could not rebuild its connection state, see connstate)
//	AUTHOK   v=1 k=8   (proposed by the origin in the session right after an AUTH or
//	                    HELLO ... AUTH the app accepted: connstate may then rebuild
//	                    the session's authentication with smr-cri's own credential)
const entryVersion = 1

// Kind of a log entry.
type Kind uint8

// Entry kinds.
const (
	KindOpen Kind = iota + 1
	KindRequest
	KindClose
	KindReset
	KindAudit
	KindDigest
	KindEnd
	KindAuthOK
)

func (k Kind) String() string {
	switch k {
	case KindOpen:
		return "OPEN"
	case KindRequest:
		return "REQUEST"
	case KindClose:
		return "CLOSE"
	case KindReset:
		return "RESET"
	case KindAudit:
		return "AUDIT"
	case KindDigest:
		return "DIGEST"
	case KindEnd:
		return "END"
	case KindAuthOK:
		return "AUTHOK"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// ErrBadEntry is returned when a log entry cannot be decoded.
var ErrBadEntry = errors.New("bad replication log entry")

// Op is a decoded log entry payload.
type Op struct {
	Kind     Kind
	Port     int    // OPEN
	Protocol string // OPEN
	Name     string // REQUEST: framing.Request.Op
	Raw      []byte // REQUEST: the client's bytes
	Audit    *AuditOp
	Digest   *DigestReport
	End      *EndOp
}

// EndOp is an END entry: the session it ends (not the entry's own
// Session, which is 0: the proposer is not that session's origin) and why.
type EndOp struct {
	Session uint64
	Reason  string
}

// AuditOp is an AUDIT entry: the leader's clock when it proposed it (key
// expiry is judged against it, see audit.go), the window within which
// replicas must digest, and the voting members at that time.
type AuditOp struct {
	AtMillis     int64
	WindowMillis uint32
	Voters       []uint64
}

// DigestReport is a DIGEST entry: the digest of the proposer's app at the
// AUDIT at index Audit, or why it has none (Skipped, e.g. the app is too
// large or was not serving).
type DigestReport struct {
	Audit   uint64
	Sum     [32]byte
	Keys    int
	Skipped string
}

// maxVoters bounds an AUDIT's member list (a raft group of 255 members is
// far beyond any replicated pod).
const maxVoters = 255

// Encode renders the payload.
func (o Op) Encode() []byte {
	switch o.Kind {
	case KindOpen:
		b := make([]byte, 0, 5+len(o.Protocol))
		b = append(b, entryVersion, byte(KindOpen))
		b = binary.BigEndian.AppendUint16(b, uint16(o.Port))
		b = append(b, byte(len(o.Protocol)))
		return append(b, o.Protocol...)
	case KindRequest:
		name := o.Name
		if len(name) > 255 {
			name = name[:255]
		}
		b := make([]byte, 0, 3+len(name)+len(o.Raw))
		b = append(b, entryVersion, byte(KindRequest), byte(len(name)))
		b = append(b, name...)
		return append(b, o.Raw...)
	case KindAudit:
		a := o.Audit
		if a == nil {
			a = &AuditOp{}
		}
		voters := a.Voters[:min(len(a.Voters), maxVoters)]
		b := make([]byte, 0, 15+len(voters)*binary.MaxVarintLen64)
		b = append(b, entryVersion, byte(KindAudit))
		b = binary.BigEndian.AppendUint64(b, uint64(a.AtMillis))
		b = binary.BigEndian.AppendUint32(b, a.WindowMillis)
		b = append(b, byte(len(voters)))
		for _, v := range voters {
			b = binary.AppendUvarint(b, v)
		}
		return b
	case KindDigest:
		d := o.Digest
		if d == nil {
			d = &DigestReport{}
		}
		b := make([]byte, 0, 11+32+binary.MaxVarintLen64)
		b = append(b, entryVersion, byte(KindDigest))
		b = binary.BigEndian.AppendUint64(b, d.Audit)
		if d.Skipped != "" {
			reason := d.Skipped
			if len(reason) > 255 {
				reason = reason[:255]
			}
			b = append(b, 1, byte(len(reason)))
			return append(b, reason...)
		}
		b = append(b, 0)
		b = append(b, d.Sum[:]...)
		return binary.AppendUvarint(b, uint64(max(d.Keys, 0)))
	case KindEnd:
		end := o.End
		if end == nil {
			end = &EndOp{}
		}
		reason := end.Reason
		if len(reason) > 255 {
			reason = reason[:255]
		}
		b := make([]byte, 0, 11+len(reason))
		b = append(b, entryVersion, byte(KindEnd))
		b = binary.BigEndian.AppendUint64(b, end.Session)
		b = append(b, byte(len(reason)))
		return append(b, reason...)
	default:
		return []byte{entryVersion, byte(o.Kind)}
	}
}

// DecodeOp parses a payload produced by Encode.
func DecodeOp(b []byte) (Op, error) {
	if len(b) < 2 {
		return Op{}, fmt.Errorf("%w: %d bytes", ErrBadEntry, len(b))
	}
	if b[0] != entryVersion {
		return Op{}, fmt.Errorf("%w: version %d, this smr-cri understands %d", ErrBadEntry, b[0], entryVersion)
	}
	o := Op{Kind: Kind(b[1])}
	rest := b[2:]
	switch o.Kind {
	case KindOpen:
		if len(rest) < 3 || len(rest) != 3+int(rest[2]) {
			return Op{}, fmt.Errorf("%w: OPEN payload of %d bytes", ErrBadEntry, len(rest))
		}
		o.Port = int(binary.BigEndian.Uint16(rest))
		o.Protocol = string(rest[3:])
		if o.Protocol != framing.ProtoRESP && o.Protocol != framing.ProtoHTTP {
			return Op{}, fmt.Errorf("%w: OPEN protocol %q", ErrBadEntry, o.Protocol)
		}
	case KindRequest:
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return Op{}, fmt.Errorf("%w: REQUEST payload of %d bytes", ErrBadEntry, len(rest))
		}
		o.Name = string(rest[1 : 1+int(rest[0])])
		o.Raw = rest[1+int(rest[0]):]
		if len(o.Raw) == 0 {
			return Op{}, fmt.Errorf("%w: empty REQUEST", ErrBadEntry)
		}
	case KindClose, KindReset, KindAuthOK:
		if len(rest) != 0 {
			return Op{}, fmt.Errorf("%w: %s with %d trailing bytes", ErrBadEntry, o.Kind, len(rest))
		}
	case KindAudit:
		a, err := decodeAudit(rest)
		if err != nil {
			return Op{}, err
		}
		o.Audit = a
	case KindDigest:
		d, err := decodeDigest(rest)
		if err != nil {
			return Op{}, err
		}
		o.Digest = d
	case KindEnd:
		if len(rest) < 9 || len(rest) != 9+int(rest[8]) {
			return Op{}, fmt.Errorf("%w: END payload of %d bytes", ErrBadEntry, len(rest))
		}
		o.End = &EndOp{Session: binary.BigEndian.Uint64(rest), Reason: string(rest[9:])}
	default:
		return Op{}, fmt.Errorf("%w: unknown kind %d", ErrBadEntry, b[1])
	}
	return o, nil
}

func decodeAudit(rest []byte) (*AuditOp, error) {
	if len(rest) < 13 {
		return nil, fmt.Errorf("%w: AUDIT payload of %d bytes", ErrBadEntry, len(rest))
	}
	a := &AuditOp{AtMillis: int64(binary.BigEndian.Uint64(rest)), WindowMillis: binary.BigEndian.Uint32(rest[8:])}
	n := int(rest[12])
	rest = rest[13:]
	a.Voters = make([]uint64, 0, n)
	for range n {
		v, k := binary.Uvarint(rest)
		if k <= 0 || v == 0 {
			return nil, fmt.Errorf("%w: AUDIT voter list", ErrBadEntry)
		}
		a.Voters = append(a.Voters, v)
		rest = rest[k:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: AUDIT with %d trailing bytes", ErrBadEntry, len(rest))
	}
	return a, nil
}

func decodeDigest(rest []byte) (*DigestReport, error) {
	if len(rest) < 9 {
		return nil, fmt.Errorf("%w: DIGEST payload of %d bytes", ErrBadEntry, len(rest))
	}
	d := &DigestReport{Audit: binary.BigEndian.Uint64(rest)}
	status, rest := rest[8], rest[9:]
	switch status {
	case 0:
		if len(rest) < 33 {
			return nil, fmt.Errorf("%w: DIGEST sum of %d bytes", ErrBadEntry, len(rest))
		}
		copy(d.Sum[:], rest)
		keys, k := binary.Uvarint(rest[32:])
		if k <= 0 || len(rest) != 32+k || keys > 1<<62 {
			return nil, fmt.Errorf("%w: DIGEST key count", ErrBadEntry)
		}
		d.Keys = int(keys)
	case 1:
		if len(rest) < 1 || len(rest) != 1+int(rest[0]) || rest[0] == 0 {
			return nil, fmt.Errorf("%w: DIGEST reason", ErrBadEntry)
		}
		d.Skipped = string(rest[1:])
	default:
		return nil, fmt.Errorf("%w: DIGEST status %d", ErrBadEntry, status)
	}
	return d, nil
}
