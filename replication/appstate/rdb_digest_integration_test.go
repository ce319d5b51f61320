package appstate

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// forkDigest digests port's Redis through BGSAVE and its dump file.
func forkDigest(t testing.TB, port int, opt DigestOptions) (Digest, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fs, err := preparedFork(t, openRedis(t, port, Credentials{})).ForkDigest(ctx)
	if err != nil {
		return Digest{}, err
	}
	return fs.Digest(ctx, opt)
}

// preparedFork is a's copy-on-write capture with its management
// connection prepared (as the audit's keeper does, off the lock).
func preparedFork(t testing.TB, a App) ForkDigester {
	t.Helper()
	fd := a.(ForkDigester)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fd.PrepareFork(ctx); err != nil {
		t.Fatalf("prepare the copy-on-write capture: %v", err)
	}
	t.Cleanup(fd.ReleaseFork)
	return fd
}

// seq returns "prefix0" ... "prefix<n-1>", interleaved with vals when set.
func seq(prefix string, n int, vals ...string) []string {
	var out []string
	for i := range n {
		out = append(out, prefix+strconv.Itoa(i))
		for _, v := range vals {
			out = append(out, v+strconv.Itoa(i))
		}
	}
	return out
}

func cmd(parts ...any) []string {
	var out []string
	for _, p := range parts {
		switch p := p.(type) {
		case string:
			out = append(out, p)
		case []string:
			out = append(out, p...)
		}
	}
	return out
}

