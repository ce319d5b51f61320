package podcontract

import "testing"

func TestWantsReplication(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		want   bool
	}{
		{"no labels", nil, false},
		{"true", map[string]string{LabelReplicate: "true"}, true},
		{"false", map[string]string{LabelReplicate: "false"}, false},
		{"other value", map[string]string{LabelReplicate: "yes"}, false},
		{"other label", map[string]string{"app": "redis"}, false},
	}
	for _, tc := range tests {
		if got := WantsReplication(tc.labels); got != tc.want {
			t.Errorf("%s: WantsReplication(%v) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}

func TestIsAnnotation(t *testing.T) {
	for _, k := range Annotations() {
		if !IsAnnotation(k) {
			t.Errorf("IsAnnotation(%q) = false for a listed key", k)
		}
	}
	for _, k := range []string{LabelReplicate + "x", "smr.io/unknown", ""} {
		if IsAnnotation(k) {
			t.Errorf("IsAnnotation(%q) = true", k)
		}
	}
	a := Annotations()
	a[0] = "changed"
	if Annotations()[0] == "changed" {
		t.Error("Annotations returns a shared slice")
	}
}
