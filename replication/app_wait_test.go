package replication

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
)

// A snapshot restore at a member's start waits for an app whose container
// kubelet has not created yet. Meanwhile kubelet's CreateContainer fences
// the executor (ContainerCreating) and status reads its state: neither may
// wait behind the restore (a CI cluster restart deadlocked on this until
// kubelet's CRI deadline), and stopping the pod ends the wait.
func TestRestoreWaitingForAppBlocksNothing(t *testing.T) {
	x, err := NewExecutor(ExecutorConfig{Group: "g", Self: 1, Ports: []Port{{6379, framing.ProtoRESP}}, Dialer: failDialer{},
		RetryInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.EnableSnapshots(SnapshotConfig{}); err != nil {
		t.Fatal(err)
	}
	restored := make(chan error, 1)
	go func() { restored <- x.RestoreFrom(7, bytes.NewReader([]byte(execSnapMagic+"\x00"))) }()

	steps := []struct {
		name string
		do   func()
	}{
		{"Fence", x.Fence},
		{"ReplicaState", func() {
			if s := x.ReplicaState(); s != StateRebuilding {
				t.Errorf("ReplicaState after Fence = %q, want %q", s, StateRebuilding)
			}
		}},
		{"Health", func() {
			if err := x.Health(); !errors.Is(err, ErrNotReady) {
				t.Errorf("Health after Fence = %v, want ErrNotReady", err)
			}
		}},
	}
	for _, s := range steps {
		done := make(chan struct{})
		go func() { s.do(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s waited behind a restore that waits for the app", s.name)
		}
	}
	select {
	case err := <-restored:
		t.Fatalf("restore returned before the app came up or the pod stopped: %v", err)
	default:
	}
	x.stopWaiting()
	select {
	case err := <-restored:
		if err == nil || !strings.Contains(err.Error(), "closed while waiting for the app") {
			t.Errorf("restore after stop = %v, want the wait ended by the stop", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stopping did not end the restore's wait for the app")
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
}

// An app that stays unreachable is retried every RetryInterval; the warning
// says so once per unreachableLogEvery with the count, not once per retry.
func TestAppUnreachableWarningRateLimited(t *testing.T) {
	var logs syncBuffer
	x, err := NewExecutor(ExecutorConfig{Group: "g", Self: 1, Ports: []Port{{6379, framing.ProtoRESP}}, Dialer: failDialer{},
		AppWait: time.Millisecond, RetryInterval: time.Millisecond, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	open := Op{Kind: KindOpen, Port: 6379, Protocol: framing.ProtoRESP}.Encode()
	set := Op{Kind: KindRequest, Name: "SET", Raw: []byte("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")}.Encode()
	for i, data := range [][]byte{open, set} {
		if _, err := x.Apply(raftcore.Entry{Index: uint64(i + 1), Session: 1, Seq: uint64(i + 1), Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // about 300 retries
	if n := strings.Count(logs.String(), "app unreachable"); n != 1 {
		t.Errorf("%d \"app unreachable\" warnings in 300 retries, want 1:\n%s", n, logs.String())
	}
}
