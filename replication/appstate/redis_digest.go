package appstate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"maps"
	"slices"
	"strconv"
)

// Digest hashes the app's state canonically: what a client can observe,
// never Redis' internal encoding (DUMP bytes differ between a listpack and a
// hash table holding the same fields, and hash-table order differs between
// processes). Per key it hashes the key, its type, its absolute expiry and
// a canonical value:
//
//	string       the bytes (a HyperLogLog: its 16384 registers, so sparse and
//	             dense encodings and a stale cardinality cache compare equal)
//	list         elements in order
//	hash, set    fields/members sorted
//	zset         (member, score) in rank order (score, then member)
//	stream       entries, length, last id, max deleted id, entries added;
//	             per consumer group: name, last delivered id, entries read,
//	             consumers with their pending counts, and the pending entries
//	             (id, consumer, delivery count), without idle times
//
// Keys of a database are combined by adding their SHA-256 sums (mod 2^256),
// so SCAN order does not matter and no key list is kept; databases and the
// function libraries (sorted by name: name, engine, code) are then hashed in
// order. Absolute expiries must be equal on every replica for digests to
// match, i.e. relative expiries must have been turned into absolute ones at
// the origin. Keys expiring by opt.ExpiringBy are left out (see
// DigestOptions). Unknown (module) types are hashed by their DUMP payload.
func (a *redisApp) Digest(ctx context.Context, opt DigestOptions) (Digest, error) {
	var d Digest
	rc, err := dialRESP(ctx, a.cfg)
	if err != nil {
		return d, err
	}
	defer rc.Close()
	dbs, total, err := keyspace(ctx, rc)
	if err != nil {
		return d, err
	}
	if opt.MaxKeys > 0 && total > opt.MaxKeys {
		return d, fmt.Errorf("%w: %d keys, the bound is %d", ErrTooLarge, total, opt.MaxKeys)
	}
	var cutoff int64 // Unix ms; keys expiring at or before it are left out
	if !opt.ExpiringBy.IsZero() {
		cutoff = opt.ExpiringBy.UnixMilli()
	}
	var acc digestAcc
	for _, db := range dbs {
		if _, err := rc.doOK(ctx, "SELECT", strconv.Itoa(db)); err != nil {
			return d, fmt.Errorf("digest database %d: %w", db, err)
		}
		err := scanKeys(ctx, rc, func(keys [][]byte) error {
			hs, err := digestKeys(ctx, rc, keys, cutoff)
			if err != nil {
				return err
			}
			for _, h := range hs {
				if h != nil {
					acc.add(db, h)
				}
			}
			return nil
		})
		if err != nil {
			return d, fmt.Errorf("digest database %d: %w", db, err)
		}
	}
	fns, err := rc.do(ctx, "FUNCTION", "LIST", "WITHCODE")
	switch {
	case err != nil:
		return d, fmt.Errorf("digest functions: %w", err)
	case isUnknownCommand(fns.err()):
	case fns.err() != nil:
		return d, fmt.Errorf("digest functions: %w", fns.err())
	default:
		acc.functions = true
		for _, l := range fns.arr {
			f := fieldMap(l)
			acc.libs = append(acc.libs, functionLib{f["library_name"].str, f["engine"].str, f["library_code"].str})
		}
	}
	return acc.digest(), nil
}

// digestAcc combines per-key hashes into a Digest: keys of a database by
// adding their sums, then databases in ascending order, then the function
// libraries sorted by name. Both digest paths (commands, RDB) use it.
type digestAcc struct {
	dbs       map[int]*dbAcc
	functions bool // the app has functions (Redis >= 7.0), even if none loaded
	libs      []functionLib
}

type dbAcc struct {
	sum  sum256
	keys int
}

type functionLib struct{ name, engine, code []byte }

func (a *digestAcc) add(db int, h []byte) {
	if a.dbs == nil {
		a.dbs = map[int]*dbAcc{}
	}
	d := a.dbs[db]
	if d == nil {
		d = &dbAcc{}
		a.dbs[db] = d
	}
	d.sum.add(h)
	d.keys++
}

