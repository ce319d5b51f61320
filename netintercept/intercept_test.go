package netintercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// selfNetns is a real network namespace path that unit tests may name without root.
const selfNetns = "/proc/self/ns/net"

// recordingExec records commands and answers them from a table keyed by program name.
type recordingExec struct {
	cmds    []Cmd
	answers map[string]func(Cmd) ([]byte, error)
}

func (r *recordingExec) Run(_ context.Context, c Cmd) ([]byte, error) {
	r.cmds = append(r.cmds, c)
	if f, ok := r.answers[c.Name]; ok {
		return f(c)
	}
	return nil, fmt.Errorf("%s: %w", c.Name, exec.ErrNotFound)
}

func (r *recordingExec) names() []string {
	var out []string
	for _, c := range r.cmds {
		out = append(out, c.String())
	}
	return out
}

func answer(out string) func(Cmd) ([]byte, error) {
	return func(Cmd) ([]byte, error) { return []byte(out), nil }
}

func failWith(msg string) func(Cmd) ([]byte, error) {
	return func(c Cmd) ([]byte, error) { return nil, fmt.Errorf("%s: exit status 1: %s", c.Name, msg) }
}

// fakeTables records table deletions.
type fakeTables struct {
	gen     uint32
	deleted []string
	err     error
}

func (f *fakeTables) Generation(context.Context, string) (uint32, error) { return f.gen, nil }
func (f *fakeTables) DeleteTable(_ context.Context, _ string, _ uint8, name string, gen uint32) error {
	if f.err != nil {
		return f.err
	}
	f.deleted = append(f.deleted, fmt.Sprintf("%s@%d", name, gen))
	return nil
}

var testSpec = Spec{ServicePorts: []uint16{6379}, ListenerPort: 15001}

