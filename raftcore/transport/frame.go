package transport

import (
	"encoding/binary"
	"errors"
	"fmt"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// frame is one gRPC stream message: several batches, each the raft
// messages of one group. Wire layout (all lengths uvarint):
//
//	frame  := version(1) count batch*
//	batch  := len(group) group count (len(msg) msg)*   msg = raftpb.Message protobuf
type frame struct {
	batches []batch
}

type batch struct {
	group string
	to    uint64
	msgs  []*raftpb.Message
}

const frameVersion = 1

var errBadFrame = errors.New("transport: malformed frame")

func (f *frame) marshal() ([]byte, error) {
	b := []byte{frameVersion}
	b = binary.AppendUvarint(b, uint64(len(f.batches)))
	opts := proto.MarshalOptions{}
	for _, bt := range f.batches {
		b = binary.AppendUvarint(b, uint64(len(bt.group)))
		b = append(b, bt.group...)
		b = binary.AppendUvarint(b, uint64(len(bt.msgs)))
		for _, m := range bt.msgs {
			b = binary.AppendUvarint(b, uint64(opts.Size(m)))
			var err error
			if b, err = opts.MarshalAppend(b, m); err != nil {
				return nil, fmt.Errorf("transport: marshal raft message: %w", err)
			}
		}
	}
	return b, nil
}

func (f *frame) unmarshal(b []byte) error {
	if len(b) == 0 || b[0] != frameVersion {
		return fmt.Errorf("%w: version", errBadFrame)
	}
	b = b[1:]
	next := func() (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, fmt.Errorf("%w: truncated", errBadFrame)
		}
		b = b[n:]
		return v, nil
	}
	take := func(n uint64) ([]byte, error) {
		if uint64(len(b)) < n {
			return nil, fmt.Errorf("%w: truncated", errBadFrame)
		}
		v := b[:n]
		b = b[n:]
		return v, nil
	}
	nb, err := next()
	if err != nil {
		return err
	}
	f.batches = f.batches[:0]
	for i := uint64(0); i < nb; i++ {
		gl, err := next()
		if err != nil {
			return err
		}
		g, err := take(gl)
		if err != nil {
			return err
		}
		nm, err := next()
		if err != nil {
			return err
		}
		if nm > uint64(len(b)) { // each message takes at least one byte
			return fmt.Errorf("%w: message count %d", errBadFrame, nm)
		}
		bt := batch{group: string(g), msgs: make([]*raftpb.Message, 0, nm)}
		for j := uint64(0); j < nm; j++ {
			ml, err := next()
			if err != nil {
				return err
			}
			mb, err := take(ml)
			if err != nil {
				return err
			}
			m := &raftpb.Message{}
			if err := proto.Unmarshal(mb, m); err != nil {
				return fmt.Errorf("%w: raft message: %w", errBadFrame, err)
			}
			bt.msgs = append(bt.msgs, m)
		}
		f.batches = append(f.batches, bt)
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errBadFrame, len(b))
	}
	return nil
}

// codec lets gRPC carry frames without generated code.
type codec struct{}

func (codec) Name() string { return "smr-raft" }

func (codec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case *frame:
		return m.marshal()
	case *chunk:
		return m.data, nil
	}
	return nil, fmt.Errorf("transport: codec cannot marshal %T", v)
}

func (codec) Unmarshal(data []byte, v any) error {
	switch m := v.(type) {
	case *frame:
		return m.unmarshal(data)
	case *chunk:
		m.data = append(m.data[:0], data...)
		return nil
	}
	return fmt.Errorf("transport: codec cannot unmarshal into %T", v)
}

// chunk is one piece of a snapshot's state on the Snapshot stream.
type chunk struct{ data []byte }