func (a *digestAcc) digest() Digest {
	var d Digest
	top := sha256.New()
	top.Write([]byte("smr-appstate-digest/resp/1\n"))
	dbs := slices.Sorted(maps.Keys(a.dbs))
	for _, db := range dbs {
		acc := a.dbs[db]
		writeField(top, strconv.AppendInt(nil, int64(db), 10))
		writeField(top, strconv.AppendInt(nil, int64(acc.keys), 10))
		top.Write(acc.sum[:])
		d.Keys += acc.keys
	}
	if a.functions {
		libs := slices.Clone(a.libs)
		slices.SortFunc(libs, func(a, b functionLib) int { return bytes.Compare(a.name, b.name) })
		writeField(top, []byte("functions"))
		for _, l := range libs {
			writeField(top, l.name)
			writeField(top, l.engine)
			writeField(top, l.code)
		}
	}
	copy(d.Sum[:], top.Sum(nil))
	return d
}

// digestKeys returns each key's canonical hash (nil for a key that expired
// meanwhile, or expires at or before cutoff, Unix ms, when it is > 0): one
// pipelined round trip for TYPE and PEXPIRETIME, one for the values, and a
// few more per stream.
func digestKeys(ctx context.Context, rc *respConn, keys [][]byte, cutoff int64) ([][]byte, error) {
	for _, k := range keys {
		rc.send([]byte("TYPE"), k)
		rc.send([]byte("PEXPIRETIME"), k)
	}
	meta, err := rc.exec(ctx)
	if err != nil {
		return nil, err
	}
	types := make([]string, len(keys))
	for i, k := range keys {
		t, exp := meta[2*i], meta[2*i+1]
		if err := cmp2(t.err(), exp.err()); err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		types[i] = string(t.str)
		if exp.num == -2 || types[i] == "none" || (cutoff > 0 && exp.num >= 0 && exp.num <= cutoff) {
			types[i] = "none"
			continue
		}
		switch types[i] {
		case "string":
			rc.send([]byte("GET"), k)
		case "list":
			rc.send([]byte("LRANGE"), k, []byte("0"), []byte("-1"))
		case "hash":
			rc.send([]byte("HGETALL"), k)
		case "set":
			rc.send([]byte("SMEMBERS"), k)
		case "zset":
			rc.send([]byte("ZRANGE"), k, []byte("0"), []byte("-1"), []byte("WITHSCORES"))
		case "stream":
			rc.send([]byte("XRANGE"), k, []byte("-"), []byte("+"))
		default:
			rc.send([]byte("DUMP"), k)
		}
	}
	vals, err := rc.exec(ctx)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(keys))
	j := 0
	for i, k := range keys {
		if types[i] == "none" {
			continue
		}
		v := vals[j]
		j++
		if err := v.err(); err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		if v.null {
			continue // expired between the two round trips
		}
		var sm *streamMeta
		if types[i] == "stream" {
			if sm, err = fetchStreamMeta(ctx, rc, k); err != nil {
				return nil, fmt.Errorf("key %q: %w", k, err)
			}
		}
		out[i] = hashKey(k, types[i], max(meta[2*i+1].num, 0), v, sm)
	}
	return out, nil
}

