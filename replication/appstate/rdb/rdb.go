// Package rdb reads Redis RDB files (the format BGSAVE writes, versions 1
// to 11: Redis up to 7.2) into decoded keys, for smr-cri's audit: a replica
// digests the copy-on-write snapshot its Redis forked at the audit's log
// position instead of reading every key through the protocol while the
// group waits.
//
// It decodes every encoding of the core types (strings with integer and
// LZF encodings; lists as quicklists of ziplists or listpacks; sets as
// intsets, listpacks or tables; sorted sets as ziplists, listpacks or
// skiplists; hashes as zipmaps, ziplists, listpacks or tables; streams
// with consumer groups and pending entries), databases, expiries and
// function libraries, and checks the trailing CRC-64. Module types cannot
// be decoded without the module: they end the parse with ErrModule, as
// does anything this package does not know (ErrUnsupported). A damaged
// file gives ErrFormat, never a panic or an unbounded allocation.
package rdb

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// Errors.
var (
	ErrFormat      = errors.New("rdb: damaged or not an RDB file")
	ErrUnsupported = errors.New("rdb: unsupported RDB content")
	ErrModule      = errors.New("rdb: module data type (needs the module to decode)")
)

// Type names, as Redis' TYPE command says them.
const (
	TypeString = "string"
	TypeList   = "list"
	TypeSet    = "set"
	TypeZSet   = "zset"
	TypeHash   = "hash"
	TypeStream = "stream"
)

// Key is one decoded key. Only the field of its Type is set.
type Key struct {
	DB       int
	Key      []byte
	ExpireMs int64 // absolute Unix ms; 0: none
	Type     string

	String []byte
	List   [][]byte    // in order
	Set    [][]byte    // in the file's order
	Hash   [][2][]byte // field, value in the file's order
	ZSet   []ZMember   // in the file's order
	Stream *Stream
}

// ZMember is a sorted-set member.
type ZMember struct {
	Member []byte
	Score  float64
}

// StreamID is a stream entry ID.
type StreamID struct{ Ms, Seq uint64 }

func (id StreamID) String() string {
	return strconv.FormatUint(id.Ms, 10) + "-" + strconv.FormatUint(id.Seq, 10)
}

// Stream is a decoded stream.
type Stream struct {
	Entries      []StreamEntry // live entries in ID order
	Length       uint64
	LastID       StreamID
	FirstID      StreamID
	MaxDeletedID StreamID
	EntriesAdded uint64
	Groups       []StreamGroup // in the file's order (by name)
}

// StreamEntry is one stream entry: Fields holds field, value, field, ...
type StreamEntry struct {
	ID     StreamID
	Fields [][]byte
}

// StreamGroup is a consumer group.
type StreamGroup struct {
	Name        []byte
	LastID      StreamID
	EntriesRead int64 // -1: unknown (XINFO shows nil)
	Pending     []StreamPending
	Consumers   []StreamConsumer
}

// StreamPending is one entry of a group's pending entries list.
type StreamPending struct {
	ID            StreamID
	Consumer      []byte
	DeliveryMs    int64
	DeliveryCount uint64
}

// StreamConsumer is one consumer of a group.
type StreamConsumer struct {
	Name    []byte
	SeenMs  int64
	Pending int // entries of the group's PEL it owns
}

// Handler receives what Parse decodes. A non-nil error from it ends the
// parse with that error.
type Handler struct {
	Key      func(*Key) error
	Function func(code []byte) error // a function library's source
}

// RDB type and opcode bytes (Redis rdb.h).
const (
	typeString          = 0
	typeList            = 1
	typeSet             = 2
	typeZSet            = 3
	typeHash            = 4
	typeZSet2           = 5
	typeModule          = 6
	typeModule2         = 7
	typeHashZipmap      = 9
	typeListZiplist     = 10
	typeSetIntset       = 11
	typeZSetZiplist     = 12
	typeHashZiplist     = 13
	typeListQuicklist   = 14
	typeStreamListpacks = 15
	typeHashListpack    = 16
	typeZSetListpack    = 17
	typeListQuicklist2  = 18
	typeStreamListpack2 = 19
	typeSetListpack     = 20
	typeStreamListpack3 = 21

	opFunction2    = 245
	opFunction     = 246
	opModuleAux    = 247
	opIdle         = 248
	opFreq         = 249
	opAux          = 250
	opResizeDB     = 251
	opExpireTimeMs = 252
	opExpireTime   = 253
	opSelectDB     = 254
	opEOF          = 255
)

