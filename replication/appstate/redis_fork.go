package appstate

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/smr-io/smr-cri/replication/appstate/hostproc"
)

// The copy-on-write digest: instead of reading every key through the
// protocol while the group waits (redisApp.Digest), the caller, between
// two applied log entries, asks Redis for BGSAVE: Redis forks at that
// point of its command stream, and the child writes exactly that state to
// its dump file while the parent goes on serving. The group waits only for
// the fork (about a millisecond per 100k small keys: page tables are
// copied, not data). The file is then read through the host's view of the
// app container (/proc/<pid>/cwd: Redis chdir()s to its dir), decoded by
// package rdb, and digested with the very code of the command path, so
// both paths give equal digests for equal states.
//
// What it costs the app: BGSAVE replaces the app's dump file (its
// "dbfilename" in its "dir") with the state at the audit, takes disk space
// for one more copy of the dataset while the child writes it, and memory
// for the pages written during the save (copy-on-write). An app that must
// keep its own dump file opts out with the pod contract (CONTRACT.md).

// ErrNoFork: the copy-on-write capture is not possible for this app now;
// the caller falls back to the command digest (the error says why).
var ErrNoFork = errors.New("appstate: no copy-on-write capture")

// ForkDigester is an App that can digest a copy-on-write capture.
type ForkDigester interface {
	// ForkDigest forks the app's state as it is now and returns at once
	// (the caller holds the app still only for this call). A wrapped
	// ErrNoFork means nothing was started: digest another way.
	ForkDigest(ctx context.Context) (*ForkedState, error)
}

// NetnsPather is implemented by dialers that reach the app in a network
// namespace (replication.NetnsDialer); others reach it in smr-cri's own.
type NetnsPather interface{ NetnsPath() string }

// ForkedState is a capture in progress.
type ForkedState struct {
	rc      *respConn
	file    string // host path of the dump file
	saves   int64  // rdb_saves before our BGSAVE
	forkAt  time.Time
	runID   string
	process string // for messages: "redis pid N (host pid M)"
}

// ForkedAt is when the BGSAVE was sent.
func (f *ForkedState) ForkedAt() time.Time { return f.forkAt }

// Close releases the capture (its connection) without a digest.
func (f *ForkedState) Close() { f.rc.Close() }

// forkTarget is the located dump file of one Redis run (cached per app).
type forkTarget struct {
	runID   string
	hostPID int
	nsPID   int
	file    string
}

func (a *redisApp) netnsPath() string {
	if np, ok := a.cfg.Dialer.(NetnsPather); ok {
		return np.NetnsPath()
	}
	return ""
}

// ForkDigest implements ForkDigester.
func (a *redisApp) ForkDigest(ctx context.Context) (*ForkedState, error) {
	rc, err := dialRESP(ctx, a.cfg)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			rc.Close()
		}
	}()
	// Once this Redis run was located, one round trip: which run answers,
	// where the save counter stands, the fork. Before that (or after a
	// restart of the app), the process is found first, so an app that
	// cannot be read from this host is never asked to save.
	a.forkMu.Lock()
	cached := a.fork
	a.forkMu.Unlock()
	if cached.runID == "" {
		if _, err := a.locate(ctx, rc, nil); err != nil {
			return nil, err
		}
	}
	rc.send([]byte("INFO"), []byte("server"))
	rc.send([]byte("INFO"), []byte("persistence"))
	rc.send([]byte("BGSAVE"))
	forkAt := time.Now()
	vs, err := rc.exec(ctx)
	if err != nil {
		return nil, err
	}
	t, err := a.locate(ctx, rc, vs[0].str)
	if err != nil {
		return nil, err // a save may run now; the fallback's command digest is not affected
	}
	vs = vs[1:]
	if err := vs[1].err(); err != nil {
		// Already saving (its own save, a replica's sync, an AOF rewrite):
		// another fork would not hold the state at this point.
		return nil, fmt.Errorf("%w: BGSAVE refused: %v", ErrNoFork, err)
	}
	info := infoFields(vs[0].str)
	saves, err := strconv.ParseInt(info["rdb_saves"], 10, 64)
	if err != nil {
		// BGSAVE started but this Redis (< 7.0) does not count saves: it
		// cannot tell ours from a later one. Let the save run.
		return nil, fmt.Errorf("%w: INFO persistence has no rdb_saves (Redis < 7.0)", ErrNoFork)
	}
	ok = true
	return &ForkedState{rc: rc, file: t.file, saves: saves, forkAt: forkAt, runID: t.runID,
		process: fmt.Sprintf("redis pid %d (host pid %d)", t.nsPID, t.hostPID)}, nil
}

