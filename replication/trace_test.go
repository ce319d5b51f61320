package replication

import (
	"bytes"
	"regexp"
	"testing"
	"time"
)

func TestTracerLine(t *testing.T) {
	var buf bytes.Buffer
	tr := NewTracer(&buf)
	tr.Write(TraceLine{Kind: "commit", Group: "shop.redis", Index: 42, Term: 3, Session: 0x1a2b, Seq: 5,
		Op: `SET "x"`, Origin: 1, Latency: 1234 * time.Microsecond, Exec: 52 * time.Microsecond})
	want := regexp.MustCompile(`^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z smr=commit group=shop\.redis index=42 term=3 session=1a2b seq=5 op="SET \\"x\\"" origin=1 latency=1\.234ms exec=0\.052ms\n$`)
	if !want.MatchString(buf.String()) {
		t.Fatalf("trace line %q", buf.String())
	}
	var nilTracer *Tracer
	nilTracer.Write(TraceLine{}) // a nil tracer is valid and silent
}
