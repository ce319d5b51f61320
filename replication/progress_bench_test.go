package replication

import (
	"log/slog"
	"testing"

	"github.com/smr-io/smr-cri/raftcore"
)

type nopSM struct{}

func (nopSM) Apply(raftcore.Entry) ([]byte, error) { return nil, nil }

// BenchmarkProgressRecord measures what the applied-position record adds to
// every applied entry (one pwrite of 32 bytes), against applying to a no-op
// state machine directly, in the same run. A real app round trip (tens of
// microseconds for Redis) dwarfs both.
func BenchmarkProgressRecord(b *testing.B) {
	data := Op{Kind: KindRequest, Name: "INCR", Raw: []byte("*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n")}.Encode()
	run := func(b *testing.B, sm raftcore.StateMachine) float64 {
		b.Helper()
		for i := 0; b.Loop(); i++ {
			if _, err := sm.Apply(raftcore.Entry{Group: "ns.g", Index: uint64(i + 1), Data: data}); err != nil {
				b.Fatal(err)
			}
		}
		return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	}
	var base float64
	b.Run("direct", func(b *testing.B) { base = run(b, nopSM{}) })
	b.Run("recorded", func(b *testing.B) {
		prog, err := OpenProgress(b.TempDir(), "sb1")
		if err != nil {
			b.Fatal(err)
		}
		defer prog.Close()
		ns := run(b, newResumingSM(nopSM{}, prog, "ns.g", slog.New(slog.DiscardHandler)))
		b.ReportMetric(ns-base, "added-ns/apply")
	})
}
