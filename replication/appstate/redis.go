package appstate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// redisApp snapshots a Redis (RESP) app with the commands every Redis 7
// answers in its default configuration:
//
//   - INFO keyspace lists the non-empty databases;
//   - per database, SCAN walks the keys; for each key PEXPIRETIME gives the
//     absolute expiry (unix ms; Redis 7.0+) and DUMP the value in Redis' own
//     serialization (type, encoding, RDB version and a CRC: Redis checks it
//     on RESTORE);
//   - FUNCTION DUMP the loaded function libraries.
//
// Restore is the inverse: FLUSHALL and FUNCTION FLUSH (the app then holds
// exactly the snapshot), RESTORE key <expiry> <payload> ABSTTL REPLACE
// (a key whose expiry has passed since the capture is not created, as if it
// had expired in the app), FUNCTION RESTORE.
//
// Why not Redis' own replication stream (PSYNC): the app would fork for a
// BGSAVE (twice the memory at worst), the RDB it sends can only be loaded
// into a Redis that restarts from it or becomes a replica itself (we cannot
// touch the container's files or restart it), PSYNC and REPLICAOF may be
// disabled or ACL-restricted, and parsing RDB would tie smr-cri to each RDB
// version. DEBUG RELOAD is disabled in the default configuration since 7.0.
// SCAN+DUMP runs on the live app between two log entries (nothing of the
// group changes it meanwhile; only expiry can remove a key, which the
// capture treats as expired) and is pipelined per SCAN page.
//
// DUMP payloads are only restorable into a Redis of the same or a newer RDB
// version: all replicas of a group must run the same Redis (they run the
// same image).
type redisApp struct {
	cfg Config
	// The copy-on-write capture (redis_fork.go): forkMu guards fork (the
	// located dump file of the last Redis run seen), kept (the prepared
	// management connection) and prepErr (why the last PrepareFork
	// failed); it is held by ForkDigest's one round trip and otherwise
	// only briefly, never across a dial. prepMu serializes PrepareFork.
	forkMu  sync.Mutex
	fork    forkTarget
	kept    *forkConn
	prepErr error
	prepMu  sync.Mutex
}

// scanCount is SCAN's COUNT hint: keys per pipelined page.
const scanCount = "512"

func (a *redisApp) Capture(ctx context.Context, w io.Writer) (Stats, error) {
	var st Stats
	rc, err := dialRESP(ctx, a.cfg)
	if err != nil {
		return st, err
	}
	defer rc.Close()
	sw, err := newStreamWriter(w, ProtoRESP)
	if err != nil {
		return st, err
	}
	dbs, err := databases(ctx, rc)
	if err != nil {
		return st, err
	}
	for _, db := range dbs {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if _, err := rc.doOK(ctx, "SELECT", strconv.Itoa(db)); err != nil {
			return st, fmt.Errorf("capture database %d: %w", db, err)
		}
		if err := sw.record(kindDB, binary.AppendUvarint(nil, uint64(db))); err != nil {
			return st, err
		}
		st.Databases++
		err := scanKeys(ctx, rc, func(keys [][]byte) error {
			for _, k := range keys {
				rc.send([]byte("PEXPIRETIME"), k)
				rc.send([]byte("DUMP"), k)
			}
			vs, err := rc.exec(ctx)
			if err != nil {
				return err
			}
			for i, k := range keys {
				exp, dump := vs[2*i], vs[2*i+1]
				if err := cmp2(exp.err(), dump.err()); err != nil {
					return fmt.Errorf("capture key %q in database %d: %w (PEXPIRETIME needs Redis 7.0 or newer)", k, db, err)
				}
				if exp.num == -2 || dump.null {
					continue // expired while we looked
				}
				if err := sw.record(kindKey, keyRecord(k, max(exp.num, 0), dump.str)...); err != nil {
					return err
				}
				st.Keys++
			}
			return nil
		})
		if err != nil {
			return st, fmt.Errorf("capture database %d: %w", db, err)
		}
	}
	fn, err := rc.do(ctx, "FUNCTION", "DUMP")
	switch {
	case err != nil:
		return st, fmt.Errorf("capture functions: %w", err)
	case isUnknownCommand(fn.err()):
		// Redis before 7.0 has no functions.
	case fn.err() != nil:
		return st, fmt.Errorf("capture functions: FUNCTION DUMP: %w", fn.err())
	default:
		if err := sw.record(kindFunctions, fn.str); err != nil {
			return st, err
		}
		st.Functions = true
	}
	if err := sw.end(); err != nil {
		return st, err
	}
	st.Bytes = sw.bytes
	return st, nil
}

