package kvtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/smr-io/smr-cri/raftcore"
)

// Target is one member as seen by a client.
type Target interface {
	// Propose orders op through the log and returns its result.
	Propose(ctx context.Context, p raftcore.Proposal) (raftcore.Result, error)
	// Read is a linearizable local read (ReadIndex, then read the KV).
	Read(ctx context.Context, key string) (string, error)
}

// History is the recorded client history of one run.
type History struct {
	mu      sync.Mutex
	base    time.Time
	Ops     []porcupine.Operation
	OK      int // acknowledged operations
	Unknown int // writes with unknown outcome
	Failed  int // operations that definitely did not happen
}

func (h *History) now() int64 { return time.Since(h.base).Nanoseconds() }

// Base is the time origin of the history's timestamps.
func (h *History) Base() time.Time { return h.base }

// Record adds an operation observed outside RunClients (e.g. final reads).
func (h *History) Record(client int, in Op, out Output, call, ret int64) {
	h.add(client, in, out, call, ret)
}

func (h *History) add(client int, in Op, out Output, call, ret int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if out.Unknown {
		h.Unknown++
		ret = math.MaxInt64 / 2 // may take effect any time after the call
	} else {
		h.OK++
	}
	h.Ops = append(h.Ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
}

// Check runs porcupine over the history.
func (h *History) Check(timeout time.Duration) error {
	h.mu.Lock()
	ops := append([]porcupine.Operation(nil), h.Ops...)
	h.mu.Unlock()
	switch res := porcupine.CheckOperationsTimeout(Model, ops, timeout); res {
	case porcupine.Ok:
		return nil
	case porcupine.Illegal:
		return fmt.Errorf("history of %d operations is NOT linearizable", len(ops))
	default:
		return fmt.Errorf("linearizability check of %d operations timed out after %v", len(ops), timeout)
	}
}

// ClientConfig drives RunClients.
type ClientConfig struct {
	Clients     int
	Keys        int
	SessionBase uint64 // sessions are SessionBase+1..SessionBase+Clients
	// Targets returns the members a client may talk to now.
	Targets func() []Target
	// AttemptTimeout bounds one attempt (default 1s).
	AttemptTimeout time.Duration
	Seed           uint64
}

// RunClients runs concurrent clients until ctx ends and returns their
// history. Writes are retried (same Session/Seq, any member) until they
// succeed or ctx ends.
func RunClients(ctx context.Context, cfg ClientConfig) *History {
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = time.Second
	}
	h := &History{base: time.Now()}
	var wg sync.WaitGroup
	for c := 0; c < cfg.Clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runClient(ctx, cfg, h, c)
		}()
	}
	wg.Wait()
	return h
}

func runClient(ctx context.Context, cfg ClientConfig, h *History, client int) {
	rnd := rand.New(rand.NewPCG(cfg.Seed, uint64(client)))
	session := cfg.SessionBase + uint64(client) + 1
	var seq uint64
	for n := 0; ctx.Err() == nil; n++ {
		op := Op{Key: fmt.Sprintf("k%d", rnd.IntN(cfg.Keys))}
		switch r := rnd.IntN(10); {
		case r < 4:
			op.Kind, op.Value = "append", fmt.Sprintf("%d.%d,", client, n)
		case r < 6:
			op.Kind, op.Value = "put", fmt.Sprintf("%d.%d", client, n)
		case r < 8:
			op.Kind = "get" // through the log
		default:
			readLocal(ctx, cfg, h, rnd, client, op.Key)
			continue
		}
		seq++
		call := h.now()
		unknown, done := false, false
		for !done && ctx.Err() == nil {
			ts := cfg.Targets()
			if len(ts) == 0 {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			actx, cancel := context.WithTimeout(ctx, cfg.AttemptTimeout)
			res, err := ts[rnd.IntN(len(ts))].Propose(actx, raftcore.Proposal{Session: session, Seq: seq, Data: op.Encode()})
			cancel()
			if err == nil {
				h.add(client, op, Output{Value: string(res.Value)}, call, h.now())
				done = true
				continue
			}
			if !definitelyNotApplied(err) {
				unknown = true
			}
			time.Sleep(time.Duration(5+rnd.IntN(20)) * time.Millisecond)
		}
		if !done && unknown {
			h.add(client, op, Output{Unknown: true}, call, 0)
		} else if !done {
			h.mu.Lock()
			h.Failed++
			h.mu.Unlock()
		}
	}
}

// definitelyNotApplied reports errors after which the proposal is known not
// to be in the log.
func definitelyNotApplied(err error) bool {
	return errors.Is(err, raftcore.ErrNoLeader) || errors.Is(err, raftcore.ErrGroupFull) ||
		errors.Is(err, raftcore.ErrTooLarge)
}

func readLocal(ctx context.Context, cfg ClientConfig, h *History, rnd *rand.Rand, client int, key string) {
	ts := cfg.Targets()
	if len(ts) == 0 {
		time.Sleep(10 * time.Millisecond)
		return
	}
	call := h.now()
	actx, cancel := context.WithTimeout(ctx, cfg.AttemptTimeout)
	v, err := ts[rnd.IntN(len(ts))].Read(actx, key)
	cancel()
	if err != nil {
		// A failed read has no effect: leave it out of the history.
		h.mu.Lock()
		h.Failed++
		h.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
		return
	}
	h.add(client, Op{Kind: "get", Key: key}, Output{Value: v}, call, h.now())
}
