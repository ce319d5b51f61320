package nodelab

import "testing"

// Fixed addressing (multi-node clusters) must not claim a slot and must reject bad input.
func TestLabAddressingFixed(t *testing.T) {
	tests := []struct {
		name    string
		opts    ContainerdOptions
		want    labState
		wantErr bool
	}{
		{name: "fixed subnet in a netns",
			opts: ContainerdOptions{Subnet: "198.19.1.0/24", Bridge: "smrpod", NetNS: "/var/run/netns/n1"},
			want: labState{Subnet: "198.19.1.0/24", Bridge: "smrpod", NetNS: "/var/run/netns/n1"}},
		{name: "subnet without bridge", opts: ContainerdOptions{Subnet: "198.19.1.0/24"}, wantErr: true},
		{name: "bad subnet", opts: ContainerdOptions{Subnet: "198.19.1.0", Bridge: "b"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := labAddressing("/nonexistent", tc.opts)
			if (err != nil) != tc.wantErr {
				t.Fatalf("labAddressing error = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Fatalf("labAddressing = %+v, want %+v", got, tc.want)
			}
		})
	}
}
