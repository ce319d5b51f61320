package connstate

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// req renders one request as the framer would order it: its display name
// from the command table and its RESP bytes.
func req(args ...string) (op string, raw []byte) {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	var sub []byte
	if len(bs) > 1 {
		sub = bs[1]
	}
	c, _ := rediscmd.Lookup(bs[0], sub)
	return c.DisplayName(), rediscmd.EncodeRequest(bs)
}

// authOK stands for the origin's AUTHOK entry in a command list.
const authOK = "<AUTHOK>"

func feed(t *Tracker, id uint64, cmds ...[]string) {
	for _, c := range cmds {
		if c[0] == authOK {
			t.AuthOK(id)
			continue
		}
		op, raw := req(c...)
		t.Request(id, op, raw)
	}
}

// plan is the rebuild as "OP args | OP args", or "quit", or the error.
func plan(t *Tracker, id uint64) string {
	s, ok := t.Session(id)
	if !ok {
		return "closed"
	}
	reqs, quit, err := s.Rebuild()
	if quit {
		return "quit"
	}
	if err != nil {
		return "error: " + err.Error()
	}
	var out []string
	for _, r := range reqs {
		if r.AuthUser != "" {
			out = append(out, "AUTH as "+r.AuthUser)
			continue
		}
		args, err := rediscmd.SplitRequest(r.Raw)
		if err != nil {
			return "bad request: " + err.Error()
		}
		out = append(out, string(bytes.Join(args, []byte(" "))))
	}
	return strings.Join(out, " | ")
}

