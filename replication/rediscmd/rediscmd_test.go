package rediscmd

import (
	"strings"
	"testing"
)

func words(s string) [][]byte {
	var out [][]byte
	for _, w := range strings.Fields(s) {
		out = append(out, []byte(w))
	}
	return out
}

func join(args [][]byte) string {
	var s []string
	for _, a := range args {
		s = append(s, string(a))
	}
	return strings.Join(s, " ")
}

// Each rewritten class, with the origin's clock at 1,000,000 ms.
func TestRewrite(t *testing.T) {
	const now = 1_000_000
	tests := []struct{ in, want string }{
		{"SET k v EX 10", "SET k v PXAT 1010000"},
		{"set k v px 250 NX GET", "set k v PXAT 1000250 NX GET"},
		{"SET k v", ""},
		{"SET k v EX 0", ""},   // Redis refuses it the same way everywhere
		{"SET k v EX abc", ""}, // idem
		{"SET k v EX 9223372036854775807", ""},
		{"SET k v PXAT 5", ""},
		{"SETEX k 10 v", "SET k v PXAT 1010000"},
		{"PSETEX k 10 v", "SET k v PXAT 1000010"},
		{"SETEX k 0 v", ""},
		{"EXPIRE k 10", "PEXPIREAT k 1010000"},
		{"EXPIRE k 10 NX", "PEXPIREAT k 1010000 NX"},
		{"PEXPIRE k -5", "PEXPIREAT k 999995"},
		{"GETEX k EX 1", "GETEX k PXAT 1001000"},
		{"GETEX k PERSIST", ""},
		{"RESTORE k 500 payload REPLACE", "RESTORE k 1000500 payload REPLACE ABSTTL"},
		{"RESTORE k 500 payload ABSTTL", ""},
		{"RESTORE k 0 payload", ""},
		{"XTRIM s MAXLEN ~ 100", "XTRIM s MAXLEN = 100"},
		{"XTRIM s MINID ~ 5-0 LIMIT 10", "XTRIM s MINID = 5-0"},
		{"XTRIM s MAXLEN = 100", ""},
		{"XADD s 5-1 f v", ""},
		{"XADD s MAXLEN ~ 10 LIMIT 5 5-1 f v", "XADD s MAXLEN = 10 5-1 f v"},
	}
	for _, tt := range tests {
		args := words(tt.in)
		c, ok := Lookup(args[0], args[1])
		if !ok {
			t.Fatalf("%s: not in the table", tt.in)
		}
		if got := join(c.Rewrite(args, now)); got != tt.want {
			t.Errorf("%s -> %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRewriteXaddAutoID(t *testing.T) {
	for _, tt := range []struct{ in, tail string }{
		{"XADD s * f v", "s 1000000 1 * f v"},
		{"XADD s NOMKSTREAM MAXLEN ~ 3 LIMIT 9 * f v", "s 1000000 5 NOMKSTREAM MAXLEN = 3 * f v"},
		{"xadd s minid 7 * a b c d", "s 1000000 3 minid 7 * a b c d"},
	} {
		args := words(tt.in)
		c, _ := Lookup(args[0], args[1])
		out := c.Rewrite(args, 1_000_000)
		if len(out) < 4 || string(out[0]) != "EVAL" || string(out[1]) != xaddScript || string(out[2]) != "1" {
			t.Fatalf("%s -> %q, want EVAL of the XADD script", tt.in, join(out))
		}
		if got := join(out[3:]); got != tt.tail {
			t.Errorf("%s -> EVAL ... %q, want %q", tt.in, got, tt.tail)
		}
	}
}

func TestSplitRequest(t *testing.T) {
	tests := []struct {
		raw  string
		want []string
		err  bool
	}{
		{"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n", []string{"SET", "k", "a\r\nb"}, false},
		{"SET k v\r\n", []string{"SET", "k", "v"}, false},
		{"  SET   \"a b\" 'c d'\n", []string{"SET", "a b", "c d"}, false},
		{"SET \"\\x41\\n\" 'it\\'s'\r\n", []string{"SET", "A\n", "it's"}, false},
		{"SET \"a\r\n", nil, true},
		{"SET \"a\"b\r\n", nil, true},
		{"*2\r\n$3\r\nGET\r\n$9\r\nk\r\n", nil, true},
	}
	for _, tt := range tests {
		got, err := SplitRequest([]byte(tt.raw))
		if (err != nil) != tt.err {
			t.Errorf("%q: err = %v", tt.raw, err)
			continue
		}
		if !tt.err && join(got) != strings.Join(tt.want, " ") {
			t.Errorf("%q -> %q, want %q", tt.raw, join(got), tt.want)
		}
	}
	args := words("SET k v")
	if got := string(EncodeRequest(args)); got != "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n" {
		t.Errorf("EncodeRequest = %q", got)
	}
}

func TestLookup(t *testing.T) {
	tests := []struct {
		name, sub string
		want      string
		t         Treatment
		flags     Flags
		ok        bool
	}{
		{"get", "k", "GET", Local, 0, true},
		{"client", "setname", "CLIENT|SETNAME", Ordered, ConnState, true},
		{"QUIT", "", "QUIT", Ordered, EndsConn, true},
		{"reset", "", "RESET", Ordered, ResetsConn, true},
		{"command", "", "COMMAND", Local, 0, true},
		{"COMMAND", "docs", "COMMAND|DOCS", Local, 0, true},
		{"client", "frob", "CLIENT|FROB", Unknown, 0, false},
		{"hexpire", "h", "HEXPIRE", Unknown, 0, false},
	}
	for _, tt := range tests {
		var sub []byte
		if tt.sub != "" {
			sub = []byte(tt.sub)
		}
		c, ok := Lookup([]byte(tt.name), sub)
		if ok != tt.ok || c.Name != tt.want || c.Treatment != tt.t || !c.Has(tt.flags) {
			t.Errorf("Lookup(%s %s) = %+v %v", tt.name, tt.sub, c, ok)
		}
	}
	for _, c := range Commands() {
		if c.Treatment == Unknown || c.Note == "" {
			t.Errorf("%s: treatment %s, note %q", c.Name, c.Treatment, c.Note)
		}
	}
}

// Any request the framer could hand over: splitting and rewriting never
// panic, and a rewrite is a well-formed request of the same command family.
func FuzzRewrite(f *testing.F) {
	for _, s := range []string{"SET k v EX 10\r\n", "*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nPX\r\n$20\r\n99999999999999999999\r\n",
		"XADD s MAXLEN ~ 1 LIMIT 2 * f v\r\n", "XADD s\r\n", "XADD s NOMKSTREAM MAXLEN\r\n", "RESTORE k 9223372036854775807 x\r\n",
		"EXPIRE k -9223372036854775808\r\n", "SETEX k 1\r\n", "GETEX k EX\r\n", "XTRIM s MINID ~\r\n", "SET \"a\\x4\" 'b\r\n"} {
		f.Add([]byte(s), int64(1_700_000_000_000))
	}
	f.Fuzz(func(t *testing.T, raw []byte, now int64) {
		out, err := Rewrite(raw, now)
		if err != nil || len(out) == 0 || &out[0] == &raw[0] {
			return
		}
		args, err := SplitRequest(out)
		if err != nil || len(args) == 0 {
			t.Fatalf("rewrite of %q is not a request: %q (%v)", raw, out, err)
		}
	})
}
