package replication

import (
	"bytes"
	"regexp"
	"strconv"
	"testing"
	"time"
)

func TestTracerLine(t *testing.T) {
	var buf bytes.Buffer
	tr := NewTracer(&buf)
	defer tr.Close()
	tr.Write(TraceLine{Kind: "commit", Group: "shop.redis", Index: 42, Term: 3, Session: 0x1a2b, Seq: 5,
		Op: `SET "x"`, Origin: 1, Latency: 1234 * time.Microsecond, Exec: 52 * time.Microsecond})
	want := regexp.MustCompile(`^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z smr=commit group=shop\.redis index=42 term=3 session=1a2b seq=5 op="SET \\"x\\"" origin=1 latency=1\.234ms exec=0\.052ms\n$`)
	tr.Flush()
	if !want.MatchString(buf.String()) {
		t.Fatalf("trace line %q", buf.String())
	}
	var nilTracer *Tracer
	nilTracer.Write(TraceLine{}) // a nil tracer is valid and silent
}

// A reader that does not keep up costs trace lines, never a blocked apply.
func TestTracerDropsWhenFull(t *testing.T) {
	var buf bytes.Buffer
	tr := NewTracer(&buf)
	line := TraceLine{Kind: "commit", Group: "g", Op: string(bytes.Repeat([]byte("x"), 100))}
	n := MaxPendingBytes/100 + 1000
	for range n {
		tr.Write(line) // the ticker may flush meanwhile; the counts below allow for it
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := bytes.Count([]byte(out), []byte("smr=commit"))
	m := regexp.MustCompile(`smr=trace dropped=(\d+)`).FindAllStringSubmatch(out, -1)
	dropped := 0
	for _, x := range m {
		d, _ := strconv.Atoi(x[1])
		dropped += d
	}
	if lines+dropped != n || lines == 0 {
		t.Fatalf("%d lines written + %d dropped, want %d in all", lines, dropped, n)
	}
}