func cmp2(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func isUnknownCommand(err error) bool {
	var ae *AppError
	return errors.As(err, &ae) && strings.HasPrefix(ae.Msg, "ERR unknown command")
}

// restoreBatchCmds and restoreBatchBytes bound one batch of pipelined
// RESTOREs; restoreInFlight batches may await their replies at once.
const (
	restoreBatchCmds  = 256
	restoreBatchBytes = 8 << 20
	restoreInFlight   = 4
)

// restoreBatch is one flushed batch of RESTOREs awaiting its replies.
type restoreBatch struct {
	keys [][]byte
	db   int
}

// restorePipe reads the replies of the RESTORE batches sent on rc, on its
// own goroutine, while the caller sends the next ones. After an error
// nothing more is sent: the connection is then out of step and the caller
// drops it.
type restorePipe struct {
	ctx     context.Context
	rc      *respConn
	batches chan restoreBatch
	done    chan struct{}
	keys    int   // restored, once done
	failed  error // the first failure, once done (or seen by send)
	errc    chan error
}

func newRestorePipe(ctx context.Context, rc *respConn) *restorePipe {
	p := &restorePipe{ctx: ctx, rc: rc, batches: make(chan restoreBatch, restoreInFlight),
		done: make(chan struct{}), errc: make(chan error, 1)}
	go p.read()
	return p
}

func (p *restorePipe) read() {
	defer close(p.done)
	for b := range p.batches {
		if p.failed != nil {
			continue
		}
		for _, key := range b.keys {
			v, err := readValue(p.rc.r, 0)
			if err == nil {
				err = v.err()
			}
			if err != nil {
				p.failed = fmt.Errorf("restore key %q in database %d: %w", key, b.db, err)
				p.errc <- p.failed
				break
			}
			p.keys++
		}
	}
}

// send flushes the queued RESTOREs of b and hands b to the reader.
func (p *restorePipe) send(b restoreBatch) error {
	if err := p.err(); err != nil {
		return err
	}
	p.rc.deadline(p.ctx)
	p.rc.pending = 0
	if err := p.rc.w.Flush(); err != nil {
		return fmt.Errorf("write to app: %w", err)
	}
	select {
	case p.batches <- b:
		return nil
	case err := <-p.errc:
		p.errc <- err
		return err
	}
}

// err is the reader's first failure so far, if any.
func (p *restorePipe) err() error {
	select {
	case err := <-p.errc:
		p.errc <- err
		return err
	default:
		return nil
	}
}

// wait ends the pipe: every batch's replies read; the keys restored.
func (p *restorePipe) wait() (int, error) {
	close(p.batches)
	<-p.done
	return p.keys, p.failed
}

func (a *redisApp) Restore(ctx context.Context, r io.Reader) (Stats, error) {
	var st Stats
	sr, err := newStreamReader(r, ProtoRESP)
	if err != nil {
		return st, err
	}
	rc, err := dialRESP(ctx, a.cfg)
	if err != nil {
		return st, err
	}
	defer rc.Close()
	if _, err := rc.doOK(ctx, "FLUSHALL", "SYNC"); err != nil {
		return st, fmt.Errorf("empty the app before restore: %w", err)
	}
	if v, err := rc.do(ctx, "FUNCTION", "FLUSH", "SYNC"); err != nil || (v.err() != nil && !isUnknownCommand(v.err())) {
		return st, fmt.Errorf("empty the app's functions before restore: %w", cmp2(err, v.err()))
	}
	// RESTOREs go out in batches while a reader takes the replies of the
	// batches before (up to restoreInFlight batches on the wire), so the app
	// restores one batch while the next is encoded and sent.
	p := newRestorePipe(ctx, rc)
	var batch [][]byte // keys of the batch being filled, for error messages
	var batchBytes int
	db := 0
	flush := func() error {
		if len(batch) == 0 {
			return p.err()
		}
		err := p.send(restoreBatch{keys: batch, db: db})
		batch, batchBytes = nil, 0
		return err
	}
	// settle waits for every batch sent (before a command whose reply is read
	// here).
	settle := func() error {
		if err := flush(); err != nil {
			return err
		}
		n, err := p.wait()
		st.Keys += n
		return err
	}
	for {
		kind, body, err := sr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			_ = settle()
			return st, err
		}
		switch kind {
		case kindDB:
			n, k := binary.Uvarint(body)
			if k <= 0 || n > 1<<20 {
				_ = settle()
				return st, fmt.Errorf("%w: database record", ErrBadStream)
			}
			if err := settle(); err != nil {
				return st, err
			}
			db = int(n)
			if _, err := rc.doOK(ctx, "SELECT", strconv.Itoa(db)); err != nil {
				return st, fmt.Errorf("restore database %d (does the app have fewer databases than the snapshot's?): %w", db, err)
			}
			st.Databases++
			p = newRestorePipe(ctx, rc)
		case kindKey:
			key, exp, payload, err := parseKeyRecord(body)
			if err != nil {
				_ = settle()
				return st, err
			}
			rc.send([]byte("RESTORE"), key, strconv.AppendInt(nil, exp, 10), payload, []byte("ABSTTL"), []byte("REPLACE"))
			batch = append(batch, key)
			batchBytes += len(body)
			if len(batch) >= restoreBatchCmds || batchBytes >= restoreBatchBytes {
				if err := flush(); err != nil {
					_ = settle()
					return st, err
				}
			}
		case kindFunctions:
			if err := settle(); err != nil {
				return st, err
			}
			rc.send([]byte("FUNCTION"), []byte("RESTORE"), body, []byte("REPLACE"))
			vs, err := rc.exec(ctx)
			if err == nil {
				err = vs[0].err()
			}
			if err != nil {
				return st, fmt.Errorf("restore functions: %w", err)
			}
			st.Functions = true
			p = newRestorePipe(ctx, rc)
		default:
			_ = settle()
			return st, fmt.Errorf("%w: record kind %q in a Redis state", ErrBadStream, kind)
		}
	}
	if err := settle(); err != nil {
		return st, err
	}
	st.Bytes = sr.bytes
	return st, nil
}

