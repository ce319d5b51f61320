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
//     then a local execution once the app answered every entry up to that
//     index, on a connection in the session's state (reads of many sessions
//     are pipelined on one, readpipe.go), beside the executor's writes.
//   - an Executor, the group's raftcore.StateMachine (and BatchStateMachine):
//     every replica applies every committed entry in log order, writing the
//     client's bytes to its own app. Runs of entries are pipelined: written
//     to one app connection, their responses matched in order, never two
//     connections with requests outstanding at once (pipeline.go has the
//     rule and why it keeps the app's order the log's). Sessions in the same
//     connection state share a connection; a request that changes it runs
//     on the session's own connection.
//
// A client connection is a replicated session: OPEN, REQUEST and CLOSE are
// log entries (format in entry.go), so every replica opens, uses and closes
// the session at the same log positions, and its connection state (Redis
// SELECT, MULTI/EXEC, WATCH, HTTP keep-alive) stays equal: replication/
// connstate follows it from the log, and the executor runs each request on
// an app connection in exactly that state. Sessions
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
// The app's state is captured and restored through its own protocol
// (snapshot.go, replication/appstate), so the log is compacted and a new or
// rebuilt replica installs a snapshot and follows the log from there; an
// HTTP app without the snapshot contract keeps the whole log. A replica
// whose app is not reachable yet waits (AppWait), then queues committed
// entries (bounded by MaxQueue) and replays them when the app accepts
// connections; past the bound it repairs itself (repair.go) instead of
// skipping entries. The progress record (progress.go) says how far the
// running app got, with the entries in flight at a crash repaired, not
// guessed.
package replication