// hashKey is one key's canonical hash. v is the value as the command path
// reads it (GET, LRANGE, HGETALL, SMEMBERS, ZRANGE WITHSCORES, XRANGE;
// DUMP for other types), sm a stream's metadata. The RDB path builds the
// same trees from the file, so both paths hash the same bytes.
func hashKey(k []byte, typ string, expireMs int64, v value, sm *streamMeta) []byte {
	h := sha256.New()
	writeField(h, k)
	writeField(h, []byte(typ))
	writeField(h, strconv.AppendInt(nil, expireMs, 10))
	switch typ {
	case "string":
		if regs, ok := hllRegisters(v.str); ok {
			writeField(h, []byte("hll"))
			writeField(h, regs)
		} else {
			writeField(h, v.str)
		}
	case "hash":
		pairs := make([][2][]byte, 0, len(v.arr)/2)
		for p := 0; p+1 < len(v.arr); p += 2 {
			pairs = append(pairs, [2][]byte{v.arr[p].str, v.arr[p+1].str})
		}
		slices.SortFunc(pairs, func(a, b [2][]byte) int { return bytes.Compare(a[0], b[0]) })
		for _, p := range pairs {
			writeField(h, p[0])
			writeField(h, p[1])
		}
	case "set":
		ms := make([][]byte, len(v.arr))
		for m := range v.arr {
			ms[m] = v.arr[m].str
		}
		slices.SortFunc(ms, bytes.Compare)
		for _, m := range ms {
			writeField(h, m)
		}
	case "zset":
		// Members in rank order; scores as numbers, not as this Redis
		// version prints them (7.0 "%.17g", 7.2 the shortest form).
		h.Write([]byte{'*'})
		writeField(h, strconv.AppendInt(nil, int64(len(v.arr)), 10))
		for p := 0; p+1 < len(v.arr); p += 2 {
			h.Write([]byte{'$'})
			writeField(h, v.arr[p].str)
			h.Write([]byte{'$'})
			writeField(h, canonicalScore(v.arr[p+1].str))
		}
	case "stream":
		writeValue(h, v)
		sm.hash(h)
	default: // list (in order already), module types
		writeValue(h, v)
	}
	return h.Sum(nil)
}

// canonicalScore formats a sorted-set score as its shortest exact decimal
// (text that is no number is kept as it is).
func canonicalScore(s []byte) []byte {
	f, err := strconv.ParseFloat(string(s), 64)
	if err != nil {
		return s
	}
	return strconv.AppendFloat(nil, f, 'g', -1, 64)
}

// streamMeta is what XRANGE does not show of a stream: its ids and
// counters (XINFO STREAM), and its consumer groups (XINFO GROUPS) with
// their consumers (XINFO CONSUMERS) and pending entries (XPENDING).
type streamMeta struct {
	info   map[string]value
	groups []streamGroupMeta
}

type streamGroupMeta struct {
	info      map[string]value
	consumers []value // XINFO CONSUMERS entries, sorted by name
	pending   []value // XPENDING entries [id, consumer, idle ms, deliveries]
}

func fetchStreamMeta(ctx context.Context, rc *respConn, key []byte) (*streamMeta, error) {
	rc.send([]byte("XINFO"), []byte("STREAM"), key)
	rc.send([]byte("XINFO"), []byte("GROUPS"), key)
	vs, err := rc.exec(ctx)
	if err != nil {
		return nil, err
	}
	if err := cmp2(vs[0].err(), vs[1].err()); err != nil {
		return nil, err
	}
	sm := &streamMeta{info: fieldMap(vs[0])}
	for _, g := range vs[1].arr {
		gm := streamGroupMeta{info: fieldMap(g)}
		name := gm.info["name"].str
		rc.send([]byte("XINFO"), []byte("CONSUMERS"), key, name)
		rc.send([]byte("XPENDING"), key, name, []byte("-"), []byte("+"), []byte("2147483647"))
		cs, err := rc.exec(ctx)
		if err != nil {
			return nil, err
		}
		if err := cmp2(cs[0].err(), cs[1].err()); err != nil {
			return nil, fmt.Errorf("group %q: %w", name, err)
		}
		for _, p := range cs[1].arr {
			if len(p.arr) != 4 {
				return nil, fmt.Errorf("%w: XPENDING entry", errBadReply)
			}
		}
		gm.consumers, gm.pending = cs[0].arr, cs[1].arr
		sm.groups = append(sm.groups, gm)
	}
	return sm, nil
}

