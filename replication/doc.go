// Package replication joins the parts of smr-cri into transparent state
// machine replication of an unmodified container.
//
// For a pod labelled smr.io/replicate=true (ParsePod reads the contract, see
// CONTRACT.md), StartPod runs:
//
//   - a Server per replicated port: it frames each redirected client
//     connection into requests (package framing), proposes them to the pod's
//     raft group (Orderer, satisfied by *raftcore.Group) and writes the
//     result back to the client. Read-only requests skip the log: ReadIndex,
//     then a local execution on the session's own app connection, beside
//     the serial executor (reads change no state, so reads of different
//     sessions run at once and do not wait for the write being applied).
//   - an Executor, the group's raftcore.StateMachine: every replica applies
//     every committed entry strictly in log order, one at a time, writing
//     the client's bytes to its own app and reading exactly one complete
//     response before the next entry.
//
// A client connection is a replicated session: OPEN, REQUEST and CLOSE are
// log entries (format in entry.go), so every replica opens, uses and closes
// its own app connection at the same log positions, and connection state
// (Redis SELECT, MULTI/EXEC, WATCH, HTTP keep-alive) stays equal. Sessions
// are (origin << 48 | random) IDs; raftcore de-duplicates retried proposals
// by (session, seq), so a proposal whose outcome was unknown is retried
// safely, until the session's CLOSE (proposed with EndSession) drops that
// state on every replica. A replica orders RESET when it starts, ending the
// sessions of its previous run (app connections and de-duplication state,
// EndOriginSessions) on every replica. A replica that opens a new app
// connection for a session still open elsewhere (a restart of smr-cri, a
// snapshot restore) replays the session's connection state, which
// replication/connstate follows from the log, or ends the session on every
// replica with an END entry when it cannot (sessions.go).
//
// The app is opaque, so there is no snapshot: the group keeps its whole log,
// and a restarted replica with a fresh app container rebuilds the app's
// state by replaying the log before it serves (raftcore replays its WAL into
// the Executor at start). A replica whose app is not reachable yet waits
// (AppWait), then queues committed entries (bounded by MaxQueue) and replays
// them when the app accepts connections; past the bound it reports itself
// diverged (Health) instead of skipping entries.
package replication
