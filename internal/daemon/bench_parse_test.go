package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

func TestBenchProfileFrom(t *testing.T) {
	tests := []struct {
		name                 string
		path, round, seconds string
		want                 benchProfile
		wantErr              string
	}{
		{name: "off", want: benchProfile{}},
		{name: "defaults", path: "/tmp/p.pprof",
			want: benchProfile{path: "/tmp/p.pprof", round: "set", tests: "set", duration: 10 * time.Second}},
		{name: "get for 3s", path: "/tmp/p.pprof", round: "get", seconds: "3",
			want: benchProfile{path: "/tmp/p.pprof", round: "get", tests: "get", duration: 3 * time.Second}},
		{name: "pipelined set", path: "/tmp/p.pprof", round: "pipelined-set",
			want: benchProfile{path: "/tmp/p.pprof", round: "pipelined-set", tests: "set", pipeline: benchPipeline, duration: 10 * time.Second}},
		{name: "pipelined get", path: "/tmp/p.pprof", round: "pipelined-get", seconds: "300",
			want: benchProfile{path: "/tmp/p.pprof", round: "pipelined-get", tests: "get", pipeline: benchPipeline, duration: 300 * time.Second}},
		{name: "relative path", path: "p.pprof", wantErr: "want an absolute path"},
		{name: "unknown round", path: "/tmp/p.pprof", round: "lpush", wantErr: `SMR_BENCH_PROFILE_ROUND="lpush"`},
		{name: "zero seconds", path: "/tmp/p.pprof", seconds: "0", wantErr: "SMR_BENCH_PROFILE_SECONDS"},
		{name: "too long", path: "/tmp/p.pprof", seconds: "301", wantErr: "SMR_BENCH_PROFILE_SECONDS"},
		{name: "seconds not a number", path: "/tmp/p.pprof", seconds: "10s", wantErr: "SMR_BENCH_PROFILE_SECONDS"},
		{name: "round without a path", round: "get", wantErr: "without SMR_BENCH_PROFILE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := benchProfileFrom(tc.path, tc.round, tc.seconds)
			if testcheck.ErrorCase(t, "benchProfileFrom", err, tc.wantErr) {
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("benchProfileFrom = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// TestProfileServe checks the profile loop against a stand-in for serve's
// pprof endpoint: the load runs until the profile is complete, the profile
// lands in the file, and failures of either are reported.
func TestProfileServe(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		loadErr  error
		wantErr  string
		wantFile string
	}{
		{name: "profile written", status: http.StatusOK, wantFile: "pprof-bytes seconds=1"},
		{name: "profiling refused", status: http.StatusInternalServerError, wantErr: "500 Internal Server Error: pprof-bytes"},
		{name: "load fails", status: http.StatusOK, loadErr: errors.New("redis-benchmark: connection refused"), wantErr: "load during the CPU profile: redis-benchmark"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/debug/pprof/profile" {
					http.NotFound(w, r)
					return
				}
				<-release // the profile ends only after the load ran
				w.WriteHeader(tc.status)
				fmt.Fprintf(w, "pprof-bytes seconds=%s", r.URL.Query().Get("seconds"))
			}))
			defer srv.Close()
			defer func() {
				select {
				case <-release:
				default:
					close(release)
				}
			}()
			path := filepath.Join(t.TempDir(), "serve.pprof")
			loads := 0
			err := profileServe(context.Background(), strings.TrimPrefix(srv.URL, "http://"),
				benchProfile{path: path, duration: time.Second}, func() error {
					loads++
					if loads == 3 {
						close(release)
					}
					if loads > 3 {
						time.Sleep(10 * time.Millisecond)
					}
					return tc.loadErr
				})
			if testcheck.ErrorCase(t, "profileServe", err, tc.wantErr) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if loads < 3 {
				t.Fatalf("load ran %d times, want until the profile ended (at least 3)", loads)
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != tc.wantFile {
				t.Fatalf("profile file = %q, %v; want %q", got, err, tc.wantFile)
			}
		})
	}
}
