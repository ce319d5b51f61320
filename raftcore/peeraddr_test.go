package raftcore

import (
	"log/slog"
	"maps"
	"testing"
)

// The order between reported addresses (GroupConfig.Peers, SetPeerAddr:
// the pod watch) and addresses learned from the member's own stream: the
// most recent news wins, and a repeated report is not news.
func TestPeerAddrOrder(t *testing.T) {
	type event struct {
		learn bool // LearnPeerAddr, else SetPeerAddr
		id    uint64
		addr  string
	}
	report := func(id uint64, addr string) event { return event{false, id, addr} }
	learn := func(id uint64, addr string) event { return event{true, id, addr} }
	initial := map[uint64]string{1: "self:1", 2: "old:2", 3: "old:3"}
	tests := []struct {
		name   string
		events []event
		want   map[uint64]string // changes against initial
	}{
		{"report moves a member", []event{report(2, "new:2")}, map[uint64]string{2: "new:2"}},
		{"learned address moves a member", []event{learn(2, "new:2")}, map[uint64]string{2: "new:2"}},
		// The failure this order exists for: the watch repeats the pod's old
		// IP (a status update before the kubelet reported the new one).
		{"stale repeat of the initial address after learning", []event{learn(2, "new:2"), report(2, "old:2")}, map[uint64]string{2: "new:2"}},
		{"stale repeat of a reported address after learning", []event{report(2, "mid:2"), learn(2, "new:2"), report(2, "mid:2")}, map[uint64]string{2: "new:2"}},
		{"report that is news wins over an older learned address", []event{learn(2, "new:2"), report(2, "newer:2")}, map[uint64]string{2: "newer:2"}},
		{"the member's stream corrects a report that was behind", []event{learn(2, "c:2"), report(2, "b:2"), learn(2, "c:2")}, map[uint64]string{2: "c:2"}},
		{"learning never moves this member", []event{learn(1, "elsewhere:1")}, nil},
		{"learning does not add unknown members", []event{learn(9, "x:9")}, nil},
		{"learning an empty address changes nothing", []event{learn(3, "")}, nil},
		{"reports still add members (AddMember)", []event{report(4, "new:4")}, map[uint64]string{4: "new:4"}},
		{"one member's address leaves the others alone", []event{learn(2, "new:2"), report(3, "old:3")}, map[uint64]string{2: "new:2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &Group{id: 1, peers: maps.Clone(initial), reported: maps.Clone(initial), log: slog.New(slog.DiscardHandler)}
			for _, e := range tc.events {
				if e.learn {
					g.learnPeerAddr(e.id, e.addr)
				} else {
					g.SetPeerAddr(e.id, e.addr)
				}
			}
			want := maps.Clone(initial)
			maps.Copy(want, tc.want)
			if !maps.Equal(g.peers, want) {
				t.Fatalf("routes %v, want %v", g.peers, want)
			}
		})
	}
}
