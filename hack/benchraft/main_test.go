package main

import (
	"context"
	"io"
	"testing"
	"time"
)

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{}, // no -raftnode
		{"-raftnode", "x", "-proposers", "1,abc"},
		{"-raftnode", "x", "-proposers", "1,0,64"},
		{"-raftnode", "x", "-proposers", "16"}, // summary needs 1 and 64
		{"-raftnode", "x", "-rounds", "0"},
		{"-nosuchflag"},
	} {
		if err := run(context.Background(), args, io.Discard); err == nil {
			t.Errorf("run(%v) accepted bad flags", args)
		}
	}
}

func TestMedian(t *testing.T) {
	rs := []result{
		{rate: 3, p50: 3 * time.Millisecond, maxRSS: []int64{1}},
		{rate: 1, p50: 1 * time.Millisecond, maxRSS: []int64{5}, errors: 2},
		{rate: 2, p50: 2 * time.Millisecond, maxRSS: []int64{3}},
	}
	m := median(rs)
	if m.rate != 2 || m.p50 != 2*time.Millisecond || m.maxRSS[0] != 5 || m.errors != 2 {
		t.Fatalf("median = %+v", m)
	}
}
