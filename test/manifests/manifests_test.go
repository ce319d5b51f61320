// Package manifests checks what a user applies: every manifest and example
// decodes strictly into the Kubernetes API types (unknown or duplicate fields
// fail), kustomizations list every file, the DaemonSet agrees with what
// `smr-cri install` and `smr-cri trace` use, the Redis example satisfies the
// pod contract parser, and hack/kind-config.yaml decodes strictly into kind's
// v1alpha4 types.
package manifests

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/smr-io/smr-cri/internal/install"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/podcontract"
)

// repo is the repository root, relative to this package.
const repo = "../.."

// manifestDirs hold Kubernetes objects (plus a kustomization.yaml each).
var manifestDirs = []string{"manifests", "manifests/uninstall", "examples/redis"}

// newObject returns an empty typed object for a document's apiVersion/kind.
func newObject(tm metav1.TypeMeta) (any, error) {
	switch tm.APIVersion + "/" + tm.Kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, nil
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1/Service":
		return &corev1.Service{}, nil
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}, nil
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, nil
	case "rbac.authorization.k8s.io/v1/Role":
		return &rbacv1.Role{}, nil
	case "rbac.authorization.k8s.io/v1/RoleBinding":
		return &rbacv1.RoleBinding{}, nil
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}, nil
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, nil
	}
	return nil, fmt.Errorf("unexpected object %s %s", tm.APIVersion, tm.Kind)
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeFile strictly decodes every document of a manifest file.
func decodeFile(path string) ([]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var objs []any
	for i, doc := range docSep.Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("%s document %d: %w", path, i, err)
		}
		obj, err := newObject(tm)
		if err != nil {
			return nil, fmt.Errorf("%s document %d: %w", path, i, err)
		}
		if err := strictUnmarshal([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("%s document %d (%s): %w", path, i, tm.Kind, err)
		}
		objs = append(objs, obj)
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("%s: no objects", path)
	}
	return objs, nil
}

