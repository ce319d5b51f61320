package appstate

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// The state stream: a header, then records, then an end record that counts
// the records and carries a CRC-32C of every byte before it, so a truncated
// or damaged stream is refused before the app is changed past recovery.
//
//	stream := magic(8) version(1) len(protocol) protocol record* end
//	record := kind(1) uvarint(len(body)) body
//	end    := kindEnd uvarint(8+4) count(8, big endian) crc32c(4)
//
// Records are written as they are read from the app, so a state of any
// size streams through a fixed amount of memory (one key or chunk).
const (
	streamMagic   = "SMRSTATE"
	streamVersion = 1

	kindDB        = 'D' // body: uvarint database number; later keys belong to it
	kindKey       = 'K' // body: uvarint(len(key)) key, varint absolute expiry in unix ms (0 = none), DUMP payload
	kindFunctions = 'F' // body: FUNCTION DUMP payload
	kindBlob      = 'B' // body: a chunk of an HTTP app's state bytes
	kindEnd       = 'E'
)

// maxRecordBytes bounds one record: a longer length is garbage, not a
// reason to allocate.
const maxRecordBytes = 1 << 30

// ErrBadStream marks a state stream that is not one this package wrote
// whole: wrong magic or version, another protocol, truncated, damaged.
var ErrBadStream = errors.New("appstate: bad state stream")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// streamWriter writes records and counts them.
type streamWriter struct {
	w     *bufio.Writer
	crc   hash.Hash32
	count uint64
	bytes int64
	buf   []byte
}

func newStreamWriter(w io.Writer, protocol string) (*streamWriter, error) {
	sw := &streamWriter{w: bufio.NewWriterSize(w, 256<<10), crc: crc32.New(castagnoli)}
	h := append([]byte(streamMagic), streamVersion)
	h = binary.AppendUvarint(h, uint64(len(protocol)))
	h = append(h, protocol...)
	return sw, sw.raw(h)
}

func (sw *streamWriter) raw(b []byte) error {
	sw.crc.Write(b)
	sw.bytes += int64(len(b))
	if _, err := sw.w.Write(b); err != nil {
		return fmt.Errorf("write state stream: %w", err)
	}
	return nil
}

// record writes one record whose body is the concatenation of parts.
func (sw *streamWriter) record(kind byte, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > maxRecordBytes {
		return fmt.Errorf("appstate: record of %d bytes exceeds %d", n, maxRecordBytes)
	}
	sw.buf = binary.AppendUvarint(append(sw.buf[:0], kind), uint64(n))
	if err := sw.raw(sw.buf); err != nil {
		return err
	}
	for _, p := range parts {
		if err := sw.raw(p); err != nil {
			return err
		}
	}
	sw.count++
	return nil
}

// end writes the end record and flushes.
func (sw *streamWriter) end() error {
	b := binary.AppendUvarint([]byte{kindEnd}, 12)
	if err := sw.raw(b); err != nil {
		return err
	}
	tail := binary.BigEndian.AppendUint64(nil, sw.count)
	tail = binary.BigEndian.AppendUint32(tail, sw.crc.Sum32())
	sw.bytes += int64(len(tail))
	if _, err := sw.w.Write(tail); err != nil {
		return fmt.Errorf("write state stream: %w", err)
	}
	if err := sw.w.Flush(); err != nil {
		return fmt.Errorf("write state stream: %w", err)
	}
	return nil
}

// streamReader reads records, checking the end record.
type streamReader struct {
	r     *bufio.Reader
	crc   hash.Hash32
	count uint64
	bytes int64
	done  bool
}