func TestTrackerRebuild(t *testing.T) {
	type cmds = [][]string
	for _, tc := range []struct {
		name string
		cmds cmds
		want string // plan, or a substring of the error after "error: "
	}{
		{"fresh", nil, ""},
		{"select", cmds{{"SELECT", "2"}}, "SELECT 2"},
		{"select twice keeps both (the later may fail on the server's database count)", cmds{{"SELECT", "2"}, {"SELECT", "40"}}, "SELECT 2 | SELECT 40"},
		{"identical select kept once, at its last place", cmds{{"SELECT", "2"}, {"SELECT", "3"}, {"SELECT", "2"}}, "SELECT 3 | SELECT 2"},
		{"select that fails on its argument is not recorded", cmds{{"SELECT", "2"}, {"SELECT", "x"}, {"SELECT", "-1"}, {"SELECT", "01"}}, "SELECT 2"},
		{"hello 3 with name", cmds{{"HELLO", "3", "SETNAME", "a"}}, "HELLO 3 SETNAME a"},
		{"hello without version changes nothing", cmds{{"HELLO"}}, ""},
		{"hello 4 fails", cmds{{"HELLO", "4"}}, ""},
		{"hello syntax error changes nothing", cmds{{"HELLO", "3", "BOGUS"}}, ""},
		{"later hello overrides earlier protocol", cmds{{"HELLO", "3"}, {"HELLO", "2"}}, "HELLO 2"},
		{"hello without name keeps an earlier name", cmds{{"HELLO", "3", "SETNAME", "a"}, {"HELLO", "2"}}, "HELLO 3 SETNAME a | HELLO 2"},
		{"setname overrides hello's name, not its protocol", cmds{{"HELLO", "3", "SETNAME", "a"}, {"CLIENT", "SETNAME", "b"}}, "HELLO 3 SETNAME a | CLIENT SETNAME b"},
		{"hello covers proto and name", cmds{{"CLIENT", "SETNAME", "b"}, {"HELLO", "2"}, {"HELLO", "3", "SETNAME", "c"}}, "HELLO 3 SETNAME c"},
		{"invalid name is not recorded", cmds{{"CLIENT", "SETNAME", "a"}, {"CLIENT", "SETNAME", "a b"}}, "CLIENT SETNAME a"},
		{"flags", cmds{{"CLIENT", "NO-EVICT", "on"}, {"CLIENT", "NO-TOUCH", "on"}, {"CLIENT", "NO-EVICT", "off"}, {"CLIENT", "NO-EVICT", "maybe"}},
			"CLIENT NO-TOUCH on | CLIENT NO-EVICT off"},
		{"setinfo", cmds{{"CLIENT", "SETINFO", "LIB-NAME", "go-redis"}, {"CLIENT", "SETINFO", "lib-ver", "9"}}, "CLIENT SETINFO LIB-NAME go-redis | CLIENT SETINFO lib-ver 9"},
		{"open transaction", cmds{{"SELECT", "1"}, {"MULTI"}, {"SET", "k", "v"}, {"INCR", "n"}}, "SELECT 1 | MULTI | SET k v | INCR n"},
		{"exec ends it", cmds{{"MULTI"}, {"SET", "k", "v"}, {"EXEC"}}, ""},
		{"discard ends it", cmds{{"MULTI"}, {"SET", "k", "v"}, {"DISCARD"}}, ""},
		{"nested multi changes nothing", cmds{{"MULTI"}, {"MULTI"}, {"SET", "k", "v"}}, "MULTI | SET k v"},
		{"unwatch inside multi is queued", cmds{{"MULTI"}, {"UNWATCH"}}, "MULTI | UNWATCH"},
		{"watch", cmds{{"WATCH", "k"}}, "WATCH is active"},
		{"watch then multi", cmds{{"WATCH", "k"}, {"MULTI"}, {"SET", "k", "v"}}, "WATCH is active"},
		{"watch ended by exec", cmds{{"WATCH", "k"}, {"MULTI"}, {"SET", "k", "v"}, {"EXEC"}}, ""},
		{"watch ended by unwatch", cmds{{"WATCH", "k"}, {"UNWATCH"}}, ""},
		{"exec outside multi keeps the watch", cmds{{"WATCH", "k"}, {"EXEC"}}, "WATCH is active"},
		{"auth", cmds{{"AUTH", "secret"}}, "it ran AUTH"},
		{"auth accepted", cmds{{"SELECT", "1"}, {"AUTH", "secret"}, {authOK}}, "SELECT 1 | AUTH as default"},
		{"auth of a user accepted", cmds{{"AUTH", "alice", "secret"}, {authOK}, {"SELECT", "2"}}, "AUTH as alice | SELECT 2"},
		{"later auth replaces the user", cmds{{"AUTH", "alice", "a"}, {authOK}, {"AUTH", "bob", "b"}, {authOK}}, "AUTH as bob"},
		{"failed auth after an accepted one", cmds{{"AUTH", "alice", "a"}, {authOK}, {"AUTH", "bob", "wrong"}, {"GET", "k"}}, "it ran AUTH"},
		{"authok not right after its auth", cmds{{"AUTH", "secret"}, {"SET", "k", "v"}, {authOK}}, "it ran AUTH"},
		{"authok without auth", cmds{{authOK}, {"SELECT", "3"}}, "SELECT 3"},
		{"hello auth accepted", cmds{{"HELLO", "3", "AUTH", "alice", "secret", "SETNAME", "n"}, {authOK}}, "AUTH as alice | HELLO 3 SETNAME n"},
		{"reset forgets the user", cmds{{"AUTH", "secret"}, {authOK}, {"RESET"}}, ""},
		{"what ran as another user is kept", cmds{{"CLIENT", "SETNAME", "a"}, {"AUTH", "bob", "b"}, {authOK}, {"CLIENT", "SETNAME", "b"}},
			"CLIENT SETNAME a | AUTH as bob | CLIENT SETNAME b"},
		{"what ran between two auths is kept in order", cmds{{"AUTH", "bob", "b"}, {authOK}, {"SELECT", "1"}, {"AUTH", "bob", "b"}, {authOK}, {"SELECT", "1"}},
			"AUTH as bob | SELECT 1 | AUTH as bob | SELECT 1"},
		{"auth right after auth replaces it", cmds{{"AUTH", "alice", "a"}, {authOK}, {"AUTH", "bob", "b"}, {authOK}, {"SELECT", "1"}, {"SELECT", "1"}},
			"AUTH as bob | SELECT 1"},
		{"hello auth", cmds{{"HELLO", "3", "AUTH", "default", "secret"}}, "it ran AUTH"},
		{"select inside multi", cmds{{"MULTI"}, {"SELECT", "2"}, {"EXEC"}}, "SELECT was queued inside a transaction"},
		{"auth inside multi", cmds{{"MULTI"}, {"AUTH", "secret"}}, "AUTH was queued inside a transaction"},
		{"reset clears all but the library", cmds{{"CLIENT", "SETINFO", "LIB-NAME", "x"}, {"SELECT", "1"}, {"AUTH", "p"}, {"WATCH", "k"}, {"MULTI"}, {"RESET"}},
			"CLIENT SETINFO LIB-NAME x"},
		{"reset inside multi", cmds{{"MULTI"}, {"SET", "a", "b"}, {"RESET"}, {"SELECT", "3"}}, "SELECT 3"},
		{"quit", cmds{{"SELECT", "1"}, {"QUIT"}}, "quit"},
		{"quit inside multi", cmds{{"MULTI"}, {"QUIT"}}, "quit"},
		{"writes outside multi are no state", cmds{{"SET", "k", "v"}, {"SELECT", "4"}, {"DEL", "k"}}, "SELECT 4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := New()
			tr.Open(7, 1, 6379, ProtoRESP)
			feed(tr, 7, tc.cmds...)
			got := plan(tr, 7)
			if strings.HasPrefix(got, "error: ") {
				if tc.want == "" || !strings.Contains(got, tc.want) {
					t.Fatalf("plan = %q, want %q", got, tc.want)
				}
				s, _ := tr.Session(7)
				if _, _, err := s.Rebuild(); !errors.Is(err, ErrNotRebuildable) {
					t.Fatalf("error %v does not wrap ErrNotRebuildable", err)
				}
			} else if got != tc.want {
				t.Fatalf("plan = %q, want %q", got, tc.want)
			}
			// The encoding carries the state exactly.
			b, err := tr.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Unmarshal(b)
			if err != nil {
				t.Fatalf("unmarshal: %v", err)
			}
			if again := plan(back, 7); again != got {
				t.Fatalf("after encoding: %q, want %q", again, got)
			}
		})
	}
}

