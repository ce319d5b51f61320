package appstate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
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
	top := sha256.New()
	top.Write([]byte("smr-appstate-digest/resp/1\n"))
	for _, db := range dbs {
		if _, err := rc.doOK(ctx, "SELECT", strconv.Itoa(db)); err != nil {
			return d, fmt.Errorf("digest database %d: %w", db, err)
		}
		var sum sum256
		n := 0
		err := scanKeys(ctx, rc, func(keys [][]byte) error {
			hs, err := digestKeys(ctx, rc, keys, cutoff)
			if err != nil {
				return err
			}
			for _, h := range hs {
				if h != nil {
					sum.add(h)
					n++
				}
			}
			return nil
		})
		if err != nil {
			return d, fmt.Errorf("digest database %d: %w", db, err)
		}
		if n == 0 {
			continue // only expired keys: same as an empty database
		}
		writeField(top, strconv.AppendInt(nil, int64(db), 10))
		writeField(top, strconv.AppendInt(nil, int64(n), 10))
		top.Write(sum[:])
		d.Keys += n
	}
	fns, err := rc.do(ctx, "FUNCTION", "LIST", "WITHCODE")
	switch {
	case err != nil:
		return d, fmt.Errorf("digest functions: %w", err)
	case isUnknownCommand(fns.err()):
	case fns.err() != nil:
		return d, fmt.Errorf("digest functions: %w", fns.err())
	default:
		type lib struct{ name, engine, code []byte }
		var libs []lib
		for _, l := range fns.arr {
			f := fieldMap(l)
			libs = append(libs, lib{f["library_name"].str, f["engine"].str, f["library_code"].str})
		}
		slices.SortFunc(libs, func(a, b lib) int { return bytes.Compare(a.name, b.name) })
		writeField(top, []byte("functions"))
		for _, l := range libs {
			writeField(top, l.name)
			writeField(top, l.engine)
			writeField(top, l.code)
		}
	}
	copy(d.Sum[:], top.Sum(nil))
	return d, nil
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
		h := sha256.New()
		writeField(h, k)
		writeField(h, []byte(types[i]))
		writeField(h, strconv.AppendInt(nil, max(meta[2*i+1].num, 0), 10))
		switch types[i] {
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
		case "stream":
			writeValue(h, v)
			if err := digestStreamMeta(ctx, rc, k, h); err != nil {
				return nil, fmt.Errorf("key %q: %w", k, err)
			}
		default: // list, zset (canonical order already), module types
			writeValue(h, v)
		}
		out[i] = h.Sum(nil)
	}
	return out, nil
}

// digestStreamMeta hashes what XRANGE does not show: the stream's ids and
// counters, and its consumer groups with their pending entries.
func digestStreamMeta(ctx context.Context, rc *respConn, key []byte, h hash.Hash) error {
	rc.send([]byte("XINFO"), []byte("STREAM"), key)
	rc.send([]byte("XINFO"), []byte("GROUPS"), key)
	vs, err := rc.exec(ctx)
	if err != nil {
		return err
	}
	if err := cmp2(vs[0].err(), vs[1].err()); err != nil {
		return err
	}
	info := fieldMap(vs[0])
	for _, f := range []string{"length", "last-generated-id", "max-deleted-entry-id", "entries-added"} {
		writeField(h, []byte(f))
		writeValue(h, info[f])
	}
	for _, g := range vs[1].arr {
		gi := fieldMap(g)
		name := gi["name"].str
		for _, f := range []string{"name", "last-delivered-id", "entries-read", "pending"} {
			writeField(h, []byte(f))
			writeValue(h, gi[f])
		}
		rc.send([]byte("XINFO"), []byte("CONSUMERS"), key, name)
		rc.send([]byte("XPENDING"), key, name, []byte("-"), []byte("+"), []byte("2147483647"))
		cs, err := rc.exec(ctx)
		if err != nil {
			return err
		}
		if err := cmp2(cs[0].err(), cs[1].err()); err != nil {
			return fmt.Errorf("group %q: %w", name, err)
		}
		for _, c := range cs[0].arr { // sorted by name (Redis keeps them in a radix tree)
			ci := fieldMap(c)
			writeField(h, ci["name"].str)
			writeValue(h, ci["pending"])
		}
		for _, p := range cs[1].arr { // [id, consumer, idle ms, deliveries]: idle is time, left out
			if len(p.arr) != 4 {
				return fmt.Errorf("%w: XPENDING entry", errBadReply)
			}
			writeValue(h, p.arr[0])
			writeValue(h, p.arr[1])
			writeValue(h, p.arr[3])
		}
	}
	return nil
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
