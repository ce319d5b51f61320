package replication

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
)

func TestReadinessOf(t *testing.T) {
	broken := errors.New("queue overflowed")
	tests := []struct {
		name       string
		in         readinessInput
		serving    bool
		reason     string
		msgContain string
	}{
		{"fresh member of a new group, no leader yet", readinessInput{state: StateServing, hasStatus: true, maxLag: 1000,
			status: raftcore.Status{Commit: 3, Applied: 3}}, true, ReadyServing, "at the log's state"},
		{"fresh member, nothing committed at all", readinessInput{state: StateServing, hasStatus: true, maxLag: 1000}, true, ReadyServing, ""},
		{"no raft status reported", readinessInput{state: StateServing, maxLag: 1000}, true, ReadyServing, ""},
		{"a batch behind under load", readinessInput{state: StateServing, hasStatus: true, maxLag: 1000,
			status: raftcore.Status{Commit: 51000, Applied: 50000}}, true, ReadyServing, ""},
		{"replaying a long log", readinessInput{state: StateServing, hasStatus: true, maxLag: 1000,
			status: raftcore.Status{Commit: 51001, Applied: 50000}}, false, ReadyBehind, "up to index 50000 of 51001"},
		{"applied ahead of a stale commit", readinessInput{state: StateServing, hasStatus: true, maxLag: 1000,
			status: raftcore.Status{Commit: 10, Applied: 5000}}, true, ReadyServing, ""},
		{"entries wait for the app", readinessInput{state: StateRebuilding, health: errors.New("3 entries wait for the app")},
			false, ReadyRebuilding, "3 entries wait"},
		{"repair in progress", readinessInput{state: StateServing, repairing: true,
			cause: Cause{Kind: CauseContainerExit, Detail: "container redis exited"}}, false, ReadyRebuilding, "cause container-exit"},
		{"broken executor", readinessInput{state: StateBroken, health: broken}, false, ReadyBroken, "queue overflowed"},
		{"broken beats repairing", readinessInput{state: StateBroken, repairing: true}, false, ReadyBroken, ""},
		{"rebuild failed", readinessInput{state: StateRebuilding, repairing: true, failed: errors.New("listen: address in use")},
			false, ReadyBroken, "repair failed: listen"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := readinessOf(tc.in)
			if r.Serving != tc.serving || r.Reason != tc.reason || !strings.Contains(r.Message, tc.msgContain) || r.Message == "" {
				t.Errorf("readinessOf = %+v, want serving=%v reason=%s message containing %q", r, tc.serving, tc.reason, tc.msgContain)
			}
			if !r.Serving {
				err := r.errNotServing()
				if !errors.Is(err, ErrNotReady) || !errors.Is(err, framing.ErrUnavailable) {
					t.Errorf("refusal %v does not wrap ErrNotReady", err)
				}
				if !strings.Contains(err.Error(), "replica "+strings.ToLower(tc.reason)) || !strings.Contains(err.Error(), r.Message) {
					t.Errorf("refusal %q does not name the state and the reason", err)
				}
			}
		})
	}
}

// blockingOrderer never orders anything until release is closed: a group
// still waiting for its leader, so the pod's RESET stays pending.
type blockingOrderer struct{ release chan struct{} }

func (o *blockingOrderer) Propose(ctx context.Context, _ raftcore.Proposal) (raftcore.Result, error) {
	select {
	case <-o.release:
		return raftcore.Result{}, nil
	case <-ctx.Done():
		return raftcore.Result{}, ctx.Err()
	}
}

func (o *blockingOrderer) ReadIndex(ctx context.Context) (uint64, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

// A new client of a replica that does not serve is answered at once with
// the reason, in its protocol; one that arrives while the replica serves
// but its RESET is not ordered yet is held (as the backlog held it), and is
// refused as soon as the replica stops serving.
func TestPodRefusesClientsWhileNotServing(t *testing.T) {
	tests := []struct {
		name     string
		port     Port
		request  string
		wantHead string
	}{
		{"resp", Port{Number: 6379, Protocol: framing.ProtoRESP}, "*1\r\n$4\r\nPING\r\n",
			"-ERR smr-cri: replication unavailable: app on this replica is not ready: replica rebuilding: repair (cause container-exit"},
		{"http", Port{Number: 8080, Protocol: framing.ProtoHTTP}, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 503 Service Unavailable\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			verdict := Readiness{Serving: true, Reason: ReadyServing, Message: "ok"}
			set := func(r Readiness) { mu.Lock(); verdict = r; mu.Unlock() }
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			o := &blockingOrderer{release: make(chan struct{})}
			pod, err := StartPod(context.Background(), PodConfig{
				Spec:     Spec{Namespace: "ns", Group: "g", MemberID: 1, Ports: []Port{tc.port}},
				Listener: ln, Dialer: &addrDialer{addr: "127.0.0.1:1"},
				StartGroup: func(raftcore.StateMachine) (Orderer, func() error, error) {
					return o, func() error { return nil }, nil
				},
				Readiness: func() Readiness { mu.Lock(); defer mu.Unlock(); return verdict },
			})
			if err != nil {
				t.Fatal(err)
			}
			defer pod.Stop()
			rebuilding := readinessOf(readinessInput{repairing: true, cause: Cause{Kind: CauseContainerExit, Detail: "container app exited"}})

			// Serving, RESET pending: the client is accepted and held.
			held, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			if _, err := held.Write([]byte(tc.request)); err != nil {
				t.Fatal(err)
			}
			got := make(chan string, 1)
			go func() { b, _ := io.ReadAll(held); got <- string(b) }()
			select {
			case s := <-got:
				t.Fatalf("a client of a serving replica was answered before its RESET: %q", s)
			case <-time.After(300 * time.Millisecond):
			}
			// The replica stops serving: the held client is told why.
			set(rebuilding)
			if s := <-got; !strings.HasPrefix(s, tc.wantHead) || !strings.Contains(s, "cause container-exit") {
				t.Errorf("held client got %q, want %q... naming the cause", s, tc.wantHead)
			}
			// A new client is refused at once.
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte(tc.request)); err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(bufio.NewReader(c))
			if err != nil || !strings.HasPrefix(string(b), tc.wantHead) {
				t.Errorf("new client got %q (%v), want %q...", b, err, tc.wantHead)
			}
		})
	}
}

// Clients held for a starting replica's RESET are bounded like the
// kernel's backlog that held them before: beyond the bound a new client is
// refused with the reason.
func TestPodBoundsClientsWaitingForReset(t *testing.T) {
	defer func(n int32) { maxHeldClients = n }(maxHeldClients)
	maxHeldClients = 2
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &blockingOrderer{release: make(chan struct{})}
	pod, err := StartPod(context.Background(), PodConfig{
		Spec:     Spec{Namespace: "ns", Group: "g", MemberID: 1, Ports: []Port{{Number: 6379, Protocol: framing.ProtoRESP}}},
		Listener: ln, Dialer: &addrDialer{addr: "127.0.0.1:1"},
		StartGroup: func(raftcore.StateMachine) (Orderer, func() error, error) {
			return o, func() error { return nil }, nil
		},
		Readiness: func() Readiness { return Readiness{Serving: true, Reason: ReadyServing} },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Stop()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	var reply string
	waitFor(t, "a third client refused", func() bool {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		b, _ := io.ReadAll(c)
		reply = string(b)
		return reply != ""
	})
	if !strings.HasPrefix(reply, "-ERR smr-cri: replication unavailable: app on this replica is not ready: replica starting (2 clients wait for it already); try another replica") {
		t.Errorf("third client got %q", reply)
	}
}
