package daemon

import (
	"bufio"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

func TestParseLeader(t *testing.T) {
	const group = "smrtest.redis"
	tests := []struct {
		name    string
		text    string
		want    int
		wantErr string
	}{
		{name: "leader 2", text: "# HELP smr_leader x\n# TYPE smr_leader gauge\nsmr_leader{group=\"other.g\"} 1\nsmr_leader{group=\"smrtest.redis\"} 2\n", want: 2},
		{name: "no leader yet", text: "smr_leader{group=\"smrtest.redis\"} 0\n", wantErr: "has no leader yet"},
		{name: "group missing", text: "smr_leader{group=\"other.g\"} 1\n", wantErr: "no smr_leader sample for group smrtest.redis"},
		{name: "empty exposition", text: "", wantErr: "no smr_leader sample"},
		{name: "not a number", text: "smr_leader{group=\"smrtest.redis\"} NaNx\n", wantErr: `= "NaNx"`},
		{name: "fractional", text: "smr_leader{group=\"smrtest.redis\"} 1.5\n", wantErr: "not a member ID 1..3"},
		{name: "beyond members", text: "smr_leader{group=\"smrtest.redis\"} 4\n", wantErr: "not a member ID 1..3"},
		{name: "negative", text: "smr_leader{group=\"smrtest.redis\"} -1\n", wantErr: "not a member ID 1..3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseLeader(bufio.NewScanner(strings.NewReader(tc.text)), group, 3)
			if testcheck.ErrorCase(t, "parseLeader", err, tc.wantErr) {
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseLeader = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestBenchScale(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{in: "", want: 1},
		{in: "0.25", want: 0.25},
		{in: "3", want: 3},
		{in: "0", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "101", wantErr: true},
		{in: "lots", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := benchScale(tc.in)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "SMR_BENCH_SCALE") {
					t.Fatalf("benchScale(%q) error = %v, want one naming SMR_BENCH_SCALE", tc.in, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("benchScale(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestBenchRoundsFrom(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr string
	}{
		{in: "", want: benchRounds},
		{in: "1", want: 1},
		{in: "20", want: 20},
		{in: "0", wantErr: "SMR_BENCH_ROUNDS"},
		{in: "21", wantErr: "SMR_BENCH_ROUNDS"},
		{in: "2.5", wantErr: "SMR_BENCH_ROUNDS"},
		{in: "many", wantErr: "SMR_BENCH_ROUNDS"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := benchRoundsFrom(tc.in)
			if testcheck.ErrorCase(t, "benchRoundsFrom", err, tc.wantErr) {
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("benchRoundsFrom(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestBenchEntry(t *testing.T) {
	pods := []labPod{{name: "redis-0"}, {name: "redis-1"}, {name: "redis-2"}}
	tests := []struct {
		leader   int
		via      string
		want     string
		wantRole string
		wantErr  string
	}{
		{leader: 2, via: "", want: "redis-1", wantRole: "leader"},
		{leader: 3, via: "leader", want: "redis-2", wantRole: "leader"},
		{leader: 3, via: "follower", want: "redis-0", wantRole: "follower"},
		{leader: 1, via: "follower", want: "redis-1", wantRole: "follower"},
		{leader: 1, via: "any", wantErr: "SMR_BENCH_VIA"},
		{leader: 0, via: "", wantErr: "leader member 0 is not one of the 3 pods"},
		{leader: 4, via: "", wantErr: "leader member 4 is not one of the 3 pods"},
	}
	for _, tc := range tests {
		t.Run(tc.via+"/"+tc.want, func(t *testing.T) {
			p, role, err := benchEntry(pods, tc.leader, tc.via)
			if testcheck.ErrorCase(t, "benchEntry", err, tc.wantErr) {
				return
			}
			if err != nil || p.name != tc.want || role != tc.wantRole {
				t.Fatalf("benchEntry = %s %s %v; want %s %s", p.name, role, err, tc.want, tc.wantRole)
			}
		})
	}
}
