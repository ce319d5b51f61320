package nodestatus

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func member(group string, id uint64, role string, leader uint64, state string) Member {
	return Member{Group: group, MemberID: id, Pod: "default/" + strings.TrimPrefix(group, "default.") + "-" + string(rune('0'+id-1)), Role: role,
		Term: 3, Leader: leader, Commit: 10, Applied: 9, Lag: 1, State: state, LogBytes: 1536}
}

func TestWriteTable(t *testing.T) {
	ms := []Member{
		member("default.web", 2, "follower", 0, StateServing),
		member("default.redis", 2, "follower", 1, StateRebuilding),
		member("default.redis", 1, "leader", 1, StateServing),
	}
	ms[1].StateDetail = "3 entries wait for the app"
	tests := []struct {
		name string
		in   []Member
		o    TableOptions
		want []string // lines, in order, trailing spaces trimmed
	}{
		{"empty", nil, TableOptions{}, []string{"no replicated members"}},
		{"grouped, leader marked, unhealthy flagged", ms, TableOptions{}, []string{
			"GROUP          MEMBER  POD              ROLE      TERM  LEADER  COMMIT  APPLIED  LAG  SESSIONS  STATE       SNAPSHOT  LOG",
			"default.redis  *1      default/redis-0  leader    3     1       10      9        1    0         serving     0         1.5Ki",
			"default.redis  2       default/redis-1  follower  3     1       10      9        1    0         rebuilding  0         1.5Ki  <- rebuilding: 3 entries wait for the app",
			"",
			"default.web    2       default/web-1    follower  3     -       10      9        1    0         serving     0         1.5Ki  <- no leader",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			if err := WriteTable(&b, tc.in, tc.o); err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("table:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestWriteTableColorAndNode(t *testing.T) {
	ms := []Member{member("g", 1, "leader", 1, StateServing), member("g", 2, "follower", 1, StateBroken)}
	ms[0].Node, ms[1].Node = "node1", "node2"
	var b strings.Builder
	if err := WriteTable(&b, ms, TableOptions{Node: true, Color: true}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	if !strings.Contains(lines[0], "NODE") || !strings.HasPrefix(lines[1], ansiBold) || !strings.Contains(lines[1], "node1") ||
		!strings.HasPrefix(lines[2], ansiRed) || !strings.HasSuffix(lines[2], ansiReset) || !strings.Contains(lines[2], "<- broken") {
		t.Fatalf("coloured table:\n%q", b.String())
	}
	// Alignment ignores the escape codes: columns line up with the header.
	if strings.Index(lines[0], "ROLE") != strings.Index(strings.TrimPrefix(lines[1], ansiBold), "leader") {
		t.Errorf("columns not aligned:\n%s", b.String())
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1.0Ki", 64 << 20: "64.0Mi", 3 << 30: "3.0Gi"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestServeFetch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", SocketName)
	want := Report{Node: "node1", Time: time.Unix(100, 0).UTC(), Members: []Member{member("g", 1, "leader", 1, StateServing)}}
	stop, err := Serve(path, func() Report { return want }, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "smr_x 1\n")
	}))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v, want mode 0600", fi, err)
	}
	if _, err := Serve(path, func() Report { return want }, nil); err == nil || !strings.Contains(err.Error(), "another server answers") {
		t.Errorf("second Serve on a live socket: %v", err)
	}
	got, err := Fetch(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Node != want.Node || !got.Time.Equal(want.Time) || len(got.Members) != 1 || !reflect.DeepEqual(got.Members[0], want.Members[0]) {
		t.Fatalf("Fetch = %+v, want %+v", got, want)
	}
	if m, err := Get(context.Background(), path, MetricsPath); err != nil || string(m) != "smr_x 1\n" {
		t.Errorf("metrics on the socket: %q %v", m, err)
	}
	if _, err := Get(context.Background(), path, "/nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("unknown path: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := Fetch(context.Background(), path); err == nil || !strings.Contains(err.Error(), "is smr-cri serve running here") {
		t.Errorf("Fetch after stop: %v", err)
	}
}

func TestDecodeBadInput(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "status report"},
		{"not json", "status report"},
		{`{"members":[]}`, "no node name"},
		{`{"node":"n","members":[{"member":"one"}]}`, "cannot unmarshal"},
		{`[1,2]`, "cannot unmarshal"},
	} {
		if _, err := Decode([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Decode(%q) = %v, want error containing %q", tc.in, err, tc.want)
		}
	}
	// A newer serve's extra fields are ignored.
	r, err := Decode([]byte(`{"node":"n","members":[{"group":"g","member":1,"future":true}]}`))
	if err != nil || r.Members[0].MemberID != 1 {
		t.Errorf("Decode with an unknown field: %+v %v", r, err)
	}
}

func TestAddMissing(t *testing.T) {
	l := member("g", 1, "leader", 1, StateServing)
	l.Peers = []uint64{1, 2, 3}
	f := member("g", 2, "follower", 1, StateServing)
	f.Peers = []uint64{1, 2, 3, 4} // a stale or wider view: the leader's wins
	lone := member("h", 5, "follower", 0, StateServing)
	lone.Peers = []uint64{5, 6}
	got := AddMissing([]Member{f, l, lone})
	var ids []string
	for _, m := range got {
		ids = append(ids, m.Group+"/"+u(m.MemberID)+"/"+m.State)
	}
	want := []string{"g/1/serving", "g/2/serving", "g/3/unknown", "h/5/serving", "h/6/unknown"}
	if strings.Join(ids, " ") != strings.Join(want, " ") {
		t.Fatalf("AddMissing = %v, want %v", ids, want)
	}
	if got[2].Healthy() || got[2].Problem() != "unknown: no node reports this member (pod, node or smr-cri down?)" {
		t.Errorf("missing member %+v: %q", got[2], got[2].Problem())
	}
	var b strings.Builder
	if err := WriteTable(&b, got[:3], TableOptions{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "g      3       ?            ?         -     -       -       -        -    -         unknown  -         -      <- unknown: no node") {
		t.Errorf("missing member's row:\n%s", b.String())
	}
	if n := len(AddMissing(nil)); n != 0 {
		t.Errorf("AddMissing(nil) = %d rows", n)
	}
}
