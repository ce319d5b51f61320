// Package raftnode is a small standalone ordering process used by
// multi-process tests and the raft benchmark: one raftcore.Node with one
// group running the kvtest KV state machine, raft over gRPC, and an HTTP
// API for clients:
//
//	POST /propose?session=S&seq=N   body = kvtest.Op JSON -> 200 body = result value
//	GET  /read?key=K                 linearizable read (ReadIndex) -> 200 body = value
//	GET  /status                     JSON raftcore.Status
//
// Errors answer 503 with header X-Raft-Outcome: "none" (definitely not
// applied) or "unknown", or 422 with "applied" (the state machine returned
// an error), and the error text as body.
//
// Raft traffic is mutual TLS by default: -pki-dir names a cluster CA (see
// internal/pki, 'smr-cri pki init') from which the process issues its own
// member certificate; -insecure-raft (tests, benchmarks) turns it off.
package raftnode

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // only routed with -pprof
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/raftcore/transport"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// ParsePeers parses "1=host:port,2=host:port".
func ParsePeers(s string) (map[uint64]string, error) {
	out := map[uint64]string{}
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || addr == "" {
			return nil, fmt.Errorf("peer %q: want id=host:port", part)
		}
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("peer %q: id must be a positive integer", part)
		}
		if _, dup := out[n]; dup {
			return nil, fmt.Errorf("peer id %d listed twice", n)
		}
		out[n] = addr
	}
	if len(out) == 0 {
		return nil, errors.New("no peers given")
	}
	return out, nil
}

// Run parses args and serves until ctx ends.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("raftnode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.Uint64("id", 0, "this member's id")
	peersFlag := fs.String("peers", "", "raft peers: 1=host:port,2=host:port,... (including self)")
	httpAddr := fs.String("http", "127.0.0.1:0", "client HTTP listen address")
	grpcAddr := fs.String("grpc", "", "client gRPC listen address (optional)")
	dataDir := fs.String("data", "", "data directory (WAL, snapshots)")
	group := fs.String("group", "kv", "group name")
	tick := fs.Duration("tick", 100*time.Millisecond, "raft tick interval (heartbeat; election = 10 ticks, as etcd defaults)")
	snapEvery := fs.Uint64("snapshot-every", 10000, "snapshot every N applied entries (0 = never)")
	join := fs.Bool("join", false, "join an existing group (after AddMember)")
	verbose := fs.Bool("v", false, "log raft at info level to stderr")
	pprof := fs.Bool("pprof", false, "serve /debug/pprof on the HTTP address")
	pkiDir := fs.String("pki-dir", "", "directory holding the cluster CA (ca.crt, ca.key): raft traffic is mutual TLS with a member certificate issued from it")
	certValidity := fs.Duration("cert-validity", pki.DefaultMemberValidity, "lifetime of this member's certificate (re-issued when a third remains)")
	noAdvertise := fs.Bool("no-advertise", false, "announce no listen address to peers: they reach this member only at the -peers address (a test that routes each link through its own proxy)")
	insecureRaft := fs.Bool("insecure-raft", false, "plaintext raft traffic: anyone who reaches the raft port can inject entries (tests, benchmarks only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	peers, err := ParsePeers(*peersFlag)
	if err != nil {
		return fmt.Errorf("-peers: %w", err)
	}
	if *id == 0 || peers[*id] == "" {
		return fmt.Errorf("-id %d must be one of -peers", *id)
	}
	if *dataDir == "" {
		return errors.New("-data is required")
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	var grp atomic.Pointer[raftcore.Group]
	tcfg, err := raftTLS(*pkiDir, *insecureRaft, *certValidity, pki.Identity{Group: *group, Member: *id}, &grp, log)
	if err != nil {
		return err
	}
	tcfg.Listen, tcfg.Logger, tcfg.NoAdvertise = peers[*id], log, *noAdvertise
	tr, err := transport.New(tcfg)
	if err != nil {
		return err
	}
	node, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: *dataDir, Transport: tr, Logger: log, TickInterval: *tick})
	if err != nil {
		return err
	}
	defer node.Close()
	kv := kvtest.NewKV()
	g, err := node.StartGroup(raftcore.GroupConfig{Name: *group, SelfID: *id, Peers: peers, Join: *join, SnapshotEvery: *snapEvery}, kv)
	if err != nil {
		return err
	}
	grp.Store(g)
	lis, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("listen http: %w", err)
	}
	h := handler(g, kv)
	if *pprof {
		h.Handle("/debug/pprof/", http.DefaultServeMux)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	grpcInfo := ""
	if *grpcAddr != "" {
		glis, err := net.Listen("tcp", *grpcAddr)
		if err != nil {
			return fmt.Errorf("listen grpc: %w", err)
		}
		gs := serveGRPC(glis, g, kv)
		defer gs.Stop()
		grpcInfo = " grpc=" + glis.Addr().String()
	}
	// The first stdout line tells a parent process where clients connect.
	fmt.Fprintf(stdout, "http=%s raft=%s%s\n", lis.Addr(), peers[*id], grpcInfo)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	case err := <-errc:
		return err
	}
}

