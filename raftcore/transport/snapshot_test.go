package transport

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/raftcore"
	"go.etcd.io/raft/v3/raftpb"
)

// snapHandler receives snapshot streams and records the chunk sizes it got.
type snapHandler struct {
	*recHandler
	mu       sync.Mutex
	received []byte
	reads    int
	maxRead  int
	fail     error
	reports  chan bool
}

func newSnapHandler() *snapHandler {
	return &snapHandler{recHandler: newRecHandler(), reports: make(chan bool, 8)}
}

func (h *snapHandler) ReportSnapshot(_ string, _ uint64, ok bool) { h.reports <- ok }

func (h *snapHandler) ReceiveSnapshot(_ string, m *raftpb.Message, body io.Reader) error {
	buf := make([]byte, 4<<20)
	var got bytes.Buffer
	for {
		n, err := body.Read(buf)
		got.Write(buf[:n])
		h.mu.Lock()
		h.reads++
		h.maxRead = max(h.maxRead, n)
		h.mu.Unlock()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.received = got.Bytes()
	if m.GetType() != raftpb.MsgSnap {
		return errors.New("not a snapshot")
	}
	return h.fail
}

func snapMsg(from, to uint64) *raftpb.Message {
	return &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: new(from), To: new(to), Term: new(uint64(1)),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(100)), Term: new(uint64(1))}}}
}

// A state larger than several chunks crosses in chunks (never one message)
// and arrives whole; the sender learns the outcome.
func TestSnapshotStream(t *testing.T) {
	srvH, cliH := newSnapHandler(), newSnapHandler()
	srv := startTransport(t, Config{Listen: "127.0.0.1:0"}, srvH)
	cli := startTransport(t, Config{}, cliH)
	state := bytes.Repeat([]byte("0123456789abcdef"), (5<<20)/16+7) // 5 MiB and a bit
	done := make(chan int64, 1)
	cli.SendSnapshot("kv", 1, srv.Addr(), snapMsg(2, 1), raftcore.SnapshotBody{
		Size: int64(len(state)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(state)), nil },
		Done: func(sent int64, err error) {
			if err != nil {
				t.Errorf("transfer: %v", err)
			}
			done <- sent
		},
	})
	if sent := <-done; sent != int64(len(state)) {
		t.Fatalf("sent %d bytes, want %d", sent, len(state))
	}
	if ok := <-cliH.reports; !ok {
		t.Fatal("snapshot reported failed")
	}
	srvH.mu.Lock()
	defer srvH.mu.Unlock()
	if !bytes.Equal(srvH.received, state) {
		t.Fatalf("received %d bytes, not the state", len(srvH.received))
	}
	if srvH.maxRead > snapChunkBytes || srvH.reads < len(state)/snapChunkBytes {
		t.Fatalf("state came in %d reads of at most %d bytes: not chunked", srvH.reads, srvH.maxRead)
	}
}

// A receiver that refuses the state (hash mismatch, group gone) makes the
// sender report the snapshot failed, so raft retries it later.
func TestSnapshotStreamRefused(t *testing.T) {
	srvH, cliH := newSnapHandler(), newSnapHandler()
	srvH.fail = errors.New("state does not match its reference")
	srv := startTransport(t, Config{Listen: "127.0.0.1:0"}, srvH)
	cli := startTransport(t, Config{}, cliH)
	errc := make(chan error, 1)
	cli.SendSnapshot("kv", 1, srv.Addr(), snapMsg(2, 1), raftcore.SnapshotBody{
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader([]byte("abc"))), nil },
		Done: func(_ int64, err error) { errc <- err },
	})
	if err := <-errc; err == nil {
		t.Fatal("refused transfer reported as sent")
	}
	if ok := <-cliH.reports; ok {
		t.Fatal("refused snapshot reported ok")
	}
}

// Snapshots only go to, and are only accepted from, authenticated members.
func TestSnapshotStreamTLS(t *testing.T) {
	mk := memberTLS(t)
	send := func(t *testing.T, srvID, cliID pki.Identity, from, to uint64) (error, *snapHandler) {
		srvH := newSnapHandler()
		srv := startTransport(t, Config{Listen: "127.0.0.1:0", TLS: mk(srvID), AuthorizePeer: pki.Authorize}, srvH)
		cli := startTransport(t, Config{TLS: mk(cliID), AuthorizePeer: pki.Authorize}, newSnapHandler())
		errc := make(chan error, 1)
		cli.SendSnapshot("kv", to, srv.Addr(), snapMsg(from, to), raftcore.SnapshotBody{
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader([]byte("state"))), nil },
			Done: func(_ int64, err error) { errc <- err },
		})
		err := <-errc
		srv.Close()
		return err, srvH
	}
	t.Run("members", func(t *testing.T) {
		err, h := send(t, pki.Identity{Group: "kv", Member: 1}, pki.Identity{Group: "kv", Member: 2}, 2, 1)
		if err != nil || string(h.received) != "state" {
			t.Fatalf("transfer between members: %v, received %q", err, h.received)
		}
	})
	t.Run("server is not the addressee", func(t *testing.T) {
		err, h := send(t, pki.Identity{Group: "kv", Member: 3}, pki.Identity{Group: "kv", Member: 2}, 2, 1)
		if !errors.Is(err, ErrPeerRefused) || h.received != nil {
			t.Fatalf("sent to the wrong member: %v, received %q", err, h.received)
		}
	})
	t.Run("sender is not who it claims", func(t *testing.T) {
		err, h := send(t, pki.Identity{Group: "kv", Member: 1}, pki.Identity{Group: "kv", Member: 2}, 3, 1)
		if err == nil || h.received != nil {
			t.Fatalf("accepted a forged sender: %v, received %q", err, h.received)
		}
	})
}
