package redisbench

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// sample is redis-benchmark 7.0.15's --csv output for -t set,get.
const sample = `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","67340.07","0.399","0.104","0.367","0.503","1.151","3.799"
"GET","71942.45","0.359","0.128","0.359","0.455","0.519","0.783"
`

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    Results
		wantErr string
	}{
		{name: "redis 7.0 csv", out: sample,
			want: Results{"SET": {RPS: 67340.07, P50ms: 0.367}, "GET": {RPS: 71942.45, P50ms: 0.359}}},
		// redis-benchmark prints this warning when CONFIG GET is refused
		// (as a proxy may do); the rows still count.
		{name: "warning line before the csv", out: "WARNING: Could not fetch server CONFIG\n" + sample,
			want: Results{"SET": {RPS: 67340.07, P50ms: 0.367}, "GET": {RPS: 71942.45, P50ms: 0.359}}},
		{name: "empty output", out: "", wantErr: "no CSV header"},
		{name: "connection refused", out: "Could not connect to Redis at 127.0.0.1:1: Connection refused\n", wantErr: "no CSV header"},
		{name: "no GET row", out: strings.Join(strings.Split(sample, "\n")[:2], "\n"), wantErr: "no GET result"},
		{name: "short row", out: strings.Replace(sample, `"SET","67340.07",`, `"SET",`, 1), wantErr: "has 7 fields, header has 8"},
		{name: "rps not a number", out: strings.Replace(sample, "67340.07", "fast", 1), wantErr: `SET rps="fast"`},
		{name: "negative p50", out: strings.Replace(sample, "0.367", "-1", 1), wantErr: "SET p50_latency_ms=-1 is negative"},
		{name: "header without p50", out: strings.Replace(sample, "p50_latency_ms", "median", 1), wantErr: "no p50_latency_ms column"},
		{name: "broken quoting", out: strings.Replace(sample, `"GET",`, `"GET,`, 1), wantErr: "parse redis-benchmark CSV line"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.out)
			if testcheck.ErrorCase(t, "Parse", err, tc.wantErr) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("Parse = %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("Parse[%s] = %+v, want %+v", k, got[k], v)
				}
			}
		})
	}
}

