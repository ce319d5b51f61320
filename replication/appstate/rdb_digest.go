package appstate

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/smr-io/smr-cri/replication/appstate/rdb"
)

// DigestRDB computes, from an RDB file of a Redis, exactly the digest
// redisApp.Digest computes from commands on that Redis (same canonical
// per-key hashes, same combination): the value trees the commands would
// answer are built from the decoded file and hashed by the same code.
// Keys whose expiry is at or before expiredBy (Unix ms; the later of the
// audit's cut-off and the moment the file was forked: keys expired by then
// are gone for a client too) are left out. maxKeys > 0 bounds the keys.
func DigestRDB(r io.Reader, expiredBy int64, maxKeys int) (Digest, error) {
	var acc digestAcc
	n := 0
	version, err := rdb.Parse(r, rdb.Handler{
		Key: func(k *rdb.Key) error {
			if k.ExpireMs != 0 && k.ExpireMs <= expiredBy {
				return nil
			}
			if n++; maxKeys > 0 && n > maxKeys {
				return fmt.Errorf("%w: more than %d keys", ErrTooLarge, maxKeys)
			}
			v, sm := rdbValue(k)
			acc.add(k.DB, hashKey(k.Key, k.Type, k.ExpireMs, v, sm))
			return nil
		},
		Function: func(code []byte) error {
			lib, err := functionMeta(code)
			if err != nil {
				return err
			}
			acc.libs = append(acc.libs, lib)
			return nil
		},
	})
	if err != nil {
		return Digest{}, fmt.Errorf("digest RDB: %w", err)
	}
	acc.functions = version >= 10 // Redis 7.0: FUNCTION LIST answers (maybe nothing)
	return acc.digest(), nil
}

// functionMeta reads a library's name and engine from its first line,
// "#!<engine> name=<name> ...", as Redis does; FUNCTION LIST names the
// engine as registered ("LUA", the only one; engine names are matched
// without case).
func functionMeta(code []byte) (functionLib, error) {
	line, _, _ := bytes.Cut(code, []byte("\n"))
	rest, ok := bytes.CutPrefix(line, []byte("#!"))
	if !ok {
		return functionLib{}, fmt.Errorf("function library without a shebang line: %.40q", line)
	}
	parts := strings.Fields(string(rest))
	if len(parts) == 0 {
		return functionLib{}, fmt.Errorf("function library without an engine: %.40q", line)
	}
	lib := functionLib{engine: []byte(strings.ToUpper(parts[0])), code: code}
	for _, p := range parts[1:] {
		if name, ok := strings.CutPrefix(p, "name="); ok {
			lib.name = []byte(name)
		}
	}
	if lib.name == nil {
		return functionLib{}, fmt.Errorf("function library without a name: %.40q", line)
	}
	return lib, nil
}

func bulk(b []byte) value    { return value{kind: '$', str: b} }
func integer(n int64) value  { return value{kind: ':', num: n} }
func array(vs []value) value { return value{kind: '*', arr: vs} }

func bulks(bs [][]byte) value {
	vs := make([]value, len(bs))
	for i, b := range bs {
		vs[i] = bulk(b)
	}
	return array(vs)
}

// rdbValue builds the reply tree the command path reads for k (see
// hashKey), and a stream's metadata.
func rdbValue(k *rdb.Key) (value, *streamMeta) {
	switch k.Type {
	case rdb.TypeString:
		return bulk(k.String), nil
	case rdb.TypeList:
		return bulks(k.List), nil
	case rdb.TypeSet:
		return bulks(k.Set), nil
	case rdb.TypeHash:
		flat := make([][]byte, 0, 2*len(k.Hash))
		for _, p := range k.Hash {
			flat = append(flat, p[0], p[1])
		}
		return bulks(flat), nil
	case rdb.TypeZSet:
		ms := slices.Clone(k.ZSet)
		slices.SortFunc(ms, func(a, b rdb.ZMember) int { // rank order: score, then member
			return cmp.Or(cmp.Compare(a.Score, b.Score), bytes.Compare(a.Member, b.Member))
		})
		flat := make([][]byte, 0, 2*len(ms))
		for _, m := range ms {
			flat = append(flat, m.Member, strconv.AppendFloat(nil, m.Score, 'g', -1, 64))
		}
		return bulks(flat), nil
	case rdb.TypeStream:
		return streamValue(k.Stream)
	}
	return value{}, nil // not reached: rdb returns only the types above
}

func idValue(id rdb.StreamID) value { return bulk([]byte(id.String())) }

// streamValue builds XRANGE - + and the XINFO/XPENDING metadata.
func streamValue(s *rdb.Stream) (value, *streamMeta) {
	entries := make([]value, len(s.Entries))
	for i, e := range s.Entries {
		entries[i] = array([]value{idValue(e.ID), bulks(e.Fields)})
	}
	sm := &streamMeta{info: map[string]value{
		"length":               integer(int64(s.Length)),
		"last-generated-id":    idValue(s.LastID),
		"max-deleted-entry-id": idValue(s.MaxDeletedID),
		"entries-added":        integer(int64(s.EntriesAdded)),
	}}
	groups := slices.Clone(s.Groups)
	slices.SortFunc(groups, func(a, b rdb.StreamGroup) int { return bytes.Compare(a.Name, b.Name) })
	for _, g := range groups {
		read := value{kind: '$', null: true} // XINFO GROUPS: nil when unknown
		if g.EntriesRead >= 0 {
			read = integer(g.EntriesRead)
		}
		gm := streamGroupMeta{info: map[string]value{
			"name":              bulk(g.Name),
			"last-delivered-id": idValue(g.LastID),
			"entries-read":      read,
			"pending":           integer(int64(len(g.Pending))),
		}}
		cs := slices.Clone(g.Consumers)
		slices.SortFunc(cs, func(a, b rdb.StreamConsumer) int { return bytes.Compare(a.Name, b.Name) })
		for _, c := range cs {
			gm.consumers = append(gm.consumers, array([]value{bulk([]byte("name")), bulk(c.Name),
				bulk([]byte("pending")), integer(int64(c.Pending))}))
		}
		ps := slices.Clone(g.Pending)
		slices.SortFunc(ps, func(a, b rdb.StreamPending) int {
			return cmp.Or(cmp.Compare(a.ID.Ms, b.ID.Ms), cmp.Compare(a.ID.Seq, b.ID.Seq))
		})
		for _, p := range ps {
			gm.pending = append(gm.pending, array([]value{idValue(p.ID), bulk(p.Consumer), integer(0),
				integer(int64(p.DeliveryCount))}))
		}
		sm.groups = append(sm.groups, gm)
	}
	return array(entries), sm
}
