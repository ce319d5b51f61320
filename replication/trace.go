package replication

import (
	"io"
	"strconv"
	"sync"
	"time"
)

// Tracer writes the ordering trace: one logfmt line per committed entry and
// per local read, e.g.
//
//	ts=2026-11-25T12:00:00.123Z smr=commit group=shop.redis index=42 term=3 session=1a2b seq=5 op="SET" origin=1 latency=1.234ms exec=0.052ms
//
// latency is propose-to-applied on the replica that took the client's
// connection (origin) and the app round trip on the others; exec is always
// the app round trip. Lines are formatted by hand (no reflection): the trace
// is on the path of every request. A nil *Tracer writes nothing.
type Tracer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewTracer returns a tracer writing to w (the node daemon passes its stdout,
// so `kubectl logs` shows the ordering).
func NewTracer(w io.Writer) *Tracer { return &Tracer{w: w} }

// TraceLine is one trace record.
type TraceLine struct {
	Kind                      string // "commit" or "read"
	Group                     string
	Index, Term, Session, Seq uint64
	Op                        string
	Origin                    uint64
	Latency, Exec             time.Duration
}

// Write emits one line.
func (t *Tracer) Write(l TraceLine) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf[:0]
	b = append(b, "ts="...)
	b = time.Now().UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, " smr="...)
	b = append(b, l.Kind...)
	b = append(b, " group="...)
	b = append(b, l.Group...)
	b = append(b, " index="...)
	b = strconv.AppendUint(b, l.Index, 10)
	if l.Term != 0 {
		b = append(b, " term="...)
		b = strconv.AppendUint(b, l.Term, 10)
	}
	b = append(b, " session="...)
	b = strconv.AppendUint(b, l.Session, 16)
	if l.Seq != 0 {
		b = append(b, " seq="...)
		b = strconv.AppendUint(b, l.Seq, 10)
	}
	b = append(b, " op="...)
	b = strconv.AppendQuote(b, l.Op)
	b = append(b, " origin="...)
	b = strconv.AppendUint(b, l.Origin, 10)
	b = append(b, " latency="...)
	b = appendMillis(b, l.Latency)
	b = append(b, " exec="...)
	b = appendMillis(b, l.Exec)
	b = append(b, '\n')
	t.buf = b
	_, _ = t.w.Write(b)
}

func appendMillis(b []byte, d time.Duration) []byte {
	b = strconv.AppendFloat(b, float64(d.Microseconds())/1000, 'f', 3, 64)
	return append(b, "ms"...)
}