// locate finds this Redis' dump file on the host, from INFO server
// (run_id, process_id; read here when server is nil) and CONFIG GET
// dbfilename; cached per Redis run.
func (a *redisApp) locate(ctx context.Context, rc *respConn, server []byte) (forkTarget, error) {
	if server == nil {
		v, err := rc.doOK(ctx, "INFO", "server")
		if err != nil {
			return forkTarget{}, err
		}
		server = v.str
	}
	info := infoFields(server)
	nsPID, err := strconv.Atoi(info["process_id"])
	if err != nil || info["run_id"] == "" {
		return forkTarget{}, fmt.Errorf("%w: INFO server has no process_id/run_id", ErrNoFork)
	}
	a.forkMu.Lock()
	t := a.fork
	a.forkMu.Unlock()
	if t.runID == info["run_id"] && hostproc.Still(t.hostPID, a.netnsPath(), t.nsPID) {
		return t, nil
	}
	// The port the connection reached (a dialer may map the app's port).
	port := a.cfg.Port
	if ta, ok := rc.c.RemoteAddr().(*net.TCPAddr); ok {
		port = ta.Port
	}
	hostPID, err := hostproc.FindListener(a.netnsPath(), nsPID, port)
	if err != nil {
		return forkTarget{}, fmt.Errorf("%w: the app's process is not on this host's view: %v", ErrNoFork, err)
	}
	c, err := rc.do(ctx, "CONFIG", "GET", "dbfilename")
	if err != nil {
		return forkTarget{}, err
	}
	if c.err() != nil || len(c.arr) != 2 || len(c.arr[1].str) == 0 {
		return forkTarget{}, fmt.Errorf("%w: CONFIG GET dbfilename: %v", ErrNoFork, c.err())
	}
	t = forkTarget{runID: info["run_id"], hostPID: hostPID, nsPID: nsPID, file: hostproc.Path(hostPID, string(c.arr[1].str))}
	dir := hostproc.Path(hostPID, ".")
	if _, err := os.Stat(dir); err != nil {
		return forkTarget{}, fmt.Errorf("%w: the app's directory is not readable from the host: %v", ErrNoFork, err)
	}
	a.forkMu.Lock()
	a.fork = t
	a.forkMu.Unlock()
	return t, nil
}

// Digest waits for the save to end, then digests the file; the app may
// change meanwhile. expiredBy (Unix ms) and maxKeys as for DigestRDB;
// keys expired by the fork are left out in any case (gone for clients).
func (f *ForkedState) Digest(ctx context.Context, opt DigestOptions) (Digest, error) {
	defer f.rc.Close()
	if err := f.waitSaved(ctx); err != nil {
		return Digest{}, err
	}
	file, err := os.Open(f.file)
	if err != nil {
		return Digest{}, fmt.Errorf("open the dump file of %s: %w", f.process, err)
	}
	defer file.Close()
	// The file opened is ours unless another save replaced it before the
	// open: the counter must still be ours after it.
	if err := f.checkSaves(ctx); err != nil {
		return Digest{}, err
	}
	cut := f.forkAt.UnixMilli()
	if !opt.ExpiringBy.IsZero() {
		cut = max(cut, opt.ExpiringBy.UnixMilli())
	}
	d, err := DigestRDB(bufio.NewReaderSize(file, 1<<20), cut, opt.MaxKeys)
	if err != nil {
		return Digest{}, fmt.Errorf("dump file of %s: %w", f.process, err)
	}
	return d, nil
}

// waitSaved polls INFO persistence until no save runs, then checks that
// exactly ours completed, successfully.
func (f *ForkedState) waitSaved(ctx context.Context) error {
	wait := time.Millisecond
	for {
		if err := f.checkSaves(ctx); !errors.Is(err, errSaving) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the app's BGSAVE: %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

var errSaving = errors.New("save in progress")

// checkSaves: nil once our save (and no other) completed successfully;
// errSaving while it runs.
func (f *ForkedState) checkSaves(ctx context.Context) error {
	v, err := f.rc.doOK(ctx, "INFO", "persistence")
	if err != nil {
		return fmt.Errorf("wait for the app's BGSAVE: %w", err)
	}
	info := infoFields(v.str)
	saves, _ := strconv.ParseInt(info["rdb_saves"], 10, 64)
	// rdb_saves counts saves started: ours is number f.saves+1.
	switch {
	case saves != f.saves+1:
		return fmt.Errorf("the app started %d saves since the audit's BGSAVE, not one: another save (its own, a replica's sync) may replace the dump file",
			saves-f.saves)
	case info["rdb_bgsave_in_progress"] == "1":
		return errSaving
	case info["rdb_last_bgsave_status"] != "ok":
		return fmt.Errorf("the app's BGSAVE failed (rdb_last_bgsave_status:%s; see its log: disk full or dir not writable?)",
			info["rdb_last_bgsave_status"])
	}
	return nil
}

// infoFields parses an INFO reply's "name:value" lines.
func infoFields(b []byte) map[string]string {
	m := map[string]string{}
	for _, line := range bytes.Split(b, []byte("\n")) {
		k, v, ok := strings.Cut(strings.TrimSpace(string(line)), ":")
		if ok && !strings.HasPrefix(k, "#") {
			m[k] = v
		}
	}
	return m
}