// strictUnmarshal decodes YAML as the API server does with
// fieldValidation=Strict: duplicate keys, unknown fields and fields that
// match only when ignoring case are errors (encoding/json alone would accept
// "hostPid" for hostPID).
func strictUnmarshal(data []byte, obj any) error {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	strict, err := sigsjson.UnmarshalStrict(js, obj)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.Lines(doc) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// kustomization is the part of kustomize's Kustomization the repo uses.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// loadAll decodes every manifest and returns the objects by file.
func loadAll(t *testing.T) map[string][]any {
	t.Helper()
	all := map[string][]any{}
	for _, dir := range manifestDirs {
		files, err := filepath.Glob(filepath.Join(repo, dir, "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no manifests in %s: %v", dir, err)
		}
		for _, f := range files {
			if filepath.Base(f) == "kustomization.yaml" {
				continue
			}
			objs, err := decodeFile(f)
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(repo, f)
			all[rel] = objs
		}
	}
	return all
}

func find[T any](all map[string][]any, name string) *T {
	for _, objs := range all {
		for _, o := range objs {
			if v, ok := o.(*T); ok {
				if m, ok := any(v).(metav1.Object); ok && m.GetName() == name {
					return v
				}
			}
		}
	}
	return nil
}

func TestManifestsDecodeStrictly(t *testing.T) {
	all := loadAll(t)
	for f, objs := range all {
		t.Logf("%s: %d objects", f, len(objs))
	}
}

// TestStrictDecodingCatchesTypos proves the decoder is strict.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	dir := t.TempDir()
	for name, doc := range map[string]string{
		"unknown field":     "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      hostPid: true\n",
		"duplicate field":   "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nmetadata: {name: b}\n",
		"case-folded field": "apiVersion: v1\nkind: Namespace\nMetadata: {name: a}\n",
		"unknown kind":      "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n",
	} {
		p := filepath.Join(dir, "x.yaml")
		os.WriteFile(p, []byte(doc), 0o644)
		if _, err := decodeFile(p); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

func TestKustomizationsListEveryFile(t *testing.T) {
	for _, dir := range manifestDirs {
		data, err := os.ReadFile(filepath.Join(repo, dir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k kustomization
		if err := strictUnmarshal(data, &k); err != nil {
			t.Fatalf("%s/kustomization.yaml: %v", dir, err)
		}
		if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
			t.Errorf("%s/kustomization.yaml: apiVersion/kind %s/%s", dir, k.APIVersion, k.Kind)
		}
		files, _ := filepath.Glob(filepath.Join(repo, dir, "*.yaml"))
		var want []string
		for _, f := range files {
			if b := filepath.Base(f); b != "kustomization.yaml" {
				want = append(want, b)
			}
		}
		got := slices.Sorted(slices.Values(k.Resources))
		if !slices.Equal(got, want) {
			t.Errorf("%s/kustomization.yaml lists %q, the directory has %q", dir, got, want)
		}
	}
}

// TestRBACLeastPrivilege pins the ClusterRole to exactly what discovery and
// events need.
func TestRBACLeastPrivilege(t *testing.T) {
	all := loadAll(t)
	role := find[rbacv1.ClusterRole](all, "smr-cri")
	if role == nil {
		t.Fatal("no ClusterRole smr-cri")
	}
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"apps"}, Resources: []string{"statefulsets"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
	if fmt.Sprint(role.Rules) != fmt.Sprint(want) {
		t.Errorf("ClusterRole rules %+v, want exactly %+v", role.Rules, want)
	}
	b := find[rbacv1.ClusterRoleBinding](all, "smr-cri")
	if b == nil || b.RoleRef.Name != "smr-cri" || len(b.Subjects) != 1 ||
		b.Subjects[0].Name != "smr-cri" || b.Subjects[0].Namespace != "smr-system" {
		t.Errorf("ClusterRoleBinding: %+v", b)
	}
	if sa := find[corev1.ServiceAccount](all, "smr-cri"); sa == nil || sa.Namespace != "smr-system" {
		t.Error("no ServiceAccount smr-system/smr-cri")
	}
	for _, ds := range []string{"smr-cri", "smr-cri-uninstall"} {
		if d := find[appsv1.DaemonSet](all, ds); d == nil || d.Spec.Template.Spec.ServiceAccountName != "smr-cri" {
			t.Errorf("DaemonSet %s does not run as ServiceAccount smr-cri", ds)
		}
	}
}

// TestReadinessRBAC pins the one write permission on pods: a patch of
// pods/status (the smr.io/replica-serving condition), in a role of its own.
func TestReadinessRBAC(t *testing.T) {
	all := loadAll(t)
	role := find[rbacv1.ClusterRole](all, "smr-cri-readiness")
	if role == nil {
		t.Fatal("no ClusterRole smr-cri-readiness")
	}
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"patch"}}}
	if fmt.Sprint(role.Rules) != fmt.Sprint(want) {
		t.Errorf("ClusterRole smr-cri-readiness rules %+v, want exactly %+v", role.Rules, want)
	}
	b := find[rbacv1.ClusterRoleBinding](all, "smr-cri-readiness")
	if b == nil || b.RoleRef.Name != "smr-cri-readiness" || len(b.Subjects) != 1 ||
		b.Subjects[0].Name != "smr-cri" || b.Subjects[0].Namespace != "smr-system" {
		t.Errorf("ClusterRoleBinding smr-cri-readiness: %+v", b)
	}
}