// Every command the one command table flags as connection state has a
// rebuild rule here: none of them ends a session as "no rule".
func TestEveryConnStateCommandHasARule(t *testing.T) {
	n := 0
	for _, c := range rediscmd.Commands() {
		if !c.Has(rediscmd.ConnState) {
			continue
		}
		n++
		args := strings.Fields(c.DisplayName())
		tr := New()
		tr.Open(1, 1, 6379, ProtoRESP)
		feed(tr, 1, append(args, "x"))
		if s, ok := tr.Session(1); ok {
			if _, _, err := s.Rebuild(); err != nil && strings.Contains(err.Error(), "no rule") {
				t.Errorf("%s: %v", c.DisplayName(), err)
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d connection-state commands in the table", n)
	}
}

func TestTrackerNeverKeepsPasswords(t *testing.T) {
	tr := New()
	tr.Open(1, 1, 6379, ProtoRESP)
	tr.Open(2, 1, 6379, ProtoRESP)
	tr.Open(3, 1, 6379, ProtoRESP)
	feed(tr, 1, []string{"AUTH", "hunter2-secret"}, []string{"HELLO", "3", "AUTH", "u", "hunter2-secret"},
		[]string{"MULTI"}, []string{"AUTH", "hunter2-secret"}, []string{"SET", "k", "v"})
	feed(tr, 2, []string{"HELLO", "3", "AUTH", "u", "hunter2-secret", "SETNAME", "x"}) // AUTHOK pending
	feed(tr, 3, []string{"AUTH", "u", "hunter2-secret"}, []string{authOK})
	b, _ := tr.MarshalBinary()
	if bytes.Contains(b, []byte("hunter2-secret")) {
		t.Fatal("the encoding holds the password")
	}
	back, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	feed(back, 2, []string{authOK}) // the pending HELLO survived the encoding
	if got := plan(back, 2); got != "AUTH as u | HELLO 3 SETNAME x" {
		t.Fatalf("after encoding and AUTHOK: %q", got)
	}
}

func TestTrackerSessions(t *testing.T) {
	tr := New()
	tr.Open(1, 1, 6379, ProtoRESP)
	tr.Open(2, 2, 6379, ProtoRESP)
	tr.Open(3, 2, 8080, ProtoHTTP)
	feed(tr, 3, []string{"WATCH", "k"}) // HTTP sessions have no connection state
	if got := plan(tr, 3); got != "" {
		t.Fatalf("http session plan %q", got)
	}
	feed(tr, 1, []string{"SELECT", "5"})
	tr.Open(1, 1, 6379, ProtoRESP) // a replayed OPEN keeps the state
	if got := plan(tr, 1); got != "SELECT 5" {
		t.Fatalf("after replayed OPEN: %q", got)
	}
	if !tr.End(1, 42, "WATCH is active") || tr.End(1, 43, "again") {
		t.Fatal("End of an open session must report true once")
	}
	if e, ok := tr.EndedAt(1); !ok || e.Index != 42 || e.Origin != 1 {
		t.Fatalf("EndedAt = %+v %v", e, ok)
	}
	tr.ResetOrigin(2)
	if _, ok := tr.Session(2); ok {
		t.Fatal("RESET of origin 2 left its session")
	}
	tr.ResetOrigin(1)
	if _, ok := tr.EndedAt(1); ok {
		t.Fatal("RESET of origin 1 left its ended session")
	}
	tr.OpenUnknown(9, 3, 6379, ProtoRESP, "carried by an older snapshot")
	if got := plan(tr, 9); !strings.Contains(got, "older snapshot") {
		t.Fatalf("unknown session plan %q", got)
	}
}

func TestTrackerBounds(t *testing.T) {
	tr := New()
	tr.Open(1, 1, 6379, ProtoRESP)
	feed(tr, 1, []string{"MULTI"})
	big := strings.Repeat("v", 64<<10)
	for range MaxQueuedBytes/len(big) + 1 {
		feed(tr, 1, []string{"SET", "k", big})
	}
	if got := plan(tr, 1); !strings.Contains(got, "open transaction holds more than") {
		t.Fatalf("plan %q", got)
	}
	tr.Open(2, 1, 6379, ProtoRESP)
	for i := range maxSelects + 1 {
		feed(tr, 2, []string{"SELECT", strconv.Itoa(100 + i)})
	}
	if got := plan(tr, 2); !strings.Contains(got, "distinct databases") {
		t.Fatalf("plan %q", got)
	}
}

// Damaged encodings are refused, never a panic.
func TestUnmarshalDamaged(t *testing.T) {
	tr := New()
	tr.Open(1, 1, 6379, ProtoRESP)
	feed(tr, 1, []string{"SELECT", "2"}, []string{"MULTI"}, []string{"SET", "k", "v"})
	tr.Open(2, 2, 6379, ProtoRESP)
	tr.End(2, 9, "why")
	good, _ := tr.MarshalBinary()
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"version", append([]byte{9}, good[1:]...)},
		{"trailing", append(append([]byte{}, good...), 0)},
		{"huge count", []byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f}},
	} {
		if _, err := Unmarshal(tc.b); !errors.Is(err, ErrBadEncoding) {
			t.Errorf("%s: %v, want ErrBadEncoding", tc.name, err)
		}
	}
	for i := range len(good) {
		if _, err := Unmarshal(good[:i]); !errors.Is(err, ErrBadEncoding) {
			t.Errorf("truncated at %d: %v", i, err)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	tr := New()
	tr.Open(1, 1, 6379, ProtoRESP)
	feed(tr, 1, []string{"SELECT", "2"})
	good, _ := tr.MarshalBinary()
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		if tr, err := Unmarshal(b); err == nil {
			_, _ = tr.MarshalBinary()
		}
	})
}
