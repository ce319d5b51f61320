package replication

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// An app with maxmemory and an evicting policy is found and named; one
// without a limit, or with noeviction, is not.
func TestRedisEvictionDetected(t *testing.T) {
	requireIntegration(t)
	tests := []struct {
		name   string
		args   []string
		evicts bool
	}{
		{"default", nil, false},
		{"limit with noeviction", []string{"--maxmemory", "64mb", "--maxmemory-policy", "noeviction"}, false},
		{"limit with allkeys-lru", []string{"--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"}, true},
		{"limit with volatile-random", []string{"--maxmemory", "1gb", "--maxmemory-policy", "volatile-random"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &addrDialer{addr: startRedis(t, tt.args...)}
			ev, err := RedisEviction(context.Background(), d, 6379)
			if err != nil || ev.Evicts() != tt.evicts {
				t.Fatalf("RedisEviction = %+v, %v; want evicts=%v", ev, err, tt.evicts)
			}
			var logs syncBuffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			warnIfEvicting(ctx, slog.New(slog.NewTextHandler(&logs, nil)), d, "ns.g", 6379)
			if got := strings.Contains(logs.String(), "app evicts keys: replicas will diverge"); got != tt.evicts {
				t.Errorf("warning logged = %v, want %v; log: %s", got, tt.evicts, logs.String())
			}
		})
	}
	// An app that is not up yet is retried until it answers.
	late := &addrDialer{addr: "127.0.0.1:1"}
	var logs syncBuffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		warnIfEvicting(context.Background(), slog.New(slog.NewTextHandler(&logs, nil)), late, "ns.g", 6379)
	}()
	time.Sleep(1500 * time.Millisecond)
	late.set(startRedis(t, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lfu"))
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the check did not finish once the app was up")
	}
	if !bytes.Contains([]byte(logs.String()), []byte("policy=allkeys-lfu")) {
		t.Errorf("log: %s", logs.String())
	}
}