func mountOf(c corev1.Container, volume string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].Name == volume {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func hostPathOf(spec corev1.PodSpec, volume string) string {
	for _, v := range spec.Volumes {
		if v.Name == volume && v.HostPath != nil {
			return v.HostPath.Path
		}
	}
	return ""
}

// flagValue returns the value following flag in args.
func flagValue(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// TestDaemonSetMatchesInstall checks the DaemonSet against the paths
// install and trace use.
func TestDaemonSetMatchesInstall(t *testing.T) {
	all := loadAll(t)
	for _, c := range []struct{ ds, sub string }{{"smr-cri", "install"}, {"smr-cri-uninstall", "uninstall"}} {
		ds := find[appsv1.DaemonSet](all, c.ds)
		if ds == nil {
			t.Fatalf("no DaemonSet %s", c.ds)
		}
		spec := ds.Spec.Template.Spec
		if ds.Namespace != "smr-system" || !spec.HostPID || !spec.HostNetwork {
			t.Errorf("%s: namespace %q hostPID %v hostNetwork %v; want smr-system, true, true", c.ds, ds.Namespace, spec.HostPID, spec.HostNetwork)
		}
		if len(spec.InitContainers) != 1 {
			t.Fatalf("%s: %d init containers, want 1", c.ds, len(spec.InitContainers))
		}
		ic := spec.InitContainers[0]
		root := flagValue(ic.Args, "--host-root")
		if len(ic.Args) == 0 || ic.Args[0] != c.sub || root == "" {
			t.Errorf("%s: init container args %q, want %s --host-root DIR", c.ds, ic.Args, c.sub)
		}
		if m := mountOf(ic, "host"); m == nil || m.MountPath != root || hostPathOf(spec, "host") != "/" {
			t.Errorf("%s: the node's / is not mounted at --host-root %q", c.ds, root)
		}
		if ic.SecurityContext == nil || ic.SecurityContext.Privileged == nil || !*ic.SecurityContext.Privileged {
			t.Errorf("%s: init container is not privileged", c.ds)
		}
		for _, ctr := range append(spec.InitContainers, spec.Containers...) {
			if ctr.Image != "localhost/smr-cri:dev" || len(ctr.Command) != 1 || ctr.Command[0] != "/usr/local/bin/smr-cri" {
				t.Errorf("%s/%s: image %q command %q; want localhost/smr-cri:dev (hack/kind-up.sh, hack/kind-image)", c.ds, ctr.Name, ctr.Image, ctr.Command)
			}
			if ctr.SecurityContext == nil || (ctr.Name != ic.Name && (ctr.SecurityContext.Privileged != nil || ctr.SecurityContext.Capabilities == nil)) {
				t.Errorf("%s/%s: main containers must drop all capabilities and not be privileged", c.ds, ctr.Name)
			}
		}
	}

	ds := find[appsv1.DaemonSet](all, "smr-cri")
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("smr-cri: %d containers, want 1 (trace)", len(spec.Containers))
	}
	tc := spec.Containers[0]
	if len(tc.Args) < 2 || tc.Args[0] != "trace" || !slices.Contains(tc.Args, "--follow") {
		t.Fatalf("trace container args %q", tc.Args)
	}
	file, sock := flagValue(tc.Args, "--file"), flagValue(tc.Args, "--socket")
	if file != install.LogFile || sock != install.SocketPath {
		t.Errorf("trace --file %q --socket %q; install writes %q and %q", file, sock, install.LogFile, install.SocketPath)
	}
	// Each path the trace container reads must be inside a mount of the same host directory.
	for vol, p := range map[string]string{"logs": file, "run": sock} {
		m := mountOf(tc, vol)
		if m == nil || filepath.Dir(p) != m.MountPath || hostPathOf(spec, vol) != m.MountPath || !m.ReadOnly {
			t.Errorf("trace container: %s is not under a read-only mount of the same host directory (volume %s)", p, vol)
		}
	}
	// The credentials for the node daemon: written at the same path as on the
	// node (the kubeconfig names them by absolute path), where uninstall removes them.
	cred := flagValue(tc.Args, "--export-credentials")
	if m := mountOf(tc, "credentials"); cred != install.CredentialsDir || m == nil || m.MountPath != cred || m.ReadOnly ||
		hostPathOf(spec, "credentials") != cred {
		t.Errorf("trace --export-credentials %q is not a writable mount of the same host directory %s", cred, install.CredentialsDir)
	}
	addr := flagValue(tc.Args, "--health-addr")
	if len(tc.Ports) != 1 || addr != fmt.Sprintf(":%d", tc.Ports[0].ContainerPort) {
		t.Errorf("trace --health-addr %q does not match the container port %+v", addr, tc.Ports)
	}
	if p := tc.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != tc.Ports[0].Name {
		t.Errorf("trace readiness probe %+v, want /healthz on the health port", p)
	}
}

// TestRedisExampleContract runs the example's pod template through the pod
// contract parser for each replica and checks the Services and the
// NetworkPolicy select those pods and ports.
func TestRedisExampleContract(t *testing.T) {
	all := loadAll(t)
	sts := find[appsv1.StatefulSet](all, "redis")
	if sts == nil {
		t.Fatal("no StatefulSet redis")
	}
	tmpl := sts.Spec.Template
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 || tmpl.Labels[podcontract.LabelReplicate] != "true" {
		t.Fatalf("want 3 replicas labelled %s=true", podcontract.LabelReplicate)
	}
	var raftPort int32
	for _, p := range tmpl.Spec.Containers[0].Ports {
		if p.Name == "raft" {
			raftPort = p.ContainerPort
		}
	}
	for i := range 3 {
		labels := map[string]string{podcontract.LabelPodIndex: fmt.Sprint(i)}
		for k, v := range tmpl.Labels {
			labels[k] = v
		}
		spec, ok, err := replication.ParsePod(podcontract.Meta{
			Name: fmt.Sprintf("%s-%d", sts.Name, i), Namespace: sts.Namespace, Labels: labels, Annotations: tmpl.Annotations,
		})
		if err != nil || !ok {
			t.Fatalf("replica %d: contract: ok=%v err=%v", i, ok, err)
		}
		if spec.Group != "redis" || spec.MemberID != uint64(i+1) || spec.GroupKey() != "default.redis" ||
			len(spec.Ports) != 1 || spec.Ports[0] != (replication.Port{Number: 6379, Protocol: "resp"}) ||
			spec.Membership != podcontract.MembershipKubernetes || spec.RaftPort != int(raftPort) {
			t.Errorf("replica %d: spec %+v (raft container port %d)", i, spec, raftPort)
		}
	}

	selects := func(sel map[string]string) bool {
		for k, v := range sel {
			if tmpl.Labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	svc, peers := find[corev1.Service](all, "redis"), find[corev1.Service](all, sts.Spec.ServiceName)
	if svc == nil || !selects(svc.Spec.Selector) || svc.Spec.Ports[0].Port != 6379 {
		t.Errorf("Service redis does not select the replicas on 6379")
	}
	if peers == nil || peers.Spec.ClusterIP != "None" || !selects(peers.Spec.Selector) {
		t.Errorf("governing Service %q is missing or not headless", sts.Spec.ServiceName)
	}
	np := find[networkingv1.NetworkPolicy](all, "redis-raft")
	if np == nil || !selects(np.Spec.PodSelector.MatchLabels) {
		t.Fatal("NetworkPolicy redis-raft does not select the replicas")
	}
	raftOpen := false
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port.IntValue() != int(raftPort) {
				continue
			}
			// The raft port may only be reached from the group's own pods.
			if len(rule.From) == 0 {
				t.Errorf("raft port %d is open to every source", raftPort)
			}
			for _, from := range rule.From {
				if from.PodSelector == nil || !selects(from.PodSelector.MatchLabels) || from.NamespaceSelector != nil || from.IPBlock != nil {
					t.Errorf("raft port %d is reachable from %+v, not only the group's pods", raftPort, from)
				}
			}
			raftOpen = true
		}
	}
	if !raftOpen {
		t.Errorf("NetworkPolicy does not let the group's pods reach the raft port %d", raftPort)
	}
}

// TestDocumentedCommands: every manifest path the README uses exists.
func TestDocumentedCommands(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile("(?:-k|-f|--config) ((?:manifests|examples|hack)/[^\\s)`]*)").FindAllSubmatch(doc, -1) {
		if _, err := os.Stat(filepath.Join(repo, string(m[1]))); err != nil {
			t.Errorf("README.md uses %s: %v", m[1], err)
		}
	}
	if !bytes.Contains(doc, []byte("hack/kind-up.sh")) {
		t.Error("README.md does not mention hack/kind-up.sh")
	}
}

// TestGroupRecordsRBAC pins the group records' Role: ConfigMaps in
// smr-system only, get/create/update, bound to smr-cri's ServiceAccount.
func TestGroupRecordsRBAC(t *testing.T) {
	all := loadAll(t)
	role := find[rbacv1.Role](all, "smr-cri-group-records")
	if role == nil || role.Namespace != "smr-system" {
		t.Fatalf("no Role smr-system/smr-cri-group-records: %+v", role)
	}
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "create", "update"}}}
	if fmt.Sprint(role.Rules) != fmt.Sprint(want) {
		t.Errorf("Role rules %+v, want exactly %+v", role.Rules, want)
	}
	b := find[rbacv1.RoleBinding](all, "smr-cri-group-records")
	if b == nil || b.Namespace != "smr-system" || b.RoleRef.Kind != "Role" || b.RoleRef.Name != role.Name || len(b.Subjects) != 1 ||
		b.Subjects[0].Name != "smr-cri" || b.Subjects[0].Namespace != "smr-system" {
		t.Errorf("RoleBinding: %+v", b)
	}
}