// TestRedisForkDigestEqualsCommandDigest is the oracle of the RDB path:
// for every type and encoding a real Redis writes, the digest of its dump
// file (BGSAVE) equals the digest read through commands, and the key
// really has the encoding the case names.
func TestRedisForkDigestEqualsCommandDigest(t *testing.T) {
	requireIntegration(t)
	later := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	long := strings.Repeat("compressible ", 100)
	cases := []struct {
		name     string
		cmds     [][]string
		encoding map[string]string // key -> OBJECT ENCODING it must have
	}{
		{"empty", nil, nil},
		{"strings", [][]string{{"SET", "s", "hello"}, {"SET", "i", "12345"}, {"SET", "neg", "-5"}, {"SET", "i8", "100"},
			{"SET", "i16", "-30000"}, {"SET", "i32", "2000000000"}, {"SET", "i64", "12345678901234"}, {"SET", "lzf", long},
			{"SET", "bin", "a\x00b\r\n\xff"}, {"SET", "empty", ""}},
			map[string]string{"i": "int", "s": "embstr", "lzf": "raw"}},
		{"hyperloglog sparse and dense", [][]string{cmd("PFADD", "sparse", "a", "b", "c"), cmd("PFADD", "dense", seq("e", 5000)),
			{"PFCOUNT", "dense"}}, nil},
		{"list listpack", [][]string{cmd("RPUSH", "l", "a", "1", "-1", "127", "128", "-4096", "4095", "5000", "-70000",
			"8388607", "-2147483648", "1099511627776", "-1152921504606846976", "x", long)}, map[string]string{"l": "quicklist"}},
		{"list many nodes", [][]string{cmd("RPUSH", "l", seq("element-", 5000)), {"LPUSH", "l", "head"}}, map[string]string{"l": "quicklist"}},
		{"set intset", [][]string{cmd("SADD", "s", "1", "-5", "70000", "-3000000000", "12")}, map[string]string{"s": "intset"}},
		{"set hashtable", [][]string{cmd("SADD", "s", "x", "y", "1"), cmd("SADD", "big", seq("", 1000))},
			map[string]string{"s": "hashtable", "big": "hashtable"}},
		{"hash listpack", [][]string{cmd("HSET", "h", "z", "1", "a", "two", "n", "-77")}, map[string]string{"h": "listpack"}},
		{"hash hashtable", [][]string{cmd("HSET", "h", seq("f", 600, "v")), cmd("HSET", "long", "f", long)},
			map[string]string{"h": "hashtable", "long": "hashtable"}},
		{"zset listpack", [][]string{cmd("ZADD", "z", "1", "a", "1.5", "b", "-0.1", "c", "1e300", "d", "inf", "e", "-inf", "f",
			"0.1", "g", "3.141592653589793", "h", "1", "aa", "100", "i")}, map[string]string{"z": "listpack"}},
		{"zset skiplist", [][]string{cmd("ZADD", "z", seq("0.", 300, "m")), cmd("ZADD", "z", "1", "same1", "1", "same0", "-inf", "low")},
			map[string]string{"z": "skiplist"}},
		{"expiries", [][]string{{"SET", "e", "v"}, {"PEXPIREAT", "e", later}, {"RPUSH", "el", "1"}, {"PEXPIREAT", "el", later},
			{"SET", "forever", "v"}}, nil},
		{"several databases", [][]string{{"SET", "k", "0"}, {"SELECT", "3"}, {"SET", "k", "3"}, {"HSET", "h", "f", "v"},
			{"SELECT", "15"}, {"SADD", "s", "m"}, {"SELECT", "0"}}, nil},
		{"functions", [][]string{{"FUNCTION", "LOAD", "#!lua name=zlib\nredis.register_function('zf', function() return 1 end)"},
			{"FUNCTION", "LOAD", "#!LUA name=alib\nredis.register_function('af', function() return 2 end)"}, {"SET", "k", "v"}}, nil},
		{"streams", [][]string{
			{"XADD", "st", "1-1", "f", "v", "g", "w"}, {"XADD", "st", "1-2", "f", "v2", "g", "w2"}, // same fields as the master entry
			{"XADD", "st", "2-1", "other", "x"}, {"XADD", "st", "3-0", "f", "v3"}, {"XDEL", "st", "1-2"},
			{"XGROUP", "CREATE", "st", "g1", "0"}, {"XGROUP", "CREATE", "st", "g0", "$"},
			{"XREADGROUP", "GROUP", "g1", "alice", "COUNT", "2", "STREAMS", "st", ">"},
			{"XREADGROUP", "GROUP", "g1", "bob", "COUNT", "1", "STREAMS", "st", ">"},
			{"XREADGROUP", "GROUP", "g1", "alice", "STREAMS", "st", "0"}, // delivered again: count 2
			{"XACK", "st", "g1", "1-1"}, {"XGROUP", "CREATECONSUMER", "st", "g1", "idle"},
			{"XADD", "empty", "5-5", "a", "b"}, {"XDEL", "empty", "5-5"}, {"XGROUP", "CREATE", "empty", "g", "$", "MKSTREAM"},
			{"XADD", "mk", "MAXLEN", "0", "9-9", "a", "b"}},
			map[string]string{"st": "stream"}},
		{"stream many nodes", [][]string{{"CONFIG", "SET", "stream-node-max-entries", "10"}, cmd("XADD", "big", "*", seq("f", 3, "v")),
			{"EVAL", "for i=1,250 do redis.call('XADD', KEYS[1], '*', 'n', i) end", "1", "big"}, {"XTRIM", "big", "MAXLEN", "200"},
			{"XGROUP", "CREATE", "big", "g", "0", "ENTRIESREAD", "3"}, {"XREADGROUP", "GROUP", "g", "c", "COUNT", "30", "STREAMS", "big", ">"}},
			nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			port := startRedis(t)
			c := newClient(t, port, Credentials{})
			for _, args := range tc.cmds {
				c.do(args...)
			}
			for k, enc := range tc.encoding {
				if got := string(c.do("OBJECT", "ENCODING", k).str); got != enc {
					t.Fatalf("test setup: %s has encoding %s, want %s", k, got, enc)
				}
			}
			want := digest(t, port)
			got, err := forkDigest(t, port, DigestOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("RDB digest %s, command digest %s", got, want)
			}
			if len(tc.cmds) > 0 && want.Keys == 0 {
				t.Fatal("test setup: no key digested")
			}
		})
	}
}

