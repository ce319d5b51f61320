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
const entryVersion = 1

// Kind of a log entry.
type Kind uint8

// Entry kinds.
const (
	KindOpen Kind = iota + 1
	KindRequest
	KindClose
	KindReset
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
}

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
	case KindClose, KindReset:
		if len(rest) != 0 {
			return Op{}, fmt.Errorf("%w: %s with %d trailing bytes", ErrBadEntry, o.Kind, len(rest))
		}
	default:
		return Op{}, fmt.Errorf("%w: unknown kind %d", ErrBadEntry, b[1])
	}
	return o, nil
}
