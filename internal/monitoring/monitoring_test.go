package monitoring

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/smr-io/smr-cri/test/lab/cluster"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

const dir = "../../manifests/monitoring"

func TestMetricNames(t *testing.T) {
	names, err := MetricNames(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The core series the dashboard is about, and every pending one, are used.
	for _, want := range []string{"smr_commits_total", "smr_apply_lag_seconds", "smr_applied_index", "smr_leader",
		"smr_leader_changes_total", "smr_daemon_up"} {
		if !slices.Contains(names, want) {
			t.Errorf("manifests/monitoring does not use %s (names: %v)", want, names)
		}
	}
	for n := range Pending {
		if !slices.Contains(names, n) {
			t.Errorf("Pending lists %s, which manifests/monitoring does not use", n)
		}
	}
	if slices.Contains(names, "smr_apply_lag_seconds_bucket") {
		t.Errorf("histogram series not reduced to the family name: %v", names)
	}
	saved := Pending
	Pending = map[string]string{"smr_c": "#99 (a future issue)"}
	missing, pending := Missing([]string{"smr_a", "smr_c", "smr_b"}, map[string]bool{"smr_a": true})
	Pending = saved
	if !slices.Equal(missing, []string{"smr_b"}) || len(pending) != 1 || !strings.HasPrefix(pending[0], "smr_c (from #99") {
		t.Errorf("Missing = %v, %v", missing, pending)
	}
	if _, err := MetricNames(t.TempDir()); err == nil {
		t.Error("MetricNames of an empty dir: no error")
	}
}

// The PrometheusRule's spec is rules.yaml (what promtool checks).
func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	var rules, cr map[string]any
	for path, dst := range map[string]*map[string]any{"rules.yaml": &rules, "prometheusrule.yaml": &cr} {
		b, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(b, dst); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if cr["kind"] != "PrometheusRule" || cr["apiVersion"] != "monitoring.coreos.com/v1" {
		t.Fatalf("prometheusrule.yaml is %v %v", cr["apiVersion"], cr["kind"])
	}
	if !reflect.DeepEqual(cr["spec"], rules) {
		t.Fatal("prometheusrule.yaml's spec differs from rules.yaml: keep them equal")
	}
	// Every alert the issue asks for is there.
	b, _ := os.ReadFile(filepath.Join(dir, "rules.yaml"))
	for _, want := range []string{"SmrGroupNoLeader", "SmrReplicaNotServing", "SmrApplyLagHigh", "SmrLogGrowingWithoutSnapshots",
		"SmrReplicaDiverged", "SmrConnectionPanics"} {
		if !strings.Contains(string(b), "alert: "+want+"\n") {
			t.Errorf("rules.yaml has no alert %s", want)
		}
	}
}

// promtool (Debian package prometheus, installed by hack/install-deps.sh)
// accepts the rules: PromQL parses, labels and annotations are valid.
func TestPromtoolCheckRules(t *testing.T) {
	nodelab.RequireIntegration(t)
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not installed (hack/install-deps.sh installs the Debian package prometheus): %v", err)
	}
	out, err := exec.Command(promtool, "check", "rules", filepath.Join(dir, "rules.yaml")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	// And it would catch a broken expression.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("groups:\n- name: x\n  rules:\n  - alert: X\n    expr: max by (group (smr_leader)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", bad).CombinedOutput(); err == nil {
		t.Fatalf("promtool accepted a broken rule:\n%s", out)
	}
}

// The dashboard is valid JSON with a PromQL target per panel.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(dir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.UID != "smr-cri" || len(d.Panels) < 6 {
		t.Fatalf("dashboard %q with %d panels", d.UID, len(d.Panels))
	}
	var titles []string
	for _, p := range d.Panels {
		titles = append(titles, p.Title)
		if len(p.Targets) == 0 || p.Targets[0].Expr == "" {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") {
				t.Errorf("panel %q: unbalanced parentheses in %s", p.Title, tg.Expr)
			}
		}
	}
	all := strings.Join(titles, "|")
	for _, want := range []string{"Throughput", "latency", "lag", "Leader changes", "Repairs"} {
		if !strings.Contains(all, want) {
			t.Errorf("no panel about %s: %s", want, all)
		}
	}
}

// The component applies on top of manifests/ as the README shows: kubectl kustomize of an overlay
// with manifests/ as a resource and manifests/monitoring as a component yields the PodMonitor,
// the PrometheusRule and the dashboard ConfigMap, all in smr-system, beside the DaemonSet.
func TestComponentBuilds(t *testing.T) {
	nodelab.RequireIntegration(t)
	c, err := cluster.Config{}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, repo) // kustomize refuses absolute roots
	if err != nil {
		t.Fatal(err)
	}
	k := "resources: [" + rel + "/manifests]\ncomponents: [" + rel + "/manifests/monitoring]\n"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(c.KubectlPath(), "kustomize", overlay).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	kinds := map[string]string{}
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var o struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name, Namespace string
				Labels          map[string]string
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatal(err)
		}
		kinds[o.Kind] = o.Metadata.Namespace + "/" + o.Metadata.Name
		if o.Kind == "ConfigMap" && o.Metadata.Labels["grafana_dashboard"] != "1" {
			t.Errorf("dashboard ConfigMap without the grafana_dashboard label: %+v", o.Metadata)
		}
	}
	for kind, want := range map[string]string{"PodMonitor": "smr-system/smr-cri", "PrometheusRule": "smr-system/smr-cri",
		"ConfigMap": "smr-system/smr-cri-dashboard", "DaemonSet": "smr-system/smr-cri"} {
		if kinds[kind] != want {
			t.Errorf("%s = %q, want %s (all: %v)", kind, kinds[kind], want, kinds)
		}
	}
}
