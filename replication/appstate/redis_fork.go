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
//
// The capture is split so that the caller's stall is the fork alone:
// PrepareFork, called off the caller's lock (at start, then every few
// seconds), keeps a management connection open, authenticated and bound
// to the located dump file; ForkDigest, called under the lock at the exact
// log position, only sends BGSAVE on it and waits for its reply (Redis
// answers after the fork); ForkedState.Digest waits for the child, reads
// and digests the file, off the lock.
type ForkDigester interface {
	// PrepareFork makes sure a management connection is ready for the
	// next ForkDigest: it checks the kept one without a round trip and
	// dials, authenticates and locates the dump file only when there is
	// none or it broke (the app closed it, the app restarted). A wrapped
	// ErrNoFork: this app cannot be captured copy-on-write from here.
	PrepareFork(ctx context.Context) error
	// ForkDigest forks the app's state as it is now and returns at once
	// (the caller holds the app still only for this call): one round trip
	// on the prepared connection, never a dial. A wrapped ErrNoFork means
	// nothing was started: digest another way.
	ForkDigest(ctx context.Context) (*ForkedState, error)
	// ReleaseFork closes the kept connection (the caller is done with the
	// app); a capture in progress keeps it until its Digest ends.
	ReleaseFork()
}

// NetnsPather is implemented by dialers that reach the app in a network
// namespace (replication.NetnsDialer); others reach it in smr-cri's own.
type NetnsPather interface{ NetnsPath() string }

// forkConn is the kept management connection of the copy-on-write
// capture, with the dump file of the Redis run it reaches: a connection
// dies with its Redis process, so while it is open the run is the one
// located when it was dialed.
type forkConn struct {
	rc       *respConn
	t        forkTarget
	lent     bool // a ForkedState uses it (until its Digest or Close)
	released bool // ReleaseFork ran while it was lent: close it on return
}

// ForkedState is a capture in progress.
type ForkedState struct {
	app     *redisApp
	fc      *forkConn
	file    string // host path of the dump file
	saves   int64  // rdb_saves before our BGSAVE
	forkAt  time.Time
	process string // for messages: "redis pid N (host pid M)"
	done    bool
}

// ForkedAt is when the BGSAVE was sent.
func (f *ForkedState) ForkedAt() time.Time { return f.forkAt }

// Close releases the capture without a digest (its save finishes on its
// own; the connection is kept for the next one).
func (f *ForkedState) Close() { f.release(nil) }

// release hands the connection back to the app: kept if it is still in
// step (err is nil or an app's answer), closed otherwise.
func (f *ForkedState) release(err error) {
	if f.done {
		return
	}
	f.done = true
	a := f.app
	a.forkMu.Lock()
	defer a.forkMu.Unlock()
	f.fc.lent = false
	var appErr *AppError
	broken := err != nil && !errors.As(err, &appErr) && !errors.Is(err, errSaves)
	if broken || f.fc.released || a.kept != f.fc {
		f.fc.rc.Close()
		if a.kept == f.fc {
			a.kept = nil
		}
	}
}

// forkTarget is the located dump file of one Redis run.
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

// ManagementConnName is the client name (CLIENT SETNAME) of the kept
// management connection of the copy-on-write capture.
const ManagementConnName = "smr-cri-audit"

// errNotReady: no prepared management connection (ErrNoFork: nothing
// started).
var errNotReady = fmt.Errorf("%w: no management connection to the app is ready", ErrNoFork)

// PrepareFork implements ForkDigester.
func (a *redisApp) PrepareFork(ctx context.Context) error {
	a.prepMu.Lock() // one dial at a time; never held by ForkDigest
	defer a.prepMu.Unlock()
	a.forkMu.Lock()
	if k := a.kept; k != nil {
		if k.lent || k.rc.idleAlive() {
			a.forkMu.Unlock()
			return nil
		}
		k.rc.Close()
		a.kept = nil
	}
	a.forkMu.Unlock()
	k, err := a.dialFork(ctx)
	a.forkMu.Lock()
	defer a.forkMu.Unlock()
	a.prepErr = err
	if err != nil {
		return err
	}
	a.kept = k
	return nil
}

// dialFork dials a management connection and locates the dump file of
// the Redis run it reaches (the process is found before the app is ever
// asked to save, so an app that cannot be read from this host never is).
func (a *redisApp) dialFork(ctx context.Context) (*forkConn, error) {
	rc, err := dialRESP(ctx, a.cfg)
	if err != nil {
		return nil, err
	}
	// Named, so that an operator (or a test comparing the apps' client
	// lists) can tell it from the replicated sessions; a Redis that
	// refuses the name keeps an unnamed connection.
	rc.sendStr("CLIENT", "SETNAME", ManagementConnName)
	if _, err := rc.exec(ctx); err != nil {
		rc.Close()
		return nil, err
	}
	t, err := a.locate(ctx, rc)
	if err != nil {
		rc.Close()
		return nil, err
	}
	return &forkConn{rc: rc, t: t}, nil
}