// maxVersion is the newest RDB version read (Redis 7.2 writes 11).
const maxVersion = 11

// maxAlloc bounds one string or element count read from the file, so a
// damaged length gives ErrFormat instead of an enormous allocation.
const maxAlloc = 1 << 30

// Parse reads a whole RDB file from r and hands each key and function
// library to h. It returns the file's version.
func Parse(r io.Reader, h Handler) (int, error) {
	p := &parser{r: bufio.NewReaderSize(r, 256<<10), h: h}
	return p.parse()
}

type parser struct {
	r       *bufio.Reader
	crc     uint64
	h       Handler
	version int
}

func (p *parser) parse() (int, error) {
	hdr, err := p.read(9)
	if err != nil {
		return 0, err
	}
	if string(hdr[:5]) != "REDIS" {
		return 0, fmt.Errorf("%w: no REDIS header", ErrFormat)
	}
	v, err := strconv.Atoi(string(hdr[5:]))
	if err != nil || v < 1 {
		return 0, fmt.Errorf("%w: bad version %q", ErrFormat, hdr[5:])
	}
	if v > maxVersion {
		return v, fmt.Errorf("%w: RDB version %d (newest known %d)", ErrUnsupported, v, maxVersion)
	}
	p.version = v
	db := 0
	var expire int64
	for {
		t, err := p.byte()
		if err != nil {
			return v, err
		}
		switch t {
		case opEOF:
			return v, p.checksum()
		case opSelectDB:
			n, err := p.length()
			if err != nil {
				return v, err
			}
			if n > math.MaxInt32 {
				return v, fmt.Errorf("%w: database %d", ErrFormat, n)
			}
			db = int(n)
		case opResizeDB:
			if _, err := p.length(); err != nil {
				return v, err
			}
			if _, err := p.length(); err != nil {
				return v, err
			}
		case opAux:
			if _, err := p.str(); err != nil {
				return v, err
			}
			if _, err := p.str(); err != nil {
				return v, err
			}
		case opExpireTimeMs:
			b, err := p.read(8)
			if err != nil {
				return v, err
			}
			expire = int64(binary.LittleEndian.Uint64(b))
		case opExpireTime:
			b, err := p.read(4)
			if err != nil {
				return v, err
			}
			expire = int64(int32(binary.LittleEndian.Uint32(b))) * 1000
		case opIdle:
			if _, err := p.length(); err != nil {
				return v, err
			}
		case opFreq:
			if _, err := p.byte(); err != nil {
				return v, err
			}
		case opFunction2:
			code, err := p.str()
			if err != nil {
				return v, err
			}
			if p.h.Function != nil {
				if err := p.h.Function(code); err != nil {
					return v, err
				}
			}
		case opFunction:
			return v, fmt.Errorf("%w: pre-release function format (opcode %d)", ErrUnsupported, t)
		case opModuleAux, typeModule, typeModule2:
			return v, ErrModule
		default:
			k := &Key{DB: db, ExpireMs: expire}
			expire = 0
			if k.Key, err = p.str(); err != nil {
				return v, err
			}
			if err := p.value(t, k); err != nil {
				return v, fmt.Errorf("key %q: %w", k.Key, err)
			}
			if p.h.Key != nil {
				if err := p.h.Key(k); err != nil {
					return v, err
				}
			}
		}
	}
}

// checksum reads the trailing CRC-64 (0: the saver had rdbchecksum off).
func (p *parser) checksum() error {
	if p.version < 5 {
		return nil
	}
	want := p.crc
	b := make([]byte, 8)
	if _, err := io.ReadFull(p.r, b); err != nil {
		return fmt.Errorf("%w: no checksum: %v", ErrFormat, err)
	}
	if got := binary.LittleEndian.Uint64(b); got != 0 && got != want {
		return fmt.Errorf("%w: checksum %016x, computed %016x", ErrFormat, got, want)
	}
	return nil
}

