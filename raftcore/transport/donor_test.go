package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"go.etcd.io/raft/v3/raftpb"
)

// stateHandler serves one state to FetchState requests.
type stateHandler struct {
	*recHandler
	state     []byte
	requester uint64 // of the last request
	minIndex  uint64
}

func (h *stateHandler) OpenState(_ context.Context, _ string, requester, minIndex uint64) (*raftpb.Snapshot, io.ReadCloser, error) {
	h.requester, h.minIndex = requester, minIndex
	return &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(100)), Term: new(uint64(1))}, Data: []byte("ref")},
		io.NopCloser(bytes.NewReader(h.state)), nil
}

// A donor's state crosses in chunks and arrives whole; only a member of
// the group may ask, and only the member asked for may answer.
func TestFetchState(t *testing.T) {
	mk := memberTLS(t)
	state := bytes.Repeat([]byte("0123456789abcdef"), (3<<20)/16+5) // 3 MiB and a bit
	kv := func(id uint64) pki.Identity { return pki.Identity{Group: "kv", Member: id} }
	for _, tc := range []struct {
		name           string
		tls            bool
		donorID, cliID pki.Identity
		from, to       uint64
		wantErr        error // nil: the state arrives
	}{
		{name: "plain", from: 3, to: 1},
		{name: "members over mTLS", tls: true, donorID: kv(1), cliID: kv(3), from: 3, to: 1},
		{name: "requester is not who it claims", tls: true, donorID: kv(1), cliID: kv(3), from: 2, to: 1, wantErr: errAny},
		{name: "requester of another group", tls: true, donorID: kv(1), cliID: pki.Identity{Group: "other", Member: 3}, from: 3, to: 1, wantErr: errAny},
		{name: "donor is not the member asked", tls: true, donorID: kv(2), cliID: kv(3), from: 3, to: 1, wantErr: ErrPeerRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &stateHandler{recHandler: newRecHandler(), state: state}
			srvCfg, cliCfg := Config{Listen: "127.0.0.1:0"}, Config{}
			if tc.tls {
				srvCfg.TLS, srvCfg.AuthorizePeer = mk(tc.donorID), pki.Authorize
				cliCfg.TLS, cliCfg.AuthorizePeer = mk(tc.cliID), pki.Authorize
			}
			srv := startTransport(t, srvCfg, h)
			cli := startTransport(t, cliCfg, newRecHandler())
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			snap, body, err := cli.FetchState(ctx, "kv", tc.from, tc.to, srv.Addr(), 42)
			var got []byte
			if err == nil {
				got, err = io.ReadAll(body)
				body.Close()
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("fetch: %v", err)
			case tc.wantErr == nil:
				if !bytes.Equal(got, state) || snap.GetMetadata().GetIndex() != 100 || h.minIndex != 42 || h.requester != tc.from {
					t.Fatalf("got %d bytes at index %d (request from %d, min %d): not the donor's state",
						len(got), snap.GetMetadata().GetIndex(), h.requester, h.minIndex)
				}
			case err == nil:
				t.Fatalf("fetched %d bytes, want refused", len(got))
			case tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// errAny: any error will do (the refusal comes from the other side).
var errAny = errors.New("any error")