func TestApply(t *testing.T) {
	rs, err := Build(testSpec)
	if err != nil {
		t.Fatal(err)
	}
	legacyForeign := "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -j ACCEPT\nCOMMIT\n"
	tests := []struct {
		name        string
		answers     map[string]func(Cmd) ([]byte, error)
		wantCmds    []string
		wantBackend Backend
		wantChanged bool
		wantErr     string
	}{
		{
			name:        "fresh namespace uses nf_tables",
			answers:     map[string]func(Cmd) ([]byte, error){"iptables-nft-save": answer(""), "iptables-legacy-save": answer(""), "iptables-nft-restore": answer("")},
			wantCmds:    []string{"iptables-nft-save", "iptables-legacy-save", "iptables-nft-restore --noflush"},
			wantBackend: BackendNFT, wantChanged: true,
		},
		{
			name:        "already applied runs no restore",
			answers:     map[string]func(Cmd) ([]byte, error){"iptables-nft-save": answer(fakeSave(rs)), "iptables-legacy-save": answer("")},
			wantCmds:    []string{"iptables-nft-save", "iptables-legacy-save"},
			wantBackend: BackendNFT, wantChanged: false,
		},
		{
			name:        "legacy rules in the namespace select legacy",
			answers:     map[string]func(Cmd) ([]byte, error){"iptables-nft-save": answer(""), "iptables-legacy-save": answer(legacyForeign), "iptables-legacy-restore": answer("")},
			wantCmds:    []string{"iptables-nft-save", "iptables-legacy-save", "iptables-legacy-restore --noflush --wait=10"},
			wantBackend: BackendLegacy, wantChanged: true,
		},
		{
			name:        "only legacy installed",
			answers:     map[string]func(Cmd) ([]byte, error){"iptables-legacy-save": answer(""), "iptables-legacy-restore": answer("")},
			wantCmds:    []string{"iptables-nft-save", "iptables-legacy-save", "iptables-legacy-restore --noflush --wait=10"},
			wantBackend: BackendLegacy, wantChanged: true,
		},
		{
			name:     "no backend",
			answers:  nil,
			wantCmds: []string{"iptables-nft-save", "iptables-legacy-save"},
			wantErr:  "no iptables backend available",
		},
		{
			name:     "restore fails",
			answers:  map[string]func(Cmd) ([]byte, error){"iptables-nft-save": answer(""), "iptables-legacy-save": answer(""), "iptables-nft-restore": failWith("RULE_APPEND failed")},
			wantCmds: []string{"iptables-nft-save", "iptables-legacy-save", "iptables-nft-restore --noflush"},
			wantErr:  "RULE_APPEND failed",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingExec{answers: tc.answers}
			ic := &Interceptor{Exec: rec}
			res, err := ic.Apply(context.Background(), selfNetns, testSpec)
			if !slices.Equal(rec.names(), tc.wantCmds) {
				t.Errorf("commands = %q, want %q", rec.names(), tc.wantCmds)
			}
			for _, c := range rec.cmds {
				if c.Netns != selfNetns {
					t.Errorf("%s ran in %q, want %q", c, c.Netns, selfNetns)
				}
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Apply error = %v, want one containing %q", err, tc.wantErr)
				}
				if tc.wantErr == "no iptables backend available" && !errors.Is(err, ErrNoBackend) {
					t.Errorf("error %v does not wrap ErrNoBackend", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if res.Backend != tc.wantBackend || res.Changed != tc.wantChanged {
				t.Errorf("result = %+v, want backend %s changed %v", res, tc.wantBackend, tc.wantChanged)
			}
			if last := rec.cmds[len(rec.cmds)-1]; tc.wantChanged && string(last.Stdin) != rs.Render() {
				t.Errorf("restore stdin:\n%s\nwant:\n%s", last.Stdin, rs.Render())
			}
		})
	}
}

func TestCleanup(t *testing.T) {
	rs, err := Build(testSpec)
	if err != nil {
		t.Fatal(err)
	}
	pristine := "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
	withForeign := fakeSave(rs, "-A PREROUTING -p udp -j ACCEPT")
	saves := []string{"iptables-nft-save", "iptables-legacy-save"}
	restore := "iptables-nft-restore --noflush"
	tests := []struct {
		name        string
		save        string
		tables      *fakeTables // nil: no table remover
		wantCmds    []string
		wantChanged bool
		wantDeleted []string
	}{
		{"nothing of ours", pristine, &fakeTables{gen: 7}, saves, false, nil},
		// The table holds only ours: it is deleted in one kernel transaction, no restore runs.
		{"only ours: table deleted", fakeSave(rs), &fakeTables{gen: 7}, saves, true, []string{"nat@7"}},
		{"foreign rules: only ours removed", withForeign, &fakeTables{gen: 7}, append(saves, restore), true, nil},
		{"no table remover: only ours removed", fakeSave(rs), nil, append(saves, restore), true, nil},
		// The ruleset changed after the generation was read: read again and remove only ours.
		{"concurrent change: only ours removed", fakeSave(rs), &fakeTables{gen: 7, err: ErrGenerationChanged},
			append(append(saves, saves...), restore), true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingExec{answers: map[string]func(Cmd) ([]byte, error){
				"iptables-nft-save":    answer(tc.save),
				"iptables-legacy-save": answer(""),
				"iptables-nft-restore": answer(""),
			}}
			ic := &Interceptor{Exec: rec}
			if tc.tables != nil {
				ic.Tables = tc.tables
			}
			res, err := ic.Cleanup(context.Background(), selfNetns)
			if err != nil {
				t.Fatalf("Cleanup: %v", err)
			}
			if res.Changed != tc.wantChanged {
				t.Errorf("changed = %v, want %v", res.Changed, tc.wantChanged)
			}
			if !slices.Equal(rec.names(), tc.wantCmds) {
				t.Errorf("commands = %q, want %q", rec.names(), tc.wantCmds)
			}
			if tc.tables != nil && !slices.Equal(tc.tables.deleted, tc.wantDeleted) {
				t.Errorf("deleted tables = %q, want %q", tc.tables.deleted, tc.wantDeleted)
			}
			if last := rec.cmds[len(rec.cmds)-1]; last.Name == "iptables-nft-restore" && !strings.Contains(string(last.Stdin), "-X SMR_PREROUTING") {
				t.Errorf("cleanup script does not delete our chain:\n%s", last.Stdin)
			}
		})
	}
}

