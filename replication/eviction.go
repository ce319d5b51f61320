package replication

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// Eviction is what a Redis app reports about key eviction.
type Eviction struct {
	MaxMemory int64  // bytes; 0 = no limit
	Policy    string // maxmemory-policy
}

// Evicts reports whether the app may drop keys on its own: a memory limit
// with any policy but noeviction. Eviction samples keys and depends on each
// server's own memory use, so replicas would drop different keys.
func (e Eviction) Evicts() bool { return e.MaxMemory > 0 && e.Policy != "noeviction" }

var errAppUnreachable = errors.New("app unreachable")

// RedisEviction asks the Redis app behind dialer (CONFIG GET, on a
// connection of its own outside any replicated session).
func RedisEviction(ctx context.Context, dialer AppDialer, port int) (Eviction, error) {
	conn, err := dialer.DialApp(ctx, port)
	if err != nil {
		return Eviction{}, fmt.Errorf("%w: %w", errAppUnreachable, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte("*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$9\r\nmaxmemory\r\n" +
		"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$16\r\nmaxmemory-policy\r\n")); err != nil {
		return Eviction{}, fmt.Errorf("ask app for maxmemory: %w", err)
	}
	r, f := bufio.NewReader(conn), framing.NewRESP(framing.Options{})
	var vals [2]string
	for i := range vals {
		resp, err := f.ReadResponse(r, framing.Request{})
		if err != nil {
			return Eviction{}, fmt.Errorf("read CONFIG GET reply: %w", err)
		}
		kv, err := rediscmd.SplitRequest(resp) // a RESP2 array of bulk strings
		if err != nil || len(kv) != 2 {
			return Eviction{}, fmt.Errorf("unexpected CONFIG GET reply %q", resp)
		}
		vals[i] = string(kv[1])
	}
	n, err := strconv.ParseInt(vals[0], 10, 64)
	if err != nil {
		return Eviction{}, fmt.Errorf("maxmemory %q: %w", vals[0], err)
	}
	return Eviction{MaxMemory: n, Policy: vals[1]}, nil
}

// warnIfEvicting waits for the app of a replicated RESP port to answer
// (it starts after the sandbox is attached) and logs a warning if it
// evicts keys. It gives up silently when ctx ends (the pod went away).
func warnIfEvicting(ctx context.Context, log *slog.Logger, dialer AppDialer, group string, port int) {
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ev, err := RedisEviction(actx, dialer, port)
		cancel()
		if err != nil && !errors.Is(err, errAppUnreachable) {
			log.Info("could not check the app's eviction settings", "group", group, "port", port, "err", err)
			return
		}
		if err == nil {
			if ev.Evicts() {
				log.Warn("app evicts keys: replicas will diverge (set maxmemory-policy noeviction)", "group", group,
					"port", port, "maxmemory", ev.MaxMemory, "policy", ev.Policy)
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
