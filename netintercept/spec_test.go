package netintercept

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := Spec{ServicePorts: []uint16{6379}, ListenerPort: 15001}
	with := func(f func(*Spec)) Spec { s := ok; f(&s); return s }
	tests := []struct {
		name    string
		spec    Spec
		wantErr string // "" means valid
	}{
		{"minimal", ok, ""},
		{"everything", with(func(s *Spec) {
			s.ExcludePorts = []uint16{2380}
			s.ProbeSources = []netip.Addr{netip.MustParseAddr("198.18.0.1")}
			s.Mark = 0x4000
		}), ""},
		{"no service ports", with(func(s *Spec) { s.ServicePorts = nil }), "no service ports"},
		{"zero service port", with(func(s *Spec) { s.ServicePorts = []uint16{0} }), "service port 0 is out of range"},
		{"zero listener port", with(func(s *Spec) { s.ListenerPort = 0 }), "listener port 0 is out of range"},
		{"zero exclude port", with(func(s *Spec) { s.ExcludePorts = []uint16{0} }), "exclude port 0 is out of range"},
		{"listener equals service port", with(func(s *Spec) { s.ListenerPort = 6379 }), "service port 6379 is also the listener port"},
		{"duplicate service port", with(func(s *Spec) { s.ServicePorts = []uint16{6379, 6379} }), "service port 6379 is listed twice"},
		{"excluded service port", with(func(s *Spec) { s.ExcludePorts = []uint16{6379} }), "exclude port 6379 is also a service port"},
		{"excluded listener port", with(func(s *Spec) { s.ExcludePorts = []uint16{15001} }), "exclude port 15001 is also the listener port"},
		{"duplicate exclude port", with(func(s *Spec) { s.ExcludePorts = []uint16{2380, 2380} }), "exclude port 2380 is listed twice"},
		{"empty probe source", with(func(s *Spec) { s.ProbeSources = []netip.Addr{{}} }), "probe source address is empty"},
		{"ipv6 probe source", with(func(s *Spec) { s.ProbeSources = []netip.Addr{netip.MustParseAddr("2001:db8::1")} }), "not IPv4"},
		{"loopback probe source", with(func(s *Spec) { s.ProbeSources = []netip.Addr{netip.MustParseAddr("127.0.0.1")} }), "not a node address"},
		{"unspecified probe source", with(func(s *Spec) { s.ProbeSources = []netip.Addr{netip.IPv4Unspecified()} }), "not a node address"},
		{"duplicate probe source", with(func(s *Spec) {
			s.ProbeSources = []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("::ffff:198.18.0.1")}
		}), "listed twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("Validate error = %v, want one wrapping ErrInvalidSpec containing %q", err, tc.wantErr)
			}
			if _, err := Build(tc.spec); !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("Build accepted an invalid spec (err %v)", err)
			}
		})
	}
}

func TestCheckPort(t *testing.T) {
	tests := []struct {
		in      int
		want    uint16
		wantErr bool
	}{{1, 1, false}, {65535, 65535, false}, {0, 0, true}, {-1, 0, true}, {65536, 0, true}}
	for _, tc := range tests {
		got, err := CheckPort("service port", tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("CheckPort(%d) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "out of range") {
			t.Errorf("CheckPort(%d) error %q does not say out of range", tc.in, err)
		}
	}
}