func newStreamReader(r io.Reader, protocol string) (*streamReader, error) {
	sr := &streamReader{r: bufio.NewReaderSize(r, 256<<10), crc: crc32.New(castagnoli)}
	head := make([]byte, len(streamMagic)+1)
	if err := sr.full(head); err != nil {
		return nil, err
	}
	if string(head[:len(streamMagic)]) != streamMagic {
		return nil, fmt.Errorf("%w: not a state stream (magic %q)", ErrBadStream, head[:len(streamMagic)])
	}
	if head[len(streamMagic)] != streamVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads %d", ErrBadStream, head[len(streamMagic)], streamVersion)
	}
	n, err := sr.uvarint()
	if err != nil || n > 64 {
		return nil, fmt.Errorf("%w: protocol name", ErrBadStream)
	}
	p := make([]byte, n)
	if err := sr.full(p); err != nil {
		return nil, err
	}
	if string(p) != protocol {
		return nil, fmt.Errorf("%w: state of a %q app cannot be restored into a %q app", ErrBadStream, p, protocol)
	}
	return sr, nil
}

func (sr *streamReader) full(b []byte) error {
	if _, err := io.ReadFull(sr.r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: truncated", ErrBadStream)
		}
		return fmt.Errorf("read state stream: %w", err)
	}
	sr.crc.Write(b)
	sr.bytes += int64(len(b))
	return nil
}

func (sr *streamReader) uvarint() (uint64, error) {
	var b [binary.MaxVarintLen64]byte
	for i := range b {
		if err := sr.full(b[i : i+1]); err != nil {
			return 0, err
		}
		if b[i] < 0x80 {
			v, n := binary.Uvarint(b[:i+1])
			if n <= 0 {
				return 0, fmt.Errorf("%w: varint", ErrBadStream)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: varint too long", ErrBadStream)
}

// next returns the next record; io.EOF after a valid end record.
func (sr *streamReader) next() (kind byte, body []byte, err error) {
	if sr.done {
		return 0, nil, io.EOF
	}
	var k [1]byte
	if err := sr.full(k[:]); err != nil {
		return 0, nil, err
	}
	n, err := sr.uvarint()
	if err != nil {
		return 0, nil, err
	}
	if k[0] == kindEnd {
		want := sr.crc.Sum32()
		var tail [12]byte
		if n != 12 {
			return 0, nil, fmt.Errorf("%w: end record", ErrBadStream)
		}
		if _, err := io.ReadFull(sr.r, tail[:]); err != nil {
			return 0, nil, fmt.Errorf("%w: truncated end record", ErrBadStream)
		}
		sr.bytes += 12
		if c := binary.BigEndian.Uint64(tail[:8]); c != sr.count {
			return 0, nil, fmt.Errorf("%w: %d records read, end record says %d", ErrBadStream, sr.count, c)
		}
		if got := binary.BigEndian.Uint32(tail[8:]); got != want {
			return 0, nil, fmt.Errorf("%w: checksum mismatch", ErrBadStream)
		}
		sr.done = true
		return 0, nil, io.EOF
	}
	if n > maxRecordBytes {
		return 0, nil, fmt.Errorf("%w: record of %d bytes", ErrBadStream, n)
	}
	body = make([]byte, n)
	if err := sr.full(body); err != nil {
		return 0, nil, err
	}
	sr.count++
	return k[0], body, nil
}

// keyRecord encodes/decodes a kindKey body.
func keyRecord(key []byte, expireAtMs int64, payload []byte) [][]byte {
	h := binary.AppendUvarint(nil, uint64(len(key)))
	h = append(h, key...)
	h = binary.AppendVarint(h, expireAtMs)
	return [][]byte{h, payload}
}

func parseKeyRecord(b []byte) (key []byte, expireAtMs int64, payload []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, 0, nil, fmt.Errorf("%w: key record", ErrBadStream)
	}
	key, b = b[k:k+int(n)], b[k+int(n):]
	exp, k := binary.Varint(b)
	if k <= 0 || exp < 0 {
		return nil, 0, nil, fmt.Errorf("%w: key record expiry", ErrBadStream)
	}
	return key, exp, b[k:], nil
}
