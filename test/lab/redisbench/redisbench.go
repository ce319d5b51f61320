// Package redisbench runs Debian's redis-benchmark (redis-tools) and turns
// side-by-side runs, a baseline and smr, into the lines `make bench` ends
// with:
//
//	bench: set ratio=R1 get ratio=R2 p50 added latency at 1 client=L ms
//	bench-pipelined: set ratio=R3 get ratio=R4
//
// It also has the raw SET loops of `make bench-ceiling` (SetLoop).
package redisbench

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// Result is one redis-benchmark test (SET or GET): throughput and median
// latency.
type Result struct {
	RPS   float64 // requests per second
	P50ms float64 // median latency, milliseconds
}

// Results maps a redis-benchmark test name ("SET", "GET") to its result.
type Results map[string]Result

// Options is one redis-benchmark invocation.
type Options struct {
	Addr     string // host:port of the server
	Clients  int    // -c
	Requests int    // -n
	Keyspace int    // -r: random keys out of this many (0: one key)
	Tests    string // -t, comma-separated (e.g. "set"); empty: "set,get"
	// Pipeline is -P: requests each client sends before reading their
	// replies (0 or 1: one at a time, redis-benchmark's default).
	Pipeline int
}

func (o Options) tests() []string {
	if o.Tests == "" {
		return []string{"SET", "GET"}
	}
	return strings.Split(strings.ToUpper(o.Tests), ",")
}

// args validates o and renders redis-benchmark's arguments for SET and GET.
func (o Options) args() ([]string, error) {
	host, port, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return nil, fmt.Errorf("redisbench: address %q: %w", o.Addr, err)
	}
	if host == "" {
		return nil, fmt.Errorf("redisbench: address %q has no host", o.Addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("redisbench: address %q: port must be 1-65535", o.Addr)
	}
	if o.Clients < 1 || o.Requests < 1 || o.Keyspace < 0 || o.Pipeline < 0 {
		return nil, fmt.Errorf("redisbench: clients (%d) and requests (%d) must be positive, keyspace (%d) and pipeline (%d) not negative",
			o.Clients, o.Requests, o.Keyspace, o.Pipeline)
	}
	for _, t := range o.tests() {
		if t == "" || strings.ContainsAny(t, " \t") {
			return nil, fmt.Errorf("redisbench: tests %q: want comma-separated names such as set,get", o.Tests)
		}
	}
	args := []string{"-h", host, "-p", port, "-c", strconv.Itoa(o.Clients), "-n", strconv.Itoa(o.Requests),
		"-t", strings.ToLower(strings.Join(o.tests(), ",")), "--csv"}
	if o.Keyspace > 0 {
		args = append(args, "-r", strconv.Itoa(o.Keyspace))
	}
	if o.Pipeline > 1 {
		args = append(args, "-P", strconv.Itoa(o.Pipeline))
	}
	return args, nil
}

// Run runs redis-benchmark with o and parses its CSV. redis-benchmark keeps
// reconnecting forever to a server that refuses connections, so ctx must
// carry a deadline.
func Run(ctx context.Context, o Options) (Results, error) {
	args, err := o.args()
	if err != nil {
		return nil, err
	}
	bin, err := exec.LookPath("redis-benchmark")
	if err != nil {
		return nil, fmt.Errorf("redisbench: redis-benchmark not installed (apt-get install redis-tools): %w", err)
	}
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("redisbench: redis-benchmark against %s: %w\n%s", o.Addr, err, out)
	}
	res, err := Parse(string(out), o.tests()...)
	if err != nil {
		return nil, fmt.Errorf("redisbench: against %s: %w", o.Addr, err)
	}
	return res, nil
}

// Parse reads redis-benchmark's --csv output (a header row, then one row
// per test). Lines that are not CSV rows (redis-benchmark's warnings such as
// "WARNING: Could not fetch server CONFIG") are skipped. Every test named in
// want (default SET and GET) must be present.
func Parse(out string, want ...string) (Results, error) {
	if len(want) == 0 {
		want = []string{"SET", "GET"}
	}
	var header []string
	res := Results{}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, `"`) {
			continue
		}
		row, err := csv.NewReader(strings.NewReader(line)).Read()
		if err != nil {
			return nil, fmt.Errorf("parse redis-benchmark CSV line %q: %w", line, err)
		}
		if header == nil {
			header = row
			continue
		}
		r, err := parseRow(header, row)
		if err != nil {
			return nil, err
		}
		res[row[0]] = r
	}
	if header == nil {
		return nil, fmt.Errorf("no CSV header in redis-benchmark output:\n%s", out)
	}
	for _, t := range want {
		if _, ok := res[t]; !ok {
			return nil, fmt.Errorf("redis-benchmark printed no %s result:\n%s", t, out)
		}
	}
	return res, nil
}

func parseRow(header, row []string) (Result, error) {
	if len(row) != len(header) {
		return Result{}, fmt.Errorf("redis-benchmark CSV row %q has %d fields, header has %d", row, len(row), len(header))
	}
	var r Result
	for _, col := range []struct {
		name string
		dst  *float64
	}{{"rps", &r.RPS}, {"p50_latency_ms", &r.P50ms}} {
		i := slices.Index(header, col.name)
		if i < 0 {
			return Result{}, fmt.Errorf("redis-benchmark CSV header %q has no %s column", header, col.name)
		}
		v, err := strconv.ParseFloat(row[i], 64)
		if err != nil {
			return Result{}, fmt.Errorf("redis-benchmark %s %s=%q: %w", row[0], col.name, row[i], err)
		}
		if v < 0 {
			return Result{}, fmt.Errorf("redis-benchmark %s %s=%v is negative", row[0], col.name, v)
		}
		*col.dst = v
	}
	return r, nil
}