// hash writes the metadata canonically: idle and delivery times are left
// out (they are clock readings, not state).
func (sm *streamMeta) hash(h hash.Hash) {
	for _, f := range []string{"length", "last-generated-id", "max-deleted-entry-id", "entries-added"} {
		writeField(h, []byte(f))
		writeValue(h, sm.info[f])
	}
	for _, g := range sm.groups { // sorted by name (Redis keeps them in a radix tree)
		for _, f := range []string{"name", "last-delivered-id", "entries-read", "pending"} {
			writeField(h, []byte(f))
			writeValue(h, g.info[f])
		}
		for _, c := range g.consumers { // sorted by name, like groups
			ci := fieldMap(c)
			writeField(h, ci["name"].str)
			writeValue(h, ci["pending"])
		}
		for _, p := range g.pending { // by id
			writeValue(h, p.arr[0])
			writeValue(h, p.arr[1])
			writeValue(h, p.arr[3])
		}
	}
}

// fieldMap reads a RESP2 flat map ([k1, v1, k2, v2, ...]).
func fieldMap(v value) map[string]value {
	m := make(map[string]value, len(v.arr)/2)
	for i := 0; i+1 < len(v.arr); i += 2 {
		m[string(v.arr[i].str)] = v.arr[i+1]
	}
	return m
}

// writeField writes a length-prefixed field, so field boundaries are
// unambiguous.
func writeField(h hash.Hash, b []byte) {
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
	h.Write(b)
}

// writeValue hashes a reply tree canonically.
func writeValue(h hash.Hash, v value) {
	switch {
	case v.null:
		h.Write([]byte{v.kind, 'n'})
	case v.kind == '*':
		h.Write([]byte{'*'})
		writeField(h, strconv.AppendInt(nil, int64(len(v.arr)), 10))
		for _, e := range v.arr {
			writeValue(h, e)
		}
	case v.kind == ':':
		h.Write([]byte{':'})
		writeField(h, strconv.AppendInt(nil, v.num, 10))
	default:
		h.Write([]byte{'$'}) // simple and bulk strings with the same text are the same
		writeField(h, v.str)
	}
}

// sum256 is a 256-bit accumulator: adding per-key hashes makes the result
// independent of the order keys are visited in.
type sum256 [32]byte

func (s *sum256) add(h []byte) {
	var carry uint16
	for i := 31; i >= 0; i-- {
		t := uint16(s[i]) + uint16(h[i]) + carry
		s[i], carry = byte(t), t>>8
	}
}

// HyperLogLog layout (Redis hyperloglog.c): "HYLL", encoding (0 dense,
// 1 sparse), 3 unused bytes, 8 bytes of cached cardinality, then 16384
// registers of 6 bits (dense) or run-length opcodes (sparse).
const (
	hllRegCount  = 16384
	hllHeader    = 16
	hllDenseSize = hllHeader + hllRegCount*6/8
)

// hllRegisters decodes a HyperLogLog string into one byte per register;
// ok=false when b is not a well-formed HyperLogLog (then it is hashed as
// plain bytes).
func hllRegisters(b []byte) ([]byte, bool) {
	if len(b) < hllHeader || string(b[:4]) != "HYLL" {
		return nil, false
	}
	regs := make([]byte, hllRegCount)
	switch b[4] {
	case 0:
		if len(b) != hllDenseSize {
			return nil, false
		}
		p := b[hllHeader:]
		for i := range hllRegCount {
			pos := i * 6
			byt, fb := pos/8, uint(pos&7)
			v := uint16(p[byt]) >> fb
			if byt+1 < len(p) {
				v |= uint16(p[byt+1]) << (8 - fb)
			}
			regs[i] = byte(v & 63)
		}
	case 1:
		idx := 0
		p := b[hllHeader:]
		for i := 0; i < len(p); i++ {
			op := p[i]
			var run int
			var val byte
			switch {
			case op&0xc0 == 0x00: // ZERO
				run = int(op&0x3f) + 1
			case op&0xc0 == 0x40: // XZERO
				if i+1 >= len(p) {
					return nil, false
				}
				run = (int(op&0x3f)<<8 | int(p[i+1])) + 1
				i++
			default: // VAL
				val, run = (op>>2)&0x1f+1, int(op&0x3)+1
			}
			if idx+run > hllRegCount {
				return nil, false
			}
			for r := range run {
				regs[idx+r] = val
			}
			idx += run
		}
		if idx != hllRegCount {
			return nil, false
		}
	default:
		return nil, false
	}
	return regs, true
}
