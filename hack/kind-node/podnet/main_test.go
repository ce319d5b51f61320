package main

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name, cidr, ip string) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr}}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip}}
	}
	return n
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name    string
		nodes   []corev1.Node
		want    NodePlan
		wantErr error
		anyErr  bool
	}{
		{
			name:  "routes to every other node",
			nodes: []corev1.Node{node("a", "198.19.0.0/24", "198.18.128.2"), node("b", "198.19.1.0/24", "198.18.128.3"), node("c", "198.19.2.0/24", "198.18.128.4")},
			want:  NodePlan{PodCIDR: "198.19.0.0/24", Routes: []Route{{"198.19.1.0/24", "198.18.128.3"}, {"198.19.2.0/24", "198.18.128.4"}}},
		},
		{
			name:  "nodes without subnet or address yet are skipped",
			nodes: []corev1.Node{node("a", "198.19.0.0/24", "198.18.128.2"), node("b", "", "198.18.128.3"), node("c", "198.19.2.0/24", "")},
			want:  NodePlan{PodCIDR: "198.19.0.0/24"},
		},
		{name: "self without subnet", nodes: []corev1.Node{node("a", "", "198.18.128.2")}, wantErr: ErrNoPodCIDR},
		{name: "self missing", nodes: []corev1.Node{node("b", "198.19.1.0/24", "198.18.128.3")}, anyErr: true},
		{name: "malformed own subnet", nodes: []corev1.Node{node("a", "198.19.0.0/33", "198.18.128.2")}, anyErr: true},
		{name: "malformed other subnet", nodes: []corev1.Node{node("a", "198.19.0.0/24", "x"), node("b", "nope", "198.18.128.3")}, anyErr: true},
		{name: "malformed other address", nodes: []corev1.Node{node("a", "198.19.0.0/24", "x"), node("b", "198.19.1.0/24", "not-an-ip")}, anyErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Plan("a", tt.nodes)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			case tt.anyErr:
				if err == nil {
					t.Fatalf("no error, plan %+v", got)
				}
			case err != nil:
				t.Fatal(err)
			case !reflect.DeepEqual(got, tt.want):
				t.Fatalf("plan = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestConflistIsJSONWithTheSubnet(t *testing.T) {
	var c struct {
		Plugins []struct {
			Type string
			IPAM struct {
				Ranges [][]struct{ Subnet string }
			}
		}
	}
	if err := json.Unmarshal([]byte(Conflist("198.19.3.0/24")), &c); err != nil {
		t.Fatal(err)
	}
	if c.Plugins[0].Type != "bridge" || c.Plugins[0].IPAM.Ranges[0][0].Subnet != "198.19.3.0/24" {
		t.Fatalf("conflist = %+v", c)
	}
}

func TestAPIHost(t *testing.T) {
	tests := []struct{ inCluster, endpoint, want string }{
		{"https://198.18.224.1:443", "", "https://198.18.224.1:443"},
		{"https://198.18.224.1:443", "smr-control-plane:6443", "https://smr-control-plane:6443"},
	}
	for _, tc := range tests {
		if got := apiHost(tc.inCluster, tc.endpoint); got != tc.want {
			t.Errorf("apiHost(%q, %q) = %q, want %q", tc.inCluster, tc.endpoint, got, tc.want)
		}
	}
}
