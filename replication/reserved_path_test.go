package replication

import "testing"

func TestReservedTarget(t *testing.T) {
	const sp = "/_smr/state"
	for _, tc := range []struct {
		op   string
		want bool
	}{
		{"GET /_smr/state", true},
		{"PUT /_smr/state", true},
		{"GET /_smr/state?x=1", true},
		{"GET /_smr/state/", true},
		{"GET /_smr/state/sub", true},
		{"GET /_smr/%73tate", true},
		{"GET /_smr%2Fstate", true},
		{"GET //_smr/state", true},
		{"GET /kv/../_smr/state", true},
		{"GET /./_smr/state", true},
		{"GET http://example/_smr/state", true},
		{"GET /%zz", true}, // does not decode
		{"GET /kv/_smr", false},
		{"GET /_smr/stateful", false},
		{"GET /_smr", false},
		{"GET /kv/a", false},
		{"OPTIONS *", false},
	} {
		if got := reservedTarget(tc.op, sp); got != tc.want {
			t.Errorf("reservedTarget(%q) = %v, want %v", tc.op, got, tc.want)
		}
	}
	if reservedTarget("GET /_smr/state", "") {
		t.Error("no snapshot path reserves nothing")
	}
}
