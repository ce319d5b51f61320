package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// benchProfile is what SMR_BENCH_PROFILE* ask of `make bench`: a CPU
// profile of serve, written to path, while redis-benchmark runs tests
// (-t) with pipeline (-P) against the group.
type benchProfile struct {
	path     string // absolute; "" : no profile
	round    string // as given: set, get, pipelined-set, pipelined-get
	tests    string
	pipeline int
	duration time.Duration
}

// benchProfileFrom parses SMR_BENCH_PROFILE (path), SMR_BENCH_PROFILE_ROUND
// (default set) and SMR_BENCH_PROFILE_SECONDS (default 10).
func benchProfileFrom(path, round, seconds string) (benchProfile, error) {
	if path == "" {
		if round != "" || seconds != "" {
			return benchProfile{}, fmt.Errorf("SMR_BENCH_PROFILE_ROUND or SMR_BENCH_PROFILE_SECONDS given without SMR_BENCH_PROFILE (the file to write)")
		}
		return benchProfile{}, nil
	}
	if !filepath.IsAbs(path) {
		return benchProfile{}, fmt.Errorf("SMR_BENCH_PROFILE=%q: want an absolute path (go test runs in the package directory; hack/bench.sh makes it absolute)", path)
	}
	p := benchProfile{path: path, round: round, duration: 10 * time.Second}
	switch round {
	case "", "set":
		p.round, p.tests = "set", "set"
	case "get":
		p.tests = "get"
	case "pipelined-set":
		p.tests, p.pipeline = "set", benchPipeline
	case "pipelined-get":
		p.tests, p.pipeline = "get", benchPipeline
	default:
		return benchProfile{}, fmt.Errorf("SMR_BENCH_PROFILE_ROUND=%q: want set, get, pipelined-set or pipelined-get", round)
	}
	if seconds != "" {
		n, err := strconv.Atoi(seconds)
		if err != nil || n < 1 || n > 300 {
			return benchProfile{}, fmt.Errorf("SMR_BENCH_PROFILE_SECONDS=%q: want a whole number from 1 to 300", seconds)
		}
		p.duration = time.Duration(n) * time.Second
	}
	return p, nil
}

// profileServe takes a CPU profile of serve's pprof endpoint at addr for
// prof.duration and writes it to prof.path, calling load again and again
// until the profile is complete so that the whole profile sees the load.
func profileServe(ctx context.Context, addr string, prof benchProfile, load func() error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fetchProfile(ctx, addr, prof) }()
	for {
		select {
		case err := <-done:
			return err
		default:
		}
		if err := load(); err != nil {
			cancel()
			<-done // no profile written after we return
			return fmt.Errorf("load during the CPU profile: %w", err)
		}
	}
}

// fetchProfile asks net/http/pprof at addr for a CPU profile of
// prof.duration and writes it to prof.path.
func fetchProfile(ctx context.Context, addr string, prof benchProfile) error {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(prof.duration.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("profile request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("CPU profile from %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("CPU profile from %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK || len(body) == 0 {
		return fmt.Errorf("CPU profile from %s: %s: %.300s", url, resp.Status, body)
	}
	if err := os.WriteFile(prof.path, body, 0o644); err != nil {
		return fmt.Errorf("write CPU profile: %w", err)
	}
	return nil
}