// databases lists the non-empty databases from INFO keyspace.
func databases(ctx context.Context, rc *respConn) ([]int, error) {
	dbs, _, err := keyspace(ctx, rc)
	return dbs, err
}

// keyspace lists the non-empty databases (INFO keyspace) and the keys they
// hold together ("db0:keys=3,expires=0,avg_ttl=0").
func keyspace(ctx context.Context, rc *respConn) (dbs []int, keys int, err error) {
	v, err := rc.doOK(ctx, "INFO", "keyspace")
	if err != nil {
		return nil, 0, fmt.Errorf("list databases: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(v.str))
	for sc.Scan() {
		name, stats, ok := strings.Cut(sc.Text(), ":")
		if !ok || !strings.HasPrefix(name, "db") {
			continue
		}
		n, err := strconv.Atoi(name[2:])
		if err != nil || n < 0 {
			return nil, 0, fmt.Errorf("list databases: INFO keyspace line %q", sc.Text())
		}
		dbs = append(dbs, n)
		for _, f := range strings.Split(stats, ",") {
			if c, ok := strings.CutPrefix(f, "keys="); ok {
				k, err := strconv.Atoi(strings.TrimSpace(c))
				if err != nil || k < 0 {
					return nil, 0, fmt.Errorf("list databases: INFO keyspace line %q", sc.Text())
				}
				keys += k
			}
		}
	}
	slices.Sort(dbs)
	return dbs, keys, nil
}

// scanKeys calls page with each SCAN page of the selected database, every
// key once (SCAN may return a key twice while the table rehashes).
func scanKeys(ctx context.Context, rc *respConn, page func(keys [][]byte) error) error {
	seen := map[string]struct{}{}
	cursor := "0"
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		v, err := rc.doOK(ctx, "SCAN", cursor, "COUNT", scanCount)
		if err != nil {
			return err
		}
		if len(v.arr) != 2 || v.arr[0].kind != '$' || v.arr[1].kind != '*' {
			return fmt.Errorf("%w: SCAN reply", errBadReply)
		}
		cursor = string(v.arr[0].str)
		keys := make([][]byte, 0, len(v.arr[1].arr))
		for _, k := range v.arr[1].arr {
			if _, dup := seen[string(k.str)]; dup {
				continue
			}
			seen[string(k.str)] = struct{}{}
			keys = append(keys, k.str)
		}
		if len(keys) > 0 {
			if err := page(keys); err != nil {
				return err
			}
		}
		if cursor == "0" {
			return nil
		}
	}
}
