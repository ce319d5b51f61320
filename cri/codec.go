package cri

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// frame is one serialized gRPC message carried through the proxy without
// being decoded. It holds a reference on the received buffers until it is
// marshalled again (ownership passes to gRPC) or freed.
type frame struct {
	data mem.BufferSlice
}

// free releases the buffers of a frame that will not be sent.
func (f *frame) free() {
	if f.data != nil {
		f.data.Free()
		f.data = nil
	}
}

// rawCodec passes *frame values through as raw bytes and falls back to the
// protobuf codec for every other message, so the typed (hooked) handlers keep
// working on a server that forces this codec. Its name is "proto" so that the
// content-type on the wire stays application/grpc+proto.
type rawCodec struct {
	proto encoding.CodecV2
}

var _ encoding.CodecV2 = rawCodec{}

func newRawCodec() rawCodec {
	c := encoding.GetCodecV2(protoenc.Name)
	if c == nil {
		// Importing encoding/proto registers it; reaching this is a build bug.
		panic("smr-cri: grpc proto codec is not registered")
	}
	return rawCodec{proto: c}
}

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*frame); ok {
		// gRPC frees the returned slice after writing it; hand over our reference.
		data := f.data
		f.data = nil
		if data == nil {
			return mem.BufferSlice{}, nil
		}
		return data, nil
	}
	return c.proto.Marshal(v)
}

func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*frame); ok {
		if f.data != nil {
			return fmt.Errorf("smr-cri: raw frame reused before it was sent")
		}
		// gRPC frees data when Unmarshal returns: keep our own reference.
		data.Ref()
		f.data = data
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (c rawCodec) Name() string { return protoenc.Name }
