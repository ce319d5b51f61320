package connstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// Encoding of a Tracker (inside the executor's app snapshot), version 1:
//
//	tracker := v=1 uvarint(n) session*n uvarint(m) ended*m
//	session := uvarint(id) uvarint(origin) uvarint(port) str(protocol)
//	           flags:uint8 str(lost) entries uvarint(q) str(queued)*q entries(pending)
//	entries := uvarint(k) entry*k
//	entry   := str(op) str(raw) sets:uint8 sure:uint8
//	ended   := uvarint(id) uvarint(index) uvarint(origin) str(reason)
//	str     := uvarint(len) bytes
//
// It holds no password: of an AUTH only the user name is recorded.
const encVersion = 1

// Session flags.
const (
	flagMulti = 1 << iota
	flagWatching
	flagQuit
	flagAuthed
	flagsKnown = flagMulti | flagWatching | flagQuit | flagAuthed
)

// ErrBadEncoding reports a tracker encoding that cannot be decoded.
var ErrBadEncoding = errors.New("connstate: bad encoding")

// MarshalBinary encodes the tracker (sessions in ascending ID order, so
// equal trackers encode equally).
func (t *Tracker) MarshalBinary() ([]byte, error) {
	b := []byte{encVersion}
	b = binary.AppendUvarint(b, uint64(len(t.sessions)))
	for _, id := range t.IDs() {
		s := t.sessions[id]
		b = binary.AppendUvarint(b, id)
		b = binary.AppendUvarint(b, s.Origin)
		b = binary.AppendUvarint(b, uint64(s.Port))
		b = appendStr(b, []byte(s.Protocol))
		var f byte
		for _, x := range []struct {
			on  bool
			bit byte
		}{{s.multi, flagMulti}, {s.watching, flagWatching}, {s.quit, flagQuit}, {s.authed, flagAuthed}} {
			if x.on {
				f |= x.bit
			}
		}
		b = append(b, f)
		b = appendStr(b, []byte(s.lost))
		b = appendEntries(b, s.entries)
		b = binary.AppendUvarint(b, uint64(len(s.queue)))
		for _, raw := range s.queue {
			b = appendStr(b, raw)
		}
		b = appendEntries(b, s.pending)
	}
	ids := make([]uint64, 0, len(t.ended))
	for id := range t.ended {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		e := t.ended[id]
		b = binary.AppendUvarint(b, id)
		b = binary.AppendUvarint(b, e.Index)
		b = binary.AppendUvarint(b, e.Origin)
		b = appendStr(b, []byte(e.Reason))
	}
	return b, nil
}

// Unmarshal decodes a tracker written by MarshalBinary. Damaged or
// truncated input is refused with ErrBadEncoding, never a panic.
func Unmarshal(b []byte) (*Tracker, error) {
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != encVersion {
		return nil, fmt.Errorf("%w: version %d, this smr-cri reads %d", ErrBadEncoding, v, encVersion)
	}
	t := New()
	n := d.count()
	for i := uint64(0); i < n && d.err == nil; i++ {
		id := d.uvarint()
		s := &Session{Origin: d.uvarint()}
		port := d.uvarint()
		s.Protocol = string(d.str())
		f := d.byte()
		s.lost = string(d.str())
		if d.err == nil && (port > 65535 || f&^flagsKnown != 0 || (s.Protocol != ProtoRESP && s.Protocol != ProtoHTTP)) {
			d.fail("session record")
		}
		s.Port = int(port)
		s.multi, s.watching, s.quit, s.authed = f&flagMulti != 0, f&flagWatching != 0, f&flagQuit != 0, f&flagAuthed != 0
		s.entries = d.entries()
		q := d.count()
		for j := uint64(0); j < q && d.err == nil; j++ {
			raw := d.str()
			s.queue = append(s.queue, raw)
			s.queueLen += len(raw)
		}
		s.pending = d.entries()
		if _, dup := t.sessions[id]; dup && d.err == nil {
			d.fail("session listed twice")
		}
		t.sessions[id] = s
	}
	m := d.count()
	for i := uint64(0); i < m && d.err == nil; i++ {
		id := d.uvarint()
		t.ended[id] = Ended{Index: d.uvarint(), Origin: d.uvarint(), Reason: string(d.str())}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	if d.err != nil {
		return nil, d.err
	}
	return t, nil
}

func appendEntries(b []byte, es []entry) []byte {
	b = binary.AppendUvarint(b, uint64(len(es)))
	for _, e := range es {
		b = appendStr(b, []byte(e.op))
		b = appendStr(b, e.raw)
		sure := byte(0)
		if e.sure {
			sure = 1
		}
		b = append(b, byte(e.sets), sure)
	}
	return b
}

func (d *decoder) entries() []entry {
	var es []entry
	k := d.count()
	for j := uint64(0); j < k && d.err == nil; j++ {
		e := entry{op: string(d.str()), raw: d.str()}
		e.sets, e.sure = attr(d.byte()), d.byte() == 1
		es = append(es, e)
	}
	return es
}

func appendStr(b, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads the encoding; the first failure sticks and later reads
// return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadEncoding, what)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("truncated number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a number of records; each takes at least one byte, so a
// count above what is left is damage (and cannot make us allocate).
func (d *decoder) count() uint64 {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.fail("count beyond the data")
		return 0
	}
	return n
}

func (d *decoder) str() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("string beyond the data")
		return nil
	}
	s := d.b[:n:n]
	d.b = d.b[n:]
	return s
}
