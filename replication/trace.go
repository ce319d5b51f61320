package replication

import (
	"fmt"
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
// the app round trip. Lines are formatted by hand (no reflection) into a
// bounded buffer that a background goroutine writes out every FlushInterval:
// the trace is on the apply path of every request, and a slow reader of the
// daemon's stdout must never stall a group. Beyond MaxPendingBytes lines are
// dropped and counted (a "smr=trace dropped=N" line says so). A nil *Tracer
// writes nothing.
type Tracer struct {
	w io.Writer

	mu      sync.Mutex
	pending []byte // formatted lines not yet written
	dropped uint64

	wmu   sync.Mutex // serializes writes to w
	spare []byte

	done      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
}

// Tracer buffering.
const (
	FlushInterval   = 50 * time.Millisecond
	MaxPendingBytes = 4 << 20
)

// NewTracer returns a tracer writing to w (the node daemon passes its stdout,
// so `kubectl logs` shows the ordering). Close it to flush the last lines.
func NewTracer(w io.Writer) *Tracer {
	t := &Tracer{w: w, done: make(chan struct{}), stopped: make(chan struct{})}
	go t.loop()
	return t
}

func (t *Tracer) loop() {
	defer close(t.stopped)
	tick := time.NewTicker(FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			t.Flush()
			return
		case <-tick.C:
			t.Flush()
		}
	}
}

// Flush writes the buffered lines now.
func (t *Tracer) Flush() {
	if t == nil {
		return
	}
	t.wmu.Lock()
	defer t.wmu.Unlock()
	t.mu.Lock()
	out, dropped := t.pending, t.dropped
	t.pending, t.dropped = t.spare[:0], 0
	t.mu.Unlock()
	if dropped > 0 {
		out = fmt.Appendf(out, "ts=%s smr=trace dropped=%d\n", time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), dropped)
	}
	if len(out) > 0 {
		_, _ = t.w.Write(out)
	}
	t.spare = out[:0]
}

// Close flushes and stops the background writer.
func (t *Tracer) Close() error {
	if t == nil {
		return nil
	}
	t.closeOnce.Do(func() { close(t.done) })
	<-t.stopped
	return nil
}

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
	var scratch [256]byte
	b := scratch[:0]
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
	t.mu.Lock()
	if len(t.pending)+len(b) > MaxPendingBytes {
		t.dropped++
	} else {
		t.pending = append(t.pending, b...)
	}
	t.mu.Unlock()
}

func appendMillis(b []byte, d time.Duration) []byte {
	b = strconv.AppendFloat(b, float64(d.Microseconds())/1000, 'f', 3, 64)
	return append(b, "ms"...)
}