// raftTLS returns the transport's security settings: mutual TLS with a
// certificate for self issued from the CA in pkiDir (the default), or
// plaintext when insecure is set explicitly. A peer must prove, per
// message, that it is the sending member of this group, and be one of the
// group's current members.
func raftTLS(pkiDir string, insecure bool, validity time.Duration, self pki.Identity, grp *atomic.Pointer[raftcore.Group], log *slog.Logger) (transport.Config, error) {
	switch {
	case insecure && pkiDir != "":
		return transport.Config{}, errors.New("-insecure-raft and -pki-dir exclude each other")
	case insecure:
		log.Warn("INSECURE: raft traffic is plaintext and unauthenticated (-insecure-raft); any process that reaches the raft port can inject entries into the group's log")
		return transport.Config{}, nil
	case pkiDir == "":
		return transport.Config{}, errors.New("raft traffic is mutual TLS by default: pass -pki-dir DIR (a cluster CA, see 'smr-cri pki init') or, for tests only, -insecure-raft")
	}
	ca, err := pki.LoadCA(pkiDir)
	if err != nil {
		return transport.Config{}, fmt.Errorf("-pki-dir: %w", err)
	}
	// A removed member's streams are refused within a second.
	isMember := raftcore.MemberCheck(grp, self.Group, time.Second)
	m, err := pki.NewMember(ca, []pki.Identity{self}, validity, isMember)
	if err != nil {
		return transport.Config{}, fmt.Errorf("issue member certificate: %w", err)
	}
	return transport.Config{TLS: m.TLS, AuthorizePeer: m.Authorize}, nil
}

func handler(g *raftcore.Group, kv *kvtest.KV) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /propose", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		session, err1 := parseOptUint(q.Get("session"))
		seq, err2 := parseOptUint(q.Get("seq"))
		if err := errors.Join(err1, err2); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		data, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res, err := g.Propose(r.Context(), raftcore.Proposal{Session: session, Seq: seq, Data: data})
		if err != nil {
			writeErr(w, err)
			return
		}
		w.Header().Set("X-Raft-Index", strconv.FormatUint(res.Index, 10))
		w.Write(res.Value)
	})
	mux.HandleFunc("GET /read", func(w http.ResponseWriter, r *http.Request) {
		if _, err := g.ReadIndex(r.Context()); err != nil {
			writeErr(w, err)
			return
		}
		io.WriteString(w, kv.Get(r.URL.Query().Get("key")))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(g.Status())
	})
	return mux
}

func parseOptUint(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad number %q", s)
	}
	return v, nil
}

// Outcomes of a failed Propose or ReadIndex, told to clients by both APIs.
const (
	outcomeApplied = "applied" // applied; the state machine returned an error
	outcomeNone    = "none"    // definitely not applied
	outcomeUnknown = "unknown"
)

func outcome(err error) string {
	var ae *raftcore.ApplyError
	switch {
	case errors.As(err, &ae):
		return outcomeApplied
	case errors.Is(err, raftcore.ErrNoLeader), errors.Is(err, raftcore.ErrGroupFull), errors.Is(err, raftcore.ErrTooLarge):
		return outcomeNone
	}
	return outcomeUnknown
}

func writeErr(w http.ResponseWriter, err error) {
	o := outcome(err)
	w.Header().Set("X-Raft-Outcome", o)
	code := http.StatusServiceUnavailable
	if o == outcomeApplied {
		code = http.StatusUnprocessableEntity
	}
	http.Error(w, err.Error(), code)
}