// TestRedisForkDigestCutoffAndBound: keys expiring by the cut-off are left
// out as the command path leaves them out; MaxKeys refuses a larger app.
func TestRedisForkDigestCutoffAndBound(t *testing.T) {
	requireIntegration(t)
	port := startRedis(t)
	c := newClient(t, port, Credentials{})
	soon := time.Now().Add(5 * time.Second)
	c.do("SET", "soon", "v")
	c.do("PEXPIREAT", "soon", strconv.FormatInt(soon.UnixMilli(), 10))
	c.do("SET", "stays", "v")
	opt := DigestOptions{ExpiringBy: soon.Add(time.Second)}
	want, err := openRedis(t, port, Credentials{}).Digest(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	got, err := forkDigest(t, port, opt)
	if err != nil || got != want || got.Keys != 1 {
		t.Fatalf("with a cut-off: RDB %s (%v), commands %s, want 1 key each", got, err, want)
	}
	if _, err := forkDigest(t, port, DigestOptions{MaxKeys: 1, ExpiringBy: opt.ExpiringBy}); err != nil {
		t.Fatalf("1 key within a bound of 1: %v", err)
	}
	c.do("SET", "third", "v")
	if _, err := forkDigest(t, port, DigestOptions{MaxKeys: 1, ExpiringBy: opt.ExpiringBy}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("2 keys over a bound of 1: %v, want ErrTooLarge", err)
	}
}

// TestRedisForkRefusals: when the copy-on-write capture cannot hold the
// state at this point, ForkDigest says so with ErrNoFork (the caller
// falls back), and a save that fails is an error of the digest.
func TestRedisForkRefusals(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	t.Run("a save already running", func(t *testing.T) {
		port := startRedis(t, "--enable-debug-command", "yes", "--rdb-key-save-delay", "200000")
		c := newClient(t, port, Credentials{})
		c.do("DEBUG", "POPULATE", "5") // a save of 1 s
		c.do("BGSAVE")
		_, err := preparedFork(t, openRedis(t, port, Credentials{})).ForkDigest(ctx)
		if !errors.Is(err, ErrNoFork) || !strings.Contains(err.Error(), "BGSAVE refused") {
			t.Fatalf("ForkDigest during another save: %v, want ErrNoFork naming the refusal", err)
		}
		c.do("CONFIG", "SET", "rdb-key-save-delay", "0")
	})
	t.Run("dir not writable", func(t *testing.T) {
		// root writes anywhere: a directory removed under Redis fails for root too
		dir := t.TempDir()
		port := startRedis(t, "--dir", dir)
		c := newClient(t, port, Credentials{})
		c.do("SET", "k", "v")
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		_, err := forkDigest(t, port, DigestOptions{})
		if err == nil || errors.Is(err, ErrNoFork) {
			t.Fatalf("digest with the app's dir gone: %v, want an error of the save", err)
		}
		t.Log(err)
	})
}

// TestRedisForkKeptConnection: the stall (ForkDigest) never dials: it
// uses the connection PrepareFork kept, and reports ErrNoFork when there is
// none or the app closed it (the caller falls back; its keeper re-dials
// off the lock). The kept connection serves capture after capture.
func TestRedisForkKeptConnection(t *testing.T) {
	requireIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	port := startRedis(t)
	c := newClient(t, port, Credentials{})
	c.do("SET", "k", "v")
	dials := func() string { return infoFields(c.do("INFO", "stats").str)["total_connections_received"] }
	a := openRedis(t, port, Credentials{})
	fd := a.(ForkDigester)
	t.Cleanup(fd.ReleaseFork)

	before := dials()
	if _, err := fd.ForkDigest(ctx); !errors.Is(err, ErrNoFork) || !strings.Contains(err.Error(), "no management connection") {
		t.Fatalf("ForkDigest before PrepareFork: %v, want ErrNoFork (not ready)", err)
	}
	if got := dials(); got != before {
		t.Fatalf("ForkDigest without a prepared connection dialed the app (connections %s -> %s)", before, got)
	}
	if err := fd.PrepareFork(ctx); err != nil {
		t.Fatal(err)
	}
	want := digest(t, port)
	before = dials()
	for i := range 3 {
		fs, err := fd.ForkDigest(ctx)
		if err != nil {
			t.Fatalf("capture %d: %v", i, err)
		}
		if err := fd.PrepareFork(ctx); err != nil { // a keeper tick while the capture runs
			t.Fatal(err)
		}
		got, err := fs.Digest(ctx, DigestOptions{})
		if err != nil || got != want {
			t.Fatalf("capture %d: digest %v (%v), want %v", i, got, err, want)
		}
	}
	if got := dials(); got != before {
		t.Fatalf("three captures on a kept connection dialed the app (connections %s -> %s)", before, got)
	}

	// The app closes the kept connection (as Redis' idle timeout would).
	c.do("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
	c = newClient(t, port, Credentials{})
	waitClosed := time.Now().Add(5 * time.Second)
	var err error
	for time.Now().Before(waitClosed) {
		if _, err = fd.ForkDigest(ctx); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrNoFork) || !strings.Contains(err.Error(), "closed by the app") {
		t.Fatalf("ForkDigest on a connection the app closed: %v, want ErrNoFork (closed by the app)", err)
	}
	if err := fd.PrepareFork(ctx); err != nil {
		t.Fatalf("re-dial: %v", err)
	}
	fs, err := fd.ForkDigest(ctx)
	if err != nil {
		t.Fatalf("capture after the re-dial: %v", err)
	}
	if got, err := fs.Digest(ctx, DigestOptions{}); err != nil || got != want {
		t.Fatalf("digest after the re-dial %v (%v), want %v", got, err, want)
	}
}