// Bad namespace paths are refused before any command runs.
func TestBadNetnsPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, path, wantErr string }{
		{"empty", "", "netns path is empty"},
		{"missing", filepath.Join(dir, "missing"), "file does not exist"},
		{"regular file", file, "is not on nsfs"},
		{"directory", dir, "is not on nsfs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingExec{}
			ic := &Interceptor{Exec: rec}
			_, errApply := ic.Apply(context.Background(), tc.path, testSpec)
			_, errClean := ic.Cleanup(context.Background(), tc.path)
			_, errListen := ListenInNetns(tc.path, "tcp", "127.0.0.1:0")
			_, errDial := DialInNetns(context.Background(), tc.path, "tcp", "127.0.0.1:1")
			for what, err := range map[string]error{"Apply": errApply, "Cleanup": errClean, "ListenInNetns": errListen, "DialInNetns": errDial} {
				if !errors.Is(err, ErrNotNetns) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("%s error = %v, want ErrNotNetns containing %q", what, err, tc.wantErr)
				}
			}
			if len(rec.cmds) != 0 {
				t.Errorf("commands ran for a bad path: %q", rec.names())
			}
		})
	}
	if err := CheckNetnsPath(selfNetns); err != nil {
		t.Errorf("CheckNetnsPath(%s): %v", selfNetns, err)
	}
}

// An invalid spec is refused before anything runs.
func TestApplyInvalidSpec(t *testing.T) {
	rec := &recordingExec{}
	_, err := (&Interceptor{Exec: rec}).Apply(context.Background(), selfNetns, Spec{ServicePorts: []uint16{6379}, ListenerPort: 6379})
	if !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("Apply error = %v, want ErrInvalidSpec", err)
	}
	if len(rec.cmds) != 0 {
		t.Errorf("commands ran for an invalid spec: %q", rec.names())
	}
}

func TestBadAddresses(t *testing.T) {
	tests := []struct{ network, addr, wantErr string }{
		{"unix", "/tmp/x.sock", "only tcp"},
		{"udp", "127.0.0.1:53", "only tcp"},
		{"tcp", "localhost:6379", "literal IP"},
		{"tcp", "127.0.0.1", "missing port"},
	}
	for _, tc := range tests {
		if _, err := ListenInNetns(selfNetns, tc.network, tc.addr); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("ListenInNetns(%s, %s) error = %v, want %q", tc.network, tc.addr, err, tc.wantErr)
		}
		if _, err := DialInNetns(context.Background(), selfNetns, tc.network, tc.addr); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("DialInNetns(%s, %s) error = %v, want %q", tc.network, tc.addr, err, tc.wantErr)
		}
	}
	if _, err := DialInNetns(context.Background(), selfNetns, "tcp", ":6379"); err == nil {
		t.Errorf("DialInNetns accepted an empty host")
	}
}

func TestOriginalDstNotRedirected(t *testing.T) {
	if _, err := OriginalDst(nil); err == nil {
		t.Fatal("OriginalDst(nil) succeeded")
	}
	// A plain loopback connection either has no conntrack entry (an error naming the socket
	// option) or reports its own local address; it never invents another destination.
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			l, err := net.Listen(tc.network, tc.addr)
			if err != nil {
				t.Skipf("no %s loopback here: %v", tc.network, err)
			}
			defer l.Close()
			c, err := net.Dial(tc.network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			got, err := OriginalDst(s.(*net.TCPConn))
			t.Logf("OriginalDst = %v, %v", got, err)
			if err != nil {
				if !strings.Contains(err.Error(), "SO_ORIGINAL_DST") {
					t.Errorf("error %v does not name SO_ORIGINAL_DST", err)
				}
				return
			}
			if got.String() != l.Addr().String() {
				t.Errorf("OriginalDst = %s, want %s", got, l.Addr())
			}
		})
	}
}