// ReleaseFork implements ForkDigester.
func (a *redisApp) ReleaseFork() {
	a.forkMu.Lock()
	defer a.forkMu.Unlock()
	if k := a.kept; k != nil {
		if k.lent {
			k.released = true
		} else {
			k.rc.Close()
		}
		a.kept = nil
	}
}

// ForkDigest implements ForkDigester: on the prepared connection, one
// round trip of two pipelined commands, processed by Redis back to back
// (nothing of another client between them): INFO persistence (the save
// counter before ours) and BGSAVE, which Redis answers after its fork.
func (a *redisApp) ForkDigest(ctx context.Context) (*ForkedState, error) {
	a.forkMu.Lock()
	defer a.forkMu.Unlock()
	k := a.kept
	switch {
	case k == nil && a.prepErr != nil:
		return nil, fmt.Errorf("%w (%v)", errNotReady, a.prepErr)
	case k == nil:
		return nil, errNotReady
	case k.lent:
		return nil, fmt.Errorf("%w: the previous capture still uses the management connection", ErrNoFork)
	case !k.rc.idleAlive(): // the app closed it since the last check
		k.rc.Close()
		a.kept = nil
		return nil, fmt.Errorf("%w: the management connection was closed by the app (re-dialed off the lock)", errNotReady)
	}
	k.rc.send([]byte("INFO"), []byte("persistence"))
	k.rc.send([]byte("BGSAVE"))
	forkAt := time.Now()
	vs, err := k.rc.exec(ctx)
	if err != nil {
		k.rc.Close()
		a.kept = nil
		return nil, err
	}
	if err := vs[1].err(); err != nil {
		// Already saving (its own save, a replica's sync, an AOF rewrite):
		// another fork would not hold the state at this point.
		return nil, fmt.Errorf("%w: BGSAVE refused: %v", ErrNoFork, err)
	}
	saves, err := strconv.ParseInt(infoFields(vs[0].str)["rdb_saves"], 10, 64)
	if err != nil {
		// BGSAVE started but this Redis (< 7.0) does not count saves: it
		// cannot tell ours from a later one. Let the save run.
		return nil, fmt.Errorf("%w: INFO persistence has no rdb_saves (Redis < 7.0)", ErrNoFork)
	}
	k.lent = true
	return &ForkedState{app: a, fc: k, file: k.t.file, saves: saves, forkAt: forkAt,
		process: fmt.Sprintf("redis pid %d (host pid %d)", k.t.nsPID, k.t.hostPID)}, nil
}

// locate finds this Redis' dump file on the host, from INFO server
// (run_id, process_id) and CONFIG GET dbfilename; cached per Redis run
// (a re-dialed connection to the same run skips the search in /proc).
func (a *redisApp) locate(ctx context.Context, rc *respConn) (forkTarget, error) {
	v, err := rc.doOK(ctx, "INFO", "server")
	if err != nil {
		return forkTarget{}, err
	}
	info := infoFields(v.str)
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
func (f *ForkedState) Digest(ctx context.Context, opt DigestOptions) (d Digest, err error) {
	defer func() { f.release(err) }()
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
	d, err = DigestRDB(bufio.NewReaderSize(file, 1<<20), cut, opt.MaxKeys)
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

// errSaves: the app's saves are not the one expected (the connection is
// still in step).
var errSaves = errors.New("the app's saves since the audit's BGSAVE")

// checkSaves: nil once our save (and no other) completed successfully;
// errSaving while it runs.
func (f *ForkedState) checkSaves(ctx context.Context) error {
	v, err := f.fc.rc.doOK(ctx, "INFO", "persistence")
	if err != nil {
		return fmt.Errorf("wait for the app's BGSAVE: %w", err)
	}
	info := infoFields(v.str)
	saves, _ := strconv.ParseInt(info["rdb_saves"], 10, 64)
	// rdb_saves counts saves started: ours is number f.saves+1.
	switch {
	case saves != f.saves+1:
		return fmt.Errorf("%w: %d, not one: another save (its own, a replica's sync) may replace the dump file",
			errSaves, saves-f.saves)
	case info["rdb_bgsave_in_progress"] == "1":
		return errSaving
	case info["rdb_last_bgsave_status"] != "ok":
		return fmt.Errorf("%w: the app's BGSAVE failed (rdb_last_bgsave_status:%s; see its log: disk full or dir not writable?)",
			errSaves, info["rdb_last_bgsave_status"])
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