// read returns the next n bytes (a fresh slice) and adds them to the CRC.
func (p *parser) read(n uint64) ([]byte, error) {
	if n > maxAlloc {
		return nil, fmt.Errorf("%w: length %d", ErrFormat, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(p.r, b); err != nil {
		return nil, fmt.Errorf("%w: truncated: %v", ErrFormat, err)
	}
	p.crc = crc64Update(p.crc, b)
	return b, nil
}

func (p *parser) byte() (byte, error) {
	c, err := p.r.ReadByte()
	if err != nil {
		return 0, fmt.Errorf("%w: truncated: %v", ErrFormat, err)
	}
	p.crc = crcTable[byte(p.crc)^c] ^ p.crc>>8
	return c, nil
}

// lengthOrEnc reads a length; enc is true when the top bits say "encoded
// string" and n is then the encoding (0 int8, 1 int16, 2 int32, 3 LZF).
func (p *parser) lengthOrEnc() (n uint64, enc bool, err error) {
	c, err := p.byte()
	if err != nil {
		return 0, false, err
	}
	switch c >> 6 {
	case 0:
		return uint64(c & 0x3f), false, nil
	case 1:
		d, err := p.byte()
		return uint64(c&0x3f)<<8 | uint64(d), false, err
	case 3:
		return uint64(c & 0x3f), true, nil
	}
	switch c {
	case 0x80:
		b, err := p.read(4)
		if err != nil {
			return 0, false, err
		}
		return uint64(binary.BigEndian.Uint32(b)), false, nil
	case 0x81:
		b, err := p.read(8)
		if err != nil {
			return 0, false, err
		}
		return binary.BigEndian.Uint64(b), false, nil
	}
	return 0, false, fmt.Errorf("%w: length byte %#x", ErrFormat, c)
}

func (p *parser) length() (uint64, error) {
	n, enc, err := p.lengthOrEnc()
	if err == nil && enc {
		err = fmt.Errorf("%w: encoded string where a length belongs", ErrFormat)
	}
	return n, err
}

// count reads an element count, bounded so it cannot size an allocation
// larger than the file could back.
func (p *parser) count() (int, error) {
	n, err := p.length()
	if err != nil {
		return 0, err
	}
	if n > maxAlloc/16 {
		return 0, fmt.Errorf("%w: element count %d", ErrFormat, n)
	}
	return int(n), nil
}

// str reads a string object.
func (p *parser) str() ([]byte, error) {
	n, enc, err := p.lengthOrEnc()
	if err != nil {
		return nil, err
	}
	if !enc {
		return p.read(n)
	}
	switch n {
	case 0, 1, 2:
		b, err := p.read(1 << n)
		if err != nil {
			return nil, err
		}
		var v int64
		switch n {
		case 0:
			v = int64(int8(b[0]))
		case 1:
			v = int64(int16(binary.LittleEndian.Uint16(b)))
		case 2:
			v = int64(int32(binary.LittleEndian.Uint32(b)))
		}
		return strconv.AppendInt(nil, v, 10), nil
	case 3:
		clen, err := p.length()
		if err != nil {
			return nil, err
		}
		ulen, err := p.length()
		if err != nil {
			return nil, err
		}
		if ulen > maxAlloc {
			return nil, fmt.Errorf("%w: LZF length %d", ErrFormat, ulen)
		}
		c, err := p.read(clen)
		if err != nil {
			return nil, err
		}
		return lzfDecompress(c, int(ulen))
	}
	return nil, fmt.Errorf("%w: string encoding %d", ErrFormat, n)
}

// binaryDouble reads the 8-byte little-endian double of ZSET_2.
func (p *parser) binaryDouble() (float64, error) {
	b, err := p.read(8)
	if err != nil {
		return 0, err
	}
	return math.Float64frombits(binary.LittleEndian.Uint64(b)), nil
}

// stringDouble reads the length-prefixed text double of the old ZSET type.
func (p *parser) stringDouble() (float64, error) {
	n, err := p.byte()
	if err != nil {
		return 0, err
	}
	switch n {
	case 253:
		return math.NaN(), nil
	case 254:
		return math.Inf(1), nil
	case 255:
		return math.Inf(-1), nil
	}
	b, err := p.read(uint64(n))
	if err != nil {
		return 0, err
	}
	return parseScore(b)
}

func parseScore(b []byte) (float64, error) {
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		switch string(b) {
		case "inf", "+inf":
			return math.Inf(1), nil
		case "-inf":
			return math.Inf(-1), nil
		}
		return 0, fmt.Errorf("%w: score %q", ErrFormat, b)
	}
	return f, nil
}

func (p *parser) strings() ([][]byte, error) {
	n, err := p.count()
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, min(n, 1024))
	for range n {
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// value decodes the value of type t into k.
func (p *parser) value(t byte, k *Key) error {
	var err error
	switch t {
	case typeString:
		k.Type = TypeString
		k.String, err = p.str()
	case typeList:
		k.Type = TypeList
		k.List, err = p.strings()
	case typeListZiplist:
		k.Type = TypeList
		k.List, err = p.blob(ziplistEntries)
	case typeListQuicklist, typeListQuicklist2:
		k.Type = TypeList
		k.List, err = p.quicklist(t == typeListQuicklist2)
	case typeSet:
		k.Type = TypeSet
		k.Set, err = p.strings()
	case typeSetIntset:
		k.Type = TypeSet
		k.Set, err = p.blob(intsetEntries)
	case typeSetListpack:
		k.Type = TypeSet
		k.Set, err = p.blob(listpackEntries)
	case typeHash:
		k.Type = TypeHash
		var flat [][]byte
		if flat, err = p.pairs(); err == nil {
			k.Hash = pairUp(flat)
		}
	case typeHashZipmap, typeHashZiplist, typeHashListpack:
		k.Type = TypeHash
		dec := map[byte]func([]byte) ([][]byte, error){typeHashZipmap: zipmapEntries,
			typeHashZiplist: ziplistEntries, typeHashListpack: listpackEntries}[t]
		var flat [][]byte
		if flat, err = p.blob(dec); err == nil {
			if len(flat)%2 != 0 {
				return fmt.Errorf("%w: hash with an odd number of entries", ErrFormat)
			}
			k.Hash = pairUp(flat)
		}
	case typeZSet, typeZSet2:
		k.Type = TypeZSet
		k.ZSet, err = p.zset(t == typeZSet2)
	case typeZSetZiplist, typeZSetListpack:
		k.Type = TypeZSet
		dec := ziplistEntries
		if t == typeZSetListpack {
			dec = listpackEntries
		}
		var flat [][]byte
		if flat, err = p.blob(dec); err != nil {
			return err
		}
		if len(flat)%2 != 0 {
			return fmt.Errorf("%w: sorted set with an odd number of entries", ErrFormat)
		}
		for i := 0; i < len(flat); i += 2 {
			s, err := parseScore(flat[i+1])
			if err != nil {
				return err
			}
			k.ZSet = append(k.ZSet, ZMember{Member: flat[i], Score: s})
		}
	case typeStreamListpack2, typeStreamListpack3:
		k.Type = TypeStream
		k.Stream, err = p.stream(t)
	case typeStreamListpacks:
		return fmt.Errorf("%w: stream of RDB type %d (Redis < 7.0)", ErrUnsupported, t)
	default:
		return fmt.Errorf("%w: value type %d", ErrUnsupported, t)
	}
	return err
}

// pairs reads a table hash: a count of pairs, then field, value strings.
func (p *parser) pairs() ([][]byte, error) {
	n, err := p.count()
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, min(2*n, 2048))
	for range 2 * n {
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func pairUp(flat [][]byte) [][2][]byte {
	out := make([][2][]byte, len(flat)/2)
	for i := range out {
		out[i] = [2][]byte{flat[2*i], flat[2*i+1]}
	}
	return out
}

// blob reads a string holding a compact encoding and decodes it.
func (p *parser) blob(dec func([]byte) ([][]byte, error)) ([][]byte, error) {
	b, err := p.str()
	if err != nil {
		return nil, err
	}
	return dec(b)
}

func (p *parser) quicklist(v2 bool) ([][]byte, error) {
	n, err := p.count()
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for range n {
		container := uint64(2) // packed
		if v2 {
			if container, err = p.length(); err != nil {
				return nil, err
			}
		}
		b, err := p.str()
		if err != nil {
			return nil, err
		}
		switch {
		case container == 1: // PLAIN: one large element
			out = append(out, b)
		case container == 2 && v2:
			es, err := listpackEntries(b)
			if err != nil {
				return nil, err
			}
			out = append(out, es...)
		case container == 2:
			es, err := ziplistEntries(b)
			if err != nil {
				return nil, err
			}
			out = append(out, es...)
		default:
			return nil, fmt.Errorf("%w: quicklist container %d", ErrFormat, container)
		}
	}
	return out, nil
}

func (p *parser) zset(binaryScores bool) ([]ZMember, error) {
	n, err := p.count()
	if err != nil {
		return nil, err
	}
	out := make([]ZMember, 0, min(n, 1024))
	for range n {
		m, err := p.str()
		if err != nil {
			return nil, err
		}
		var s float64
		if binaryScores {
			s, err = p.binaryDouble()
		} else {
			s, err = p.stringDouble()
		}
		if err != nil {
			return nil, err
		}
		if math.IsNaN(s) {
			return nil, fmt.Errorf("%w: NaN score", ErrFormat)
		}
		out = append(out, ZMember{Member: m, Score: s})
	}
	return out, nil
}