func TestOptionsArgs(t *testing.T) {
	tests := []struct {
		name    string
		o       Options
		want    []string
		wantErr string
	}{
		{name: "50 clients random keys", o: Options{Addr: "198.18.0.5:6379", Clients: 50, Requests: 1000, Keyspace: 1000},
			want: []string{"-h", "198.18.0.5", "-p", "6379", "-c", "50", "-n", "1000", "-t", "set,get", "--csv", "-r", "1000"}},
		{name: "one key", o: Options{Addr: "127.0.0.1:6379", Clients: 1, Requests: 10},
			want: []string{"-h", "127.0.0.1", "-p", "6379", "-c", "1", "-n", "10", "-t", "set,get", "--csv"}},
		{name: "set only", o: Options{Addr: "127.0.0.1:6379", Clients: 1, Requests: 10, Tests: "set"},
			want: []string{"-h", "127.0.0.1", "-p", "6379", "-c", "1", "-n", "10", "-t", "set", "--csv"}},
		{name: "pipelined 16", o: Options{Addr: "198.18.0.5:6379", Clients: 50, Requests: 1000, Keyspace: 1000, Pipeline: 16},
			want: []string{"-h", "198.18.0.5", "-p", "6379", "-c", "50", "-n", "1000", "-t", "set,get", "--csv", "-r", "1000", "-P", "16"}},
		{name: "pipeline 1 is the default", o: Options{Addr: "127.0.0.1:6379", Clients: 1, Requests: 10, Pipeline: 1},
			want: []string{"-h", "127.0.0.1", "-p", "6379", "-c", "1", "-n", "10", "-t", "set,get", "--csv"}},
		{name: "negative pipeline", o: Options{Addr: "127.0.0.1:6379", Clients: 1, Requests: 10, Pipeline: -1}, wantErr: "pipeline (-1) not negative"},
		{name: "empty test name", o: Options{Addr: "127.0.0.1:6379", Clients: 1, Requests: 10, Tests: "set,"}, wantErr: "comma-separated"},
		{name: "space in tests", o: Options{Addr: "127.0.0.1:6379", Clients: 1, Requests: 10, Tests: "set, get"}, wantErr: "comma-separated"},
		{name: "no port", o: Options{Addr: "198.18.0.5", Clients: 1, Requests: 1}, wantErr: "missing port"},
		{name: "no host", o: Options{Addr: ":6379", Clients: 1, Requests: 1}, wantErr: "has no host"},
		{name: "bad port", o: Options{Addr: "198.18.0.5:http", Clients: 1, Requests: 1}, wantErr: "port must be 1-65535"},
		{name: "port zero", o: Options{Addr: "198.18.0.5:0", Clients: 1, Requests: 1}, wantErr: "port must be 1-65535"},
		{name: "zero clients", o: Options{Addr: "198.18.0.5:6379", Requests: 1}, wantErr: "must be positive"},
		{name: "zero requests", o: Options{Addr: "198.18.0.5:6379", Clients: 1}, wantErr: "must be positive"},
		{name: "negative keyspace", o: Options{Addr: "198.18.0.5:6379", Clients: 1, Requests: 1, Keyspace: -1}, wantErr: "not negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.o.args()
			if testcheck.ErrorCase(t, "args", err, tc.wantErr) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("args = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRunBadOptions checks that bad options fail before redis-benchmark
// runs (it would otherwise retry a bad address forever).
func TestRunBadOptions(t *testing.T) {
	if _, err := Run(context.Background(), Options{Addr: "nowhere", Clients: 1, Requests: 1}); err == nil {
		t.Fatal("Run with an address without port succeeded")
	}
}

// TestParseWant checks the tests a caller asked for are the ones required.
func TestParseWant(t *testing.T) {
	setOnly := strings.Join(strings.Split(sample, "\n")[:2], "\n")
	if _, err := Parse(setOnly, "SET"); err != nil {
		t.Fatalf("Parse of a SET-only run asking for SET: %v", err)
	}
	if _, err := Parse(setOnly, "SET", "LPUSH"); err == nil || !strings.Contains(err.Error(), "no LPUSH result") {
		t.Fatalf("Parse asking for a missing LPUSH: error %v", err)
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name    string
		lines   []Line
		want    Line
		wantErr bool
	}{
		{name: "none", wantErr: true},
		{name: "one", lines: []Line{{0.1, 0.2, 0.3}}, want: Line{0.1, 0.2, 0.3}},
		{name: "odd, field-wise", lines: []Line{{0.3, 0.1, 2}, {0.1, 0.9, 0.5}, {0.2, 0.5, 1}}, want: Line{0.2, 0.5, 1}},
		{name: "even: mean of the middle two", lines: []Line{{0.1, 1, 1}, {0.4, 2, 3}, {0.3, 3, 2}, {0.2, 4, 4}}, want: Line{0.25, 2.5, 2.5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Median(tc.lines)
			if tc.wantErr {
				if err == nil {
					t.Fatal("Median of no lines succeeded")
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Median = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if MedianOf(nil) != 0 {
		t.Fatal("MedianOf(nil) != 0")
	}
}

func TestCompare(t *testing.T) {
	base := Results{"SET": {RPS: 80000, P50ms: 0.3}, "GET": {RPS: 100000, P50ms: 0.3}}
	smr := Results{"SET": {RPS: 40000, P50ms: 1.1}, "GET": {RPS: 80000, P50ms: 0.5}}
	base1 := Results{"SET": {RPS: 10000, P50ms: 0.1}, "GET": {RPS: 10000, P50ms: 0.1}}
	smr1 := Results{"SET": {RPS: 2000, P50ms: 0.6}, "GET": {RPS: 5000, P50ms: 0.2}}
	tests := []struct {
		name                   string
		base, smr, base1, smr1 Results
		want                   string
		wantErr                string
	}{
		{name: "ratios and added latency", base: base, smr: smr, base1: base1, smr1: smr1,
			want: "bench: set ratio=0.50 get ratio=0.80 p50 added latency at 1 client=0.50 ms"},
		{name: "baseline missing GET", base: Results{"SET": base["SET"]}, smr: smr, base1: base1, smr1: smr1,
			wantErr: "baseline run has no GET result"},
		{name: "smr 1-client missing", base: base, smr: smr, base1: base1, smr1: Results{},
			wantErr: "smr 1-client run has no SET result"},
		{name: "zero baseline", base: Results{"SET": {}, "GET": {}}, smr: smr, base1: base1, smr1: smr1,
			wantErr: "baseline throughput is zero"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Compare(tc.base, tc.smr, tc.base1, tc.smr1)
			if testcheck.ErrorCase(t, "Compare", err, tc.wantErr) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := l.Format("bench"); got != tc.want {
				t.Fatalf("Format = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRatiosOf(t *testing.T) {
	base := Results{"SET": {RPS: 200000}, "GET": {RPS: 250000}}
	tests := []struct {
		name      string
		base, smr Results
		label     string
		want      string
		wantErr   string
	}{
		{name: "pipelined round", base: base, smr: Results{"SET": {RPS: 80000}, "GET": {RPS: 200000}}, label: "bench-pipelined",
			want: "bench-pipelined: set ratio=0.40 get ratio=0.80"},
		{name: "proxy faster than direct", base: base, smr: Results{"SET": {RPS: 220000}, "GET": {RPS: 250000}}, label: "bench-proxy-ceiling",
			want: "bench-proxy-ceiling: set ratio=1.10 get ratio=1.00"},
		{name: "tiny ratio keeps three decimals", base: base, smr: Results{"SET": {RPS: 1000}, "GET": {RPS: 23750}}, label: "bench-pipelined",
			want: "bench-pipelined: set ratio=0.005 get ratio=0.10"},
		{name: "smr missing SET", base: base, smr: Results{"GET": {RPS: 1}}, wantErr: "smr run has no SET result"},
		{name: "baseline missing GET", base: Results{"SET": {RPS: 1}}, smr: base, wantErr: "baseline run has no GET result"},
		{name: "zero baseline GET", base: Results{"SET": {RPS: 1}, "GET": {}}, smr: base, wantErr: "baseline throughput is zero"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := RatiosOf(tc.base, tc.smr)
			if testcheck.ErrorCase(t, "RatiosOf", err, tc.wantErr) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Format(tc.label); got != tc.want {
				t.Fatalf("Format = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMedianRatios(t *testing.T) {
	tests := []struct {
		name    string
		rs      []Ratios
		want    Ratios
		wantErr string
	}{
		{name: "none", wantErr: "median of no ratios"},
		{name: "one", rs: []Ratios{{0.4, 0.7}}, want: Ratios{0.4, 0.7}},
		{name: "odd, field-wise", rs: []Ratios{{0.5, 0.6}, {0.3, 0.9}, {0.4, 0.7}}, want: Ratios{0.4, 0.7}},
		{name: "even: mean of the middle two", rs: []Ratios{{0.1, 1}, {0.4, 4}, {0.2, 2}, {0.3, 3}}, want: Ratios{0.25, 2.5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MedianRatios(tc.rs)
			if testcheck.ErrorCase(t, "MedianRatios", err, tc.wantErr) {
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("MedianRatios = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestScale(t *testing.T) {
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
			got, err := Scale(tc.in)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "SMR_BENCH_SCALE") {
					t.Fatalf("Scale(%q) error = %v, want one naming SMR_BENCH_SCALE", tc.in, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Scale(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestScaled(t *testing.T) {
	tests := []struct {
		n     int
		scale float64
		want  int
	}{{100000, 1, 100000}, {100000, 0.1, 10000}, {2000, 2.5, 5000}, {10, 0.01, 1}, {1, 0.5, 1}}
	for _, tc := range tests {
		if got := Scaled(tc.n, tc.scale); got != tc.want {
			t.Errorf("Scaled(%d, %v) = %d, want %d", tc.n, tc.scale, got, tc.want)
		}
	}
}
