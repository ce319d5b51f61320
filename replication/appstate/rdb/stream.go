package rdb

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// Stream listpack entry flags (Redis t_stream.c).
const (
	streamItemDeleted    = 1 << 0
	streamItemSameFields = 1 << 1
)

// stream decodes RDB_TYPE_STREAM_LISTPACKS_2 (Redis 7.0) and _3 (7.2).
func (p *parser) stream(t byte) (*Stream, error) {
	s := &Stream{}
	nodes, err := p.count()
	if err != nil {
		return nil, err
	}
	for range nodes {
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		if len(key) != 16 {
			return nil, fmt.Errorf("%w: stream node key of %d bytes", ErrFormat, len(key))
		}
		lp, err := p.str()
		if err != nil {
			return nil, err
		}
		es, err := listpackEntries(lp)
		if err != nil {
			return nil, err
		}
		if s.Entries, err = streamNode(s.Entries, rawID(key), es); err != nil {
			return nil, err
		}
	}
	ids := []*StreamID{&s.LastID, &s.FirstID, &s.MaxDeletedID}
	if s.Length, err = p.length(); err != nil {
		return nil, err
	}
	for _, id := range ids {
		if *id, err = p.id(); err != nil {
			return nil, err
		}
	}
	if s.EntriesAdded, err = p.length(); err != nil {
		return nil, err
	}
	groups, err := p.count()
	if err != nil {
		return nil, err
	}
	for range groups {
		g, err := p.group(t)
		if err != nil {
			return nil, err
		}
		s.Groups = append(s.Groups, g)
	}
	return s, nil
}

func (p *parser) id() (StreamID, error) {
	ms, err := p.length()
	if err != nil {
		return StreamID{}, err
	}
	seq, err := p.length()
	return StreamID{ms, seq}, err
}

func rawID(b []byte) StreamID {
	return StreamID{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
}

func (p *parser) millis() (int64, error) {
	b, err := p.read(8)
	if err != nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(b)), nil
}

func (p *parser) group(t byte) (StreamGroup, error) {
	var g StreamGroup
	var err error
	if g.Name, err = p.str(); err != nil {
		return g, err
	}
	if g.LastID, err = p.id(); err != nil {
		return g, err
	}
	read, err := p.length()
	if err != nil {
		return g, err
	}
	g.EntriesRead = int64(read) // SCG_INVALID_ENTRIES_READ (-1) is saved as 2^64-1
	n, err := p.count()
	if err != nil {
		return g, err
	}
	byID := make(map[StreamID]int, n)
	for range n {
		raw, err := p.read(16)
		if err != nil {
			return g, err
		}
		var pe StreamPending
		pe.ID = rawID(raw)
		if pe.DeliveryMs, err = p.millis(); err != nil {
			return g, err
		}
		if pe.DeliveryCount, err = p.length(); err != nil {
			return g, err
		}
		byID[pe.ID] = len(g.Pending)
		g.Pending = append(g.Pending, pe)
	}
	nc, err := p.count()
	if err != nil {
		return g, err
	}
	for range nc {
		var c StreamConsumer
		if c.Name, err = p.str(); err != nil {
			return g, err
		}
		if c.SeenMs, err = p.millis(); err != nil {
			return g, err
		}
		if t >= typeStreamListpack3 { // active time (7.2)
			if _, err = p.millis(); err != nil {
				return g, err
			}
		}
		np, err := p.count()
		if err != nil {
			return g, err
		}
		for range np {
			raw, err := p.read(16)
			if err != nil {
				return g, err
			}
			i, ok := byID[rawID(raw)]
			if !ok || g.Pending[i].Consumer != nil {
				return g, fmt.Errorf("%w: consumer %q owns pending entry %s that the group does not list once",
					ErrFormat, c.Name, rawID(raw))
			}
			g.Pending[i].Consumer = c.Name
			c.Pending++
		}
		g.Consumers = append(g.Consumers, c)
	}
	for _, pe := range g.Pending {
		if pe.Consumer == nil {
			return g, fmt.Errorf("%w: pending entry %s of group %q has no consumer", ErrFormat, pe.ID, g.Name)
		}
	}
	return g, nil
}

// streamNode appends the live entries of one stream listpack node (master
// ID base) to out. Layout: count, deleted, master field count, master
// fields, 0; then per entry: flags, ms delta, seq delta, [field count,
// field, value, ... | values of the master fields], listpack count.
func streamNode(out []StreamEntry, base StreamID, es [][]byte) ([]StreamEntry, error) {
	i := 0
	bad := func(what string) error { return fmt.Errorf("%w: stream node %s: %s", ErrFormat, base, what) }
	num := func() (int64, error) {
		if i >= len(es) {
			return 0, bad("truncated")
		}
		v, err := strconv.ParseInt(string(es[i]), 10, 64)
		i++
		if err != nil {
			return 0, bad("integer expected")
		}
		return v, nil
	}
	if _, err := num(); err != nil { // count
		return nil, err
	}
	if _, err := num(); err != nil { // deleted
		return nil, err
	}
	nf, err := num()
	if err != nil {
		return nil, err
	}
	if nf < 0 || int64(len(es)-i) < nf {
		return nil, bad("master fields")
	}
	master := es[i : i+int(nf)]
	i += int(nf)
	if z, err := num(); err != nil || z != 0 {
		return nil, bad("master entry terminator")
	}
	for i < len(es) {
		flags, err := num()
		if err != nil {
			return nil, err
		}
		dms, err := num()
		if err != nil {
			return nil, err
		}
		dseq, err := num()
		if err != nil {
			return nil, err
		}
		e := StreamEntry{ID: StreamID{base.Ms + uint64(dms), base.Seq + uint64(dseq)}}
		if flags&streamItemSameFields != 0 {
			if len(es)-i < len(master) {
				return nil, bad("values")
			}
			for j, f := range master {
				e.Fields = append(e.Fields, f, es[i+j])
			}
			i += len(master)
		} else {
			n, err := num()
			if err != nil {
				return nil, err
			}
			if n < 0 || int64(len(es)-i) < 2*n {
				return nil, bad("fields")
			}
			e.Fields = append(e.Fields, es[i:i+int(2*n)]...)
			i += int(2 * n)
		}
		if _, err := num(); err != nil { // listpack count of the entry
			return nil, err
		}
		if flags&streamItemDeleted == 0 {
			out = append(out, e)
		}
	}
	return out, nil
}
