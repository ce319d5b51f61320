package cri

import (
	"errors"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/replication/podcontract"
)

func TestNetNSPath(t *testing.T) {
	tests := []struct {
		name    string
		info    map[string]string
		want    string
		wantErr string
		noNetNS bool // error must be ErrNoNetNS
	}{
		{"containerd 1.6 verbose info", map[string]string{"info": containerdSandboxInfo("abc", true)}, fakeNetNS("abc"), "", false},
		{"host network pod", map[string]string{"info": containerdSandboxInfo("abc", false)}, "", "host network", true},
		{"no info key", map[string]string{"other": "{}"}, "", `no verbose sandbox info`, true},
		{"nil info", nil, "", `no verbose sandbox info`, true},
		{"malformed JSON", map[string]string{"info": `{"runtimeSpec":`}, "", "parse verbose sandbox info", false},
		{"no runtimeSpec", map[string]string{"info": `{"pid":1}`}, "", "no runtimeSpec.linux", true},
		{"network without path", map[string]string{"info": `{"runtimeSpec":{"linux":{"namespaces":[{"type":"network"}]}}}`}, "", "has no path", true},
		{"wrong type for namespaces", map[string]string{"info": `{"runtimeSpec":{"linux":{"namespaces":"net"}}}`}, "", "parse verbose sandbox info", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := netNSPath(tc.info)
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("netNSPath = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
			}
			if errors.Is(err, ErrNoNetNS) != tc.noNetNS {
				t.Fatalf("errors.Is(err, ErrNoNetNS) = %v, want %v", !tc.noNetNS, tc.noNetNS)
			}
		})
	}
}

func TestPodInfoIPs(t *testing.T) {
	tests := []struct {
		name    string
		network *runtimeapi.PodSandboxNetworkStatus
		want    []string
	}{
		{"none", nil, nil},
		{"primary", &runtimeapi.PodSandboxNetworkStatus{Ip: "198.19.1.5"}, []string{"198.19.1.5"}},
		{"dual stack", &runtimeapi.PodSandboxNetworkStatus{Ip: "198.19.1.5", AdditionalIps: []*runtimeapi.PodIP{{Ip: "2001:db8::5"}, {Ip: ""}}},
			[]string{"198.19.1.5", "2001:db8::5"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := &runtimeapi.PodSandboxStatusResponse{
				Status: &runtimeapi.PodSandboxStatus{Network: tc.network},
				Info:   map[string]string{"info": containerdSandboxInfo("s1", true)},
			}
			pod, err := podInfo("s1", podConfig("p", nil), st)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(pod.IPs, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("IPs = %v, want %v", pod.IPs, tc.want)
			}
		})
	}
}

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{"unix:///run/containerd/containerd.sock", "unix:///run/containerd/containerd.sock", ""},
		{"/run/containerd/containerd.sock", "unix:///run/containerd/containerd.sock", ""},
		{"unix:///run//containerd/../containerd/c.sock", "unix:///run/containerd/c.sock", ""},
		{"tcp://127.0.0.1:1234", "", "only unix:// endpoints"},
		{"npipe:////./pipe/containerd", "", "only unix:// endpoints"},
		{"unix://", "", "empty socket path"},
		{"", "", "empty socket path"},
		{"unix://run/containerd.sock", "", "must be absolute"},
		{"containerd.sock", "", "must be absolute"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseEndpoint(tc.in)
			// DialRuntime, the one runtime client of proxy, daemon and
			// install, takes the same endpoints to a lazy connection.
			conn, dialErr := DialRuntime(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrBadEndpoint) {
					t.Fatalf("ParseEndpoint(%q) = %q, %v; want ErrBadEndpoint containing %q", tc.in, got, err, tc.wantErr)
				}
				if dialErr == nil || !errors.Is(dialErr, ErrBadEndpoint) {
					t.Fatalf("DialRuntime(%q) error = %v, want ErrBadEndpoint", tc.in, dialErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseEndpoint(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			if dialErr != nil {
				t.Fatalf("DialRuntime(%q): %v", tc.in, dialErr)
			}
			defer conn.Close()
			if conn.Target() != tc.want {
				t.Fatalf("DialRuntime(%q) target = %q, want %q", tc.in, conn.Target(), tc.want)
			}
		})
	}
}

// SandboxPodInfo reads everything from the status (re-attach after a daemon
// restart), and refuses a status without ID or network namespace.
func TestSandboxPodInfo(t *testing.T) {
	st := &runtimeapi.PodSandboxStatusResponse{
		Status: &runtimeapi.PodSandboxStatus{
			Id:          "sb1",
			Metadata:    &runtimeapi.PodSandboxMetadata{Name: "redis-0", Namespace: "default", Uid: "u1"},
			Labels:      map[string]string{podcontract.LabelReplicate: podcontract.ValueReplicate},
			Annotations: map[string]string{"smr.io/ports": "6379/resp"},
			Network:     &runtimeapi.PodSandboxNetworkStatus{Ip: "198.18.5.2"},
		},
		Info: map[string]string{"info": containerdSandboxInfo("sb1", true)},
	}
	pod, err := SandboxPodInfo(st)
	if err != nil {
		t.Fatal(err)
	}
	if pod.SandboxID != "sb1" || pod.Name != "redis-0" || pod.Namespace != "default" || pod.UID != "u1" ||
		pod.NetNSPath != fakeNetNS("sb1") || len(pod.IPs) != 1 || pod.IPs[0] != "198.18.5.2" ||
		pod.Labels[podcontract.LabelReplicate] != podcontract.ValueReplicate || pod.Annotations["smr.io/ports"] != "6379/resp" {
		t.Fatalf("unexpected pod info %+v", pod)
	}
	for name, bad := range map[string]*runtimeapi.PodSandboxStatusResponse{
		"no ID":    {Status: &runtimeapi.PodSandboxStatus{}, Info: st.Info},
		"no netns": {Status: st.Status, Info: map[string]string{"info": containerdSandboxInfo("sb1", false)}},
	} {
		if _, err := SandboxPodInfo(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
