package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/netintercept"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestParseProbeSources(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []string
		want    ProbeSources
		wantErr string
	}{
		{name: "nothing is none", in: nil},
		{name: "none", in: []string{"none"}},
		{name: "auto", in: []string{"auto"}, want: ProbeSources{Auto: true}},
		{name: "addresses and auto", in: []string{" 198.19.1.1", "auto", "", "198.19.2.1"},
			want: ProbeSources{Auto: true, Addrs: addrs("198.19.1.1", "198.19.2.1")}},
		{name: "v4-mapped is IPv4", in: []string{"::ffff:198.19.1.1"}, want: ProbeSources{Addrs: addrs("198.19.1.1")}},
		{name: "not an address", in: []string{"node1"}, wantErr: `probe source "node1": want an IPv4 address`},
		{name: "IPv6", in: []string{"fd00::1"}, wantErr: "fd00::1 is not IPv4"},
		{name: "loopback", in: []string{"127.0.0.1"}, wantErr: "127.0.0.1 is not a node address"},
		{name: "unspecified", in: []string{"0.0.0.0"}, wantErr: "0.0.0.0 is not a node address"},
		{name: "twice", in: []string{"198.19.1.1", "198.19.1.1"}, wantErr: "198.19.1.1 is listed twice"},
		{name: "none with auto", in: []string{"none", "auto"}, wantErr: `"none" cannot be combined`},
		{name: "none with address", in: []string{"198.19.1.1", "none"}, wantErr: `"none" cannot be combined`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseProbeSources(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseProbeSources(%q) error = %v, want %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Auto != tc.want.Auto || !slices.Equal(got.Addrs, tc.want.Addrs) {
				t.Fatalf("ParseProbeSources(%q) = %+v, %v, want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

// The detection rule on the routes a pod sees on common CNIs.
func TestChooseProbeSources(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   podRoutes
		want []netip.Addr
	}{
		{name: "bridge: gateway is the node's source", want: addrs("198.19.1.1"), in: podRoutes{
			Gateways: addrs("198.19.1.1"), PodIPs: addrs("198.19.1.5"), HostSources: addrs("198.19.1.1")}},
		{name: "gateway differs from the node's source (both kept, sorted)", want: addrs("169.254.1.1", "198.18.0.7"),
			in: podRoutes{Gateways: addrs("169.254.1.1"), PodIPs: addrs("198.19.1.5"), HostSources: addrs("198.18.0.7")}},
		{name: "no default route: the node's route source", want: addrs("198.19.1.1"), in: podRoutes{
			PodIPs: addrs("198.19.1.5"), HostSources: addrs("198.19.1.1")}},
		{name: "the pod's own IP is never a probe source (daemon in the pod's netns)", want: nil, in: podRoutes{
			PodIPs: addrs("198.19.1.5"), HostSources: addrs("198.19.1.5")}},
		{name: "loopback, unspecified, IPv6 dropped", want: addrs("198.19.1.1"), in: podRoutes{
			Gateways: addrs("0.0.0.0", "fd00::1", "198.19.1.1"), HostSources: addrs("127.0.0.1", "::ffff:198.19.1.1")}},
		{name: "nothing", want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := chooseProbeSources(tc.in); !slices.Equal(got, tc.want) {
				t.Fatalf("chooseProbeSources(%+v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

type recordingInterceptor struct{ specs []netintercept.Spec }

func (r *recordingInterceptor) Apply(_ context.Context, _ string, s netintercept.Spec) (netintercept.Result, error) {
	r.specs = append(r.specs, s)
	return netintercept.Result{}, nil
}
func (r *recordingInterceptor) Cleanup(context.Context, string) (netintercept.Result, error) {
	return netintercept.Result{}, nil
}

// The daemon's interceptor adds explicit and detected sources to each pod's
// spec, without duplicates; a failed detection still attaches the pod.
func TestInterceptorAddsProbeSources(t *testing.T) {
	for _, tc := range []struct {
		name   string
		probes ProbeSources
		found  []netip.Addr
		err    error
		want   []netip.Addr
	}{
		{name: "none", want: nil},
		{name: "explicit", probes: ProbeSources{Addrs: addrs("198.19.1.1")}, want: addrs("198.19.1.1")},
		{name: "auto", probes: ProbeSources{Auto: true}, found: addrs("198.19.2.1"), want: addrs("198.19.2.1")},
		{name: "explicit and auto, same address once", probes: ProbeSources{Auto: true, Addrs: addrs("198.19.2.1", "198.19.9.9")},
			found: addrs("198.19.2.1"), want: addrs("198.19.2.1", "198.19.9.9")},
		{name: "detection fails", probes: ProbeSources{Auto: true, Addrs: addrs("198.19.9.9")},
			err: errors.New("no route"), want: addrs("198.19.9.9")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingInterceptor{}
			k := &keepingInterceptor{Interceptor: rec, probes: tc.probes, log: slog.New(slog.DiscardHandler),
				detect: func(string) ([]netip.Addr, error) { return tc.found, tc.err }}
			if _, err := k.Apply(context.Background(), "/var/run/netns/x", netintercept.Spec{ServicePorts: []uint16{6379}}); err != nil {
				t.Fatal(err)
			}
			got := rec.specs[0].ProbeSources
			slices.SortFunc(got, netip.Addr.Compare)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("probe sources = %v, want %v", got, tc.want)
			}
		})
	}
}
