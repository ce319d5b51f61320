package freeport

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestPickWindow(t *testing.T) {
	tests := []struct {
		elow, ehigh, low, high int
		wantErr                bool
	}{
		{32768, 60999, defaultLow, defaultHigh, false}, // Linux default
		{1024, 29000, 29001, 65535, false},             // overlaps the default window from below
		{15000, 65535, 11000, 14999, false},            // the whole top is ephemeral
		{1024, 65535, 0, 0, true},                      // nothing left
	}
	for _, tc := range tests {
		low, high, err := pickWindow(tc.elow, tc.ehigh)
		if (err != nil) != tc.wantErr || low != tc.low || high != tc.high {
			t.Errorf("pickWindow(%d, %d) = %d, %d, %v; want %d, %d, err=%v", tc.elow, tc.ehigh, low, high, err, tc.low, tc.high, tc.wantErr)
		}
	}
}

func TestEphemeralRangeBadFile(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"one": "32768\n", "words": "a b\n"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ephemeralRange(p); err == nil {
			t.Errorf("ephemeralRange(%q) accepted bad content", content)
		}
	}
	if _, _, err := ephemeralRange(filepath.Join(dir, "missing")); err == nil {
		t.Error("ephemeralRange accepted a missing file")
	}
}

// TestPortIsOutsideEphemeralAndBindable checks the property the package
// exists for: a returned port is bindable and not one the kernel would hand
// to a :0 listener.
func TestPortIsOutsideEphemeralAndBindable(t *testing.T) {
	elow, ehigh, err := ephemeralRange("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skip(err)
	}
	seen := map[int]bool{}
	for range 50 {
		p, err := Port()
		if err != nil {
			t.Fatal(err)
		}
		if p >= elow && p <= ehigh {
			t.Fatalf("port %d is inside the ephemeral range %d-%d", p, elow, ehigh)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d not bindable: %v", p, err)
		}
		l.Close()
	}
}
