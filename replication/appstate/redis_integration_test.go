package appstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/redislab"
	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// Integration tests against real redis-server processes (Debian's 7.0 on
// this machine). They run with SMR_INTEGRATION=1 and then fail if
// redis-server is missing.

func requireIntegration(t testing.TB) {
	t.Helper()
	testcheck.SkipUnlessIntegration(t, "redis-server installed")
}

type tcpDialer struct{ host string }

func (d tcpDialer) DialApp(ctx context.Context, port int) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", net.JoinHostPort(d.host, strconv.Itoa(port)))
}

// startRedis runs a private redis-server (extra arguments appended) on a
// free loopback port and returns the port.
func startRedis(t testing.TB, extra ...string) int {
	t.Helper()
	return redislab.Start(t, extra...).Port
}

func openRedis(t testing.TB, port int, creds Credentials) App {
	t.Helper()
	a, err := New(Config{Dialer: tcpDialer{"127.0.0.1"}, Port: port, Protocol: ProtoRESP, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// client is a test's plain connection to one redis-server.
type client struct {
	t  testing.TB
	rc *respConn
}

func newClient(t testing.TB, port int, creds Credentials) *client {
	t.Helper()
	rc, err := dialRESP(context.Background(), Config{Dialer: tcpDialer{"127.0.0.1"}, Port: port, Timeout: 10 * time.Second,
		DialTimeout: 5 * time.Second, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return &client{t: t, rc: rc}
}

// do runs a command and fails the test on an error reply.
func (c *client) do(args ...string) value {
	c.t.Helper()
	v, err := c.rc.doOK(context.Background(), args...)
	if err != nil {
		c.t.Fatalf("%q: %v", args, err)
	}
	return v
}

// render prints a reply canonically for comparisons (sets sorted by the
// caller's choice of command).
func render(v value) string {
	switch {
	case v.null:
		return "(nil)"
	case v.kind == '*':
		parts := make([]string, len(v.arr))
		for i, e := range v.arr {
			parts[i] = render(e)
		}
		return "[" + strings.Join(parts, " ") + "]"
	case v.kind == ':':
		return strconv.FormatInt(v.num, 10)
	case v.kind == '-':
		return "ERR(" + string(v.str) + ")"
	}
	return strconv.Quote(string(v.str))
}

const luaLib = "#!lua name=smrlib\nredis.register_function('smr_hello', function(keys, args) return 'hello ' .. args[1] end)"

// fill writes one of each Redis type, in small and large encodings, over
// several databases, plus expiring keys and a function library.
func fill(c *client, expireAt int64) {
	c.do("SET", "str", "plain")
	c.do("SET", "int", "12345")
	c.do("SET", "big", strings.Repeat("x", 100000))
	c.do("SET", "bin", "\x00\xff\r\n")
	c.do("RPUSH", "list", "a", "b", "c", "a")
	for i := range 300 {
		c.do("RPUSH", "biglist", strconv.Itoa(i), strings.Repeat("v", i%70))
	}
	c.do("HSET", "hash", "f1", "v1", "f2", "v2")
	for i := range 600 {
		c.do("HSET", "bighash", "field"+strconv.Itoa(i), strconv.Itoa(i*i))
	}
	c.do("SADD", "intset", "1", "2", "3")
	c.do("SADD", "set", "a", "b", "c")
	for i := range 600 {
		c.do("SADD", "bigset", "m"+strconv.Itoa(i))
	}
	c.do("ZADD", "zset", "1", "one", "2.5", "two", "-3", "minus")
	for i := range 300 {
		c.do("ZADD", "bigzset", strconv.Itoa(i%17), "member"+strconv.Itoa(i))
	}
	for i := 1; i <= 10; i++ {
		c.do("XADD", "stream", fmt.Sprintf("%d-1", i), "n", strconv.Itoa(i), "sq", strconv.Itoa(i*i))
	}
	c.do("XGROUP", "CREATE", "stream", "g1", "0")
	c.do("XGROUP", "CREATE", "stream", "g2", "$")
	c.do("XREADGROUP", "GROUP", "g1", "alice", "COUNT", "4", "STREAMS", "stream", ">")
	c.do("XREADGROUP", "GROUP", "g1", "bob", "COUNT", "2", "STREAMS", "stream", ">")
	c.do("XACK", "stream", "g1", "2-1")
	c.do("XDEL", "stream", "9-1")
	c.do("PFADD", "hll-sparse", "a", "b", "c")
	for i := range 40 {
		args := []string{"PFADD", "hll-dense"}
		for j := range 100 {
			args = append(args, fmt.Sprintf("e%d-%d", i, j))
		}
		c.do(args...)
	}
	c.do("SET", "expiring", "soon")
	c.do("PEXPIREAT", "expiring", strconv.FormatInt(expireAt, 10))
	c.do("HSET", "expiring-hash", "a", "1")
	c.do("PEXPIREAT", "expiring-hash", strconv.FormatInt(expireAt+1234, 10))
	c.do("SELECT", "3")
	c.do("SET", "db3-key", "three")
	c.do("LPUSH", "db3-list", "x")
	c.do("SELECT", "15")
	c.do("SET", "db15-key", "fifteen")
	c.do("SELECT", "0")
	c.do("FUNCTION", "LOAD", luaLib)
}

// probes are the commands a client would use to read every key back.
var probes = [][]string{
	{"DBSIZE"}, {"GET", "str"}, {"GET", "int"}, {"STRLEN", "big"}, {"GET", "bin"},
	{"LRANGE", "list", "0", "-1"}, {"LRANGE", "biglist", "0", "-1"},
	{"HGET", "hash", "f1"}, {"HLEN", "bighash"}, {"HGET", "bighash", "field599"},
	{"SISMEMBER", "intset", "2"}, {"SCARD", "bigset"}, {"SMISMEMBER", "set", "a", "z"},
	{"ZRANGE", "zset", "0", "-1", "WITHSCORES"}, {"ZRANGE", "bigzset", "0", "-1", "WITHSCORES"},
	{"XRANGE", "stream", "-", "+"}, {"XLEN", "stream"}, {"XPENDING", "stream", "g1"},
	{"XINFO", "CONSUMERS", "stream", "g1"}, // carries idle times: compared without them below
	{"XREADGROUP", "GROUP", "g2", "carol", "STREAMS", "stream", ">"},
	{"PFCOUNT", "hll-sparse"}, {"PFCOUNT", "hll-dense"},
	{"PEXPIRETIME", "expiring"}, {"PEXPIRETIME", "expiring-hash"}, {"PEXPIRETIME", "str"},
	{"FCALL", "smr_hello", "0", "world"},
	{"SELECT", "3"}, {"DBSIZE"}, {"GET", "db3-key"}, {"LRANGE", "db3-list", "0", "-1"},
	{"SELECT", "15"}, {"GET", "db15-key"}, {"SELECT", "0"},
}

func answers(c *client) []string {
	out := make([]string, len(probes))
	for i, p := range probes {
		v, err := c.rc.do(context.Background(), p...)
		if err != nil {
			c.t.Fatal(err)
		}
		if p[0] == "XINFO" {
			for j := range v.arr {
				v.arr[j] = value{kind: '*', arr: v.arr[j].arr[:4]} // name, pending; not idle, inactive
			}
		}
		out[i] = strings.Join(p, " ") + " -> " + render(v)
	}
	return out
}

func TestRedisRoundTripEveryType(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	srcPort, dstPort := startRedis(t), startRedis(t)
	src, dst := newClient(t, srcPort, Credentials{}), newClient(t, dstPort, Credentials{})
	fill(src, time.Now().Add(time.Hour).UnixMilli())
	// The destination holds other data: restore must leave only the snapshot.
	dst.do("SET", "junk", "1")
	dst.do("SELECT", "7")
	dst.do("SET", "junk7", "1")
	dst.do("FUNCTION", "LOAD", "#!lua name=junklib\nredis.register_function('junk', function() return 1 end)")
	dst = newClient(t, dstPort, Credentials{}) // a fresh connection, on database 0

	var buf bytes.Buffer
	cst, err := openRedis(t, srcPort, Credentials{}).Capture(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if cst.Keys != 21 || cst.Databases != 3 || !cst.Functions || cst.Bytes != int64(buf.Len()) {
		t.Fatalf("capture stats %+v (stream %d bytes), want 21 keys in 3 databases with functions", cst, buf.Len())
	}
	rst, err := openRedis(t, dstPort, Credentials{}).Restore(ctx, bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if rst.Keys != cst.Keys || rst.Databases != cst.Databases || rst.Bytes != cst.Bytes {
		t.Fatalf("restore stats %+v, capture %+v", rst, cst)
	}
	// Compare the answers before the probes' own XREADGROUP changes state.
	ds, dd := digest(t, srcPort), digest(t, dstPort)
	if ds != dd {
		t.Fatalf("digests differ after restore: source %s, restored %s", ds, dd)
	}
	if ds.Keys != 21 {
		t.Fatalf("digest covers %d keys, want 21", ds.Keys)
	}
	want, got := answers(src), answers(dst)
	if !slices.Equal(want, got) {
		for i := range want {
			if want[i] != got[i] {
				t.Errorf("source:   %s\nrestored: %s", want[i], got[i])
			}
		}
	}
	for _, gone := range [][]string{{"EXISTS", "junk"}, {"FCALL", "junk", "0"}} {
		if v, _ := dst.rc.do(ctx, gone...); v.num != 0 && v.kind != '-' {
			t.Errorf("%q after restore: %s, want it gone", gone, render(v))
		}
	}
	dst.do("SELECT", "7")
	if v := dst.do("DBSIZE"); v.num != 0 {
		t.Errorf("database 7 kept %d keys of the app's old state", v.num)
	}
}

func digest(t testing.TB, port int) Digest {
	t.Helper()
	d, err := openRedis(t, port, Credentials{}).Digest(context.Background(), DigestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestRedisExpiryIsAbsolute: a key captured with an expiry keeps the same
// absolute deadline, and one whose deadline passed before the restore is
// not created.
func TestRedisExpiryIsAbsolute(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	srcPort, dstPort := startRedis(t), startRedis(t)
	src, dst := newClient(t, srcPort, Credentials{}), newClient(t, dstPort, Credentials{})
	soon := time.Now().Add(300 * time.Millisecond).UnixMilli()
	later := time.Now().Add(time.Hour).UnixMilli()
	src.do("SET", "soon", "1")
	src.do("PEXPIREAT", "soon", strconv.FormatInt(soon, 10))
	src.do("SET", "later", "1")
	src.do("PEXPIREAT", "later", strconv.FormatInt(later, 10))
	var buf bytes.Buffer
	if _, err := openRedis(t, srcPort, Credentials{}).Capture(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(time.UnixMilli(soon)) + 100*time.Millisecond)
	if _, err := openRedis(t, dstPort, Credentials{}).Restore(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	if v := dst.do("EXISTS", "soon"); v.num != 0 {
		t.Errorf("key whose deadline passed before the restore exists")
	}
	if v := dst.do("PEXPIRETIME", "later"); v.num != later {
		t.Errorf("PEXPIRETIME later = %d after restore, want %d", v.num, later)
	}
}

// TestRedisDigestCanonical: equal states built in different orders and
// encodings have equal digests; one field's difference changes it.
func TestRedisDigestCanonical(t *testing.T) {
	requireIntegration(t)
	aPort, bPort := startRedis(t), startRedis(t)
	a, b := newClient(t, aPort, Credentials{}), newClient(t, bPort, Credentials{})
	exp := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)

	// a: hash grown past the listpack limit then shrunk (stays a hash
	// table); set built as a hash table then shrunk; keys in one order; the
	// HyperLogLog's cardinality cache filled by PFCOUNT.
	for i := range 600 {
		a.do("HSET", "h", "tmp"+strconv.Itoa(i), "x")
	}
	for i := range 600 {
		a.do("HDEL", "h", "tmp"+strconv.Itoa(i))
	}
	a.do("HSET", "h", "z", "1", "a", "2", "m", "3")
	for i := range 600 {
		a.do("SADD", "s", "tmp"+strconv.Itoa(i))
	}
	for i := range 600 {
		a.do("SREM", "s", "tmp"+strconv.Itoa(i))
	}
	a.do("SADD", "s", "x", "y", "1")
	a.do("RPUSH", "l", "1", "2", "3")
	a.do("ZADD", "z", "1", "a", "2", "b")
	a.do("PFADD", "hll", "p", "q", "r")
	a.do("PFCOUNT", "hll")
	a.do("SET", "n", "42")
	a.do("SET", "e", "v")
	a.do("PEXPIREAT", "e", exp)
	a.do("XADD", "st", "1-1", "f", "v")
	a.do("XGROUP", "CREATE", "st", "g", "0")
	a.do("SELECT", "2")
	a.do("SET", "k2", "v2")

	// b: the same state, written in another order and in small encodings.
	b.do("SELECT", "2")
	b.do("SET", "k2", "v2")
	b.do("SELECT", "0")
	b.do("XADD", "st", "1-1", "f", "v")
	b.do("XGROUP", "CREATE", "st", "g", "0")
	b.do("SET", "e", "v")
	b.do("PEXPIREAT", "e", exp)
	b.do("SET", "n", "4")
	b.do("APPEND", "n", "2") // raw encoding instead of int
	b.do("PFADD", "hll", "r", "q", "p")
	b.do("ZADD", "z", "2", "b", "1", "a")
	b.do("RPUSH", "l", "1", "2", "3")
	b.do("SADD", "s", "1", "y", "x")
	b.do("HSET", "h", "m", "3", "a", "2", "z", "1")

	if enc := [2]string{string(a.do("OBJECT", "ENCODING", "h").str), string(b.do("OBJECT", "ENCODING", "h").str)}; enc[0] == enc[1] {
		t.Fatalf("test setup: both hashes use encoding %s; the test needs different ones", enc[0])
	}
	da, db := digest(t, aPort), digest(t, bPort)
	if da != db {
		t.Fatalf("equal states, different digests: %s vs %s", da, db)
	}
	cases := []struct {
		name string
		cmd  []string
	}{
		{"hash field", []string{"HSET", "h", "a", "changed"}},
		{"expiry", []string{"PEXPIREAT", "e", strconv.FormatInt(time.Now().Add(2*time.Hour).UnixMilli(), 10)}},
		{"persist", []string{"PERSIST", "e"}},
		{"zset score", []string{"ZADD", "z", "3", "a"}},
		{"list order", []string{"LSET", "l", "0", "9"}},
		{"stream group", []string{"XGROUP", "SETID", "st", "g", "$"}},
		{"hll register", []string{"PFADD", "hll", "new-element"}},
		{"new key in another db", []string{"SET", "k", "v"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, bPort, Credentials{})
			before := digest(t, bPort)
			snap := captureBytes(t, bPort)
			c.do(tc.cmd...)
			if tc.name == "new key in another db" {
				c.do("SELECT", "5")
				c.do(tc.cmd...)
				c.do("SELECT", "0")
				c.do("DEL", "k")
			}
			if after := digest(t, bPort); after == before {
				t.Errorf("%q did not change the digest %s", tc.cmd, after)
			}
			if _, err := openRedis(t, bPort, Credentials{}).Restore(context.Background(), bytes.NewReader(snap)); err != nil {
				t.Fatal(err)
			}
			if again := digest(t, bPort); again != before {
				t.Errorf("restored state digest %s, want %s", again, before)
			}
		})
	}
}

func captureBytes(t testing.TB, port int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := openRedis(t, port, Credentials{}).Capture(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestRedisRequirePass: a password-protected app is reached with the
// credentials of the contract's Secret, and refused without them.
func TestRedisRequirePass(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	port := startRedis(t, "--requirepass", "s3cret")
	creds := Credentials{Password: "s3cret", Source: "Secret default/redis-auth"}
	newClient(t, port, creds).do("SET", "k", "v")
	_, err := openRedis(t, port, Credentials{}).Capture(ctx, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("capture without credentials: %v, want a NOAUTH error", err)
	}
	_, err = openRedis(t, port, Credentials{Password: "wrong", Source: "Secret default/redis-auth"}).Capture(ctx, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "Secret default/redis-auth") {
		t.Fatalf("capture with a wrong password: %v, want an error naming the Secret", err)
	}
	var buf bytes.Buffer
	if st, err := openRedis(t, port, creds).Capture(ctx, &buf); err != nil || st.Keys != 1 {
		t.Fatalf("capture with credentials: %+v, %v", st, err)
	}
	if strings.Contains(buf.String(), "s3cret") {
		t.Fatal("the state stream contains the password")
	}
}

// TestRedisRestoreRefusesBadStreams: streams that are not whole Redis
// states are refused with ErrBadStream; a bad header leaves the app as it was.
func TestRedisRestoreRefusesBadStreams(t *testing.T) {
	requireIntegration(t)
	port := startRedis(t)
	c := newClient(t, port, Credentials{})
	c.do("SET", "keep", "me")
	good := captureBytes(t, port)
	httpState := func() []byte {
		var b bytes.Buffer
		sw, _ := newStreamWriter(&b, ProtoHTTP)
		_ = sw.record(kindBlob, []byte("x"))
		_ = sw.end()
		return b.Bytes()
	}()
	flipped := slices.Clone(good)
	flipped[len(flipped)/2] ^= 0x40
	cases := []struct {
		name      string
		data      []byte
		untouched bool // refused before the app is changed
	}{
		{"empty", nil, true},
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n"), true},
		{"http state", httpState, true},
		{"truncated", good[:len(good)-5], false},
		{"flipped byte", flipped, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.do("SET", "keep", "me")
			_, err := openRedis(t, port, Credentials{}).Restore(context.Background(), bytes.NewReader(tc.data))
			if !errors.Is(err, ErrBadStream) {
				var ae *AppError
				if tc.untouched || !errors.As(err, &ae) {
					t.Fatalf("restore: %v, want ErrBadStream", err)
				}
			}
			if tc.untouched {
				if v := c.do("GET", "keep"); string(v.str) != "me" {
					t.Fatalf("a refused stream changed the app: keep=%s", render(v))
				}
			}
		})
	}
}

// TestRedisDigestExpiryCutoff: two replicas with the same keys digest at
// different times; a key expires in between (gone on the later one). With
// one cut-off for both (the audit's stamp plus its window) keys expiring by
// then are left out everywhere and the digests agree; a real difference in a
// key expiring after the cut-off is still found. Without the cut-off the
// same equal states report a false divergence.
func TestRedisDigestExpiryCutoff(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	stamp := time.Now()
	edge := stamp.Add(400 * time.Millisecond) // expires between the two digests
	later := stamp.Add(time.Hour)
	cutoff := stamp.Add(2 * time.Second) // stamp + window
	fillBoth := func(c *client) {
		c.do("SET", "plain", "1")
		c.do("SET", "edge", "1")
		c.do("PEXPIREAT", "edge", strconv.FormatInt(edge.UnixMilli(), 10))
		c.do("SET", "later", "1")
		c.do("PEXPIREAT", "later", strconv.FormatInt(later.UnixMilli(), 10))
	}
	tests := []struct {
		name      string
		opt       DigestOptions
		diverge   func(c *client) // applied to the later replica only
		wantEqual bool
	}{
		{"cut-off: key expiring in between left out", DigestOptions{ExpiringBy: cutoff}, nil, true},
		{"no cut-off: false divergence", DigestOptions{}, nil, false},
		{"cut-off: value of a later key differs", DigestOptions{ExpiringBy: cutoff},
			func(c *client) { c.do("SETRANGE", "later", "0", "2") }, false},
		{"cut-off: expiry of a later key differs", DigestOptions{ExpiringBy: cutoff},
			func(c *client) { c.do("PEXPIREAT", "later", strconv.FormatInt(later.UnixMilli()+1, 10)) }, false},
		{"cut-off: a key without expiry only here", DigestOptions{ExpiringBy: cutoff},
			func(c *client) { c.do("SET", "extra", "x") }, false},
	}
	// Two Redis per case would be slow: reuse two and flush between cases.
	ePort, lPort := startRedis(t), startRedis(t)
	early, late := newClient(t, ePort, Credentials{}), newClient(t, lPort, Credentials{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stamp = time.Now()
			edge = stamp.Add(400 * time.Millisecond)
			if !tc.opt.ExpiringBy.IsZero() {
				tc.opt.ExpiringBy = stamp.Add(2 * time.Second)
			}
			for _, c := range []*client{early, late} {
				c.do("FLUSHALL")
				fillBoth(c)
			}
			if tc.diverge != nil {
				tc.diverge(late)
			}
			de, err := openRedis(t, ePort, Credentials{}).Digest(ctx, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Until(edge) + 150*time.Millisecond)
			if v := late.do("EXISTS", "edge"); v.num != 0 {
				t.Fatal("the edge key did not expire on the later replica")
			}
			dl, err := openRedis(t, lPort, Credentials{}).Digest(ctx, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			if (de == dl) != tc.wantEqual {
				t.Fatalf("early digest %v, late digest %v: equal=%v, want %v", de, dl, de == dl, tc.wantEqual)
			}
		})
	}
	t.Run("bound", func(t *testing.T) {
		early.do("FLUSHALL")
		for i := range 20 {
			early.do("SET", "k"+strconv.Itoa(i), "v")
		}
		if _, err := openRedis(t, ePort, Credentials{}).Digest(ctx, DigestOptions{MaxKeys: 10}); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("digest of 20 keys bounded to 10: %v, want ErrTooLarge", err)
		}
		if d, err := openRedis(t, ePort, Credentials{}).Digest(ctx, DigestOptions{MaxKeys: 20}); err != nil || d.Keys != 20 {
			t.Fatalf("digest of 20 keys bounded to 20: %v, %v", d, err)
		}
	})
}