// Line is the comparison `make bench` reports.
type Line struct {
	SetRatio, GetRatio float64 // smr req/s over baseline req/s at many clients
	AddedP50ms         float64 // smr SET p50 minus baseline SET p50 at one client
}

// Compare builds the Line from the many-client runs (base, smr) and the
// one-client runs (base1, smr1) of the same benchmark run.
func Compare(base, smr, base1, smr1 Results) (Line, error) {
	for _, r := range []struct {
		name string
		res  Results
		test string
	}{{"baseline", base, "SET"}, {"baseline", base, "GET"}, {"smr", smr, "SET"}, {"smr", smr, "GET"},
		{"baseline 1-client", base1, "SET"}, {"smr 1-client", smr1, "SET"}} {
		if _, ok := r.res[r.test]; !ok {
			return Line{}, fmt.Errorf("redisbench: %s run has no %s result", r.name, r.test)
		}
	}
	r, err := RatiosOf(base, smr)
	if err != nil {
		return Line{}, err
	}
	return Line{
		SetRatio:   r.Set,
		GetRatio:   r.Get,
		AddedP50ms: smr1["SET"].P50ms - base1["SET"].P50ms,
	}, nil
}

// Ratios are throughput ratios of one side-by-side comparison without a
// latency figure: `make bench`'s pipelined round and its proxy ceiling.
type Ratios struct {
	Set, Get float64 // req/s over the baseline's req/s
}

// RatiosOf divides smr's SET and GET rates by the baseline's (both runs
// must have both tests and a non-zero baseline).
func RatiosOf(base, smr Results) (Ratios, error) {
	for _, r := range []struct {
		name string
		res  Results
	}{{"baseline", base}, {"smr", smr}} {
		for _, test := range []string{"SET", "GET"} {
			if _, ok := r.res[test]; !ok {
				return Ratios{}, fmt.Errorf("redisbench: %s run has no %s result", r.name, test)
			}
		}
	}
	if base["SET"].RPS == 0 || base["GET"].RPS == 0 {
		return Ratios{}, errors.New("redisbench: baseline throughput is zero, no ratio")
	}
	return Ratios{Set: smr["SET"].RPS / base["SET"].RPS, Get: smr["GET"].RPS / base["GET"].RPS}, nil
}

// MedianRatios is the field-wise median of rs (see Median).
func MedianRatios(rs []Ratios) (Ratios, error) {
	if len(rs) == 0 {
		return Ratios{}, errors.New("redisbench: median of no ratios")
	}
	set, get := make([]float64, len(rs)), make([]float64, len(rs))
	for i, r := range rs {
		set[i], get[i] = r.Set, r.Get
	}
	return Ratios{Set: MedianOf(set), Get: MedianOf(get)}, nil
}

// Format renders r with the given label, e.g.
// "bench-pipelined: set ratio=0.41 get ratio=0.77". A ratio below 0.095
// keeps three decimals (0.005, not 0.00: the pipelined round's ratio before
// an ordered pipeline is that small).
func (r Ratios) Format(label string) string {
	return fmt.Sprintf("%s: set ratio=%s get ratio=%s", label, formatRatio(r.Set), formatRatio(r.Get))
}

func formatRatio(v float64) string {
	if v < 0.095 {
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// Median is the field-wise median of lines (the mean of the middle two
// for an even count), for a run that repeats the comparison to damp the
// noise of a shared machine.
func Median(lines []Line) (Line, error) {
	if len(lines) == 0 {
		return Line{}, errors.New("redisbench: median of no lines")
	}
	field := func(f func(Line) float64) float64 {
		v := make([]float64, len(lines))
		for i, l := range lines {
			v[i] = f(l)
		}
		return MedianOf(v)
	}
	return Line{
		SetRatio:   field(func(l Line) float64 { return l.SetRatio }),
		GetRatio:   field(func(l Line) float64 { return l.GetRatio }),
		AddedP50ms: field(func(l Line) float64 { return l.AddedP50ms }),
	}, nil
}

// MedianOf is the median of v (0 for none); v is not modified.
func MedianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Format renders l with the given label ("bench" for `make bench`'s last
// line).
func (l Line) Format(label string) string {
	return fmt.Sprintf("%s: set ratio=%.2f get ratio=%.2f p50 added latency at 1 client=%.2f ms",
		label, l.SetRatio, l.GetRatio, l.AddedP50ms)
}

// Scale parses SMR_BENCH_SCALE, the factor of every request count of
// `make bench` (a smaller run for a smoke test): empty is 1.
func Scale(s string) (float64, error) {
	if s == "" {
		return 1, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f > 100 {
		return 0, fmt.Errorf("SMR_BENCH_SCALE=%q: want a number in (0, 100]", s)
	}
	return f, nil
}

// Scaled is n times scale, at least 1.
func Scaled(n int, scale float64) int {
	return max(1, int(float64(n)*scale))
}
