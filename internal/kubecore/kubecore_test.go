package kubecore_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/smr-io/smr-cri/internal/kubecore"
	"github.com/smr-io/smr-cri/test/lab/kubecoretest"
)

func pod(ns, name string, lbl map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbl}}
}

func TestListPods(t *testing.T) {
	repl := map[string]string{"smr.io/replicate": "true"}
	srv := kubecoretest.New(t, pod("default", "a", repl), pod("default", "b", nil), pod("other", "c", repl))
	c := srv.Client(t)
	tests := []struct {
		name, ns, selector string
		want               []string
	}{
		{"selector in one namespace", "default", "smr.io/replicate=true", []string{"a"}},
		{"whole namespace", "default", "", []string{"a", "b"}},
		{"other namespace", "other", "smr.io/replicate=true", []string{"c"}},
		{"nothing matches", "default", "smr.io/replicate=false", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			list, err := c.ListPods(context.Background(), tc.ns, tc.selector)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range list.Items {
				got = append(got, p.Name)
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("pods %v, want %v", got, tc.want)
			}
		})
	}
}

// Get and create round-trip a Secret's data; the API server's statuses
// survive the client's error wrapping (callers test them with apierrors).
func TestSecrets(t *testing.T) {
	ctx := context.Background()
	srv := kubecoretest.New(t)
	c := srv.Client(t)
	if _, err := c.GetSecret(ctx, "smr-system", "ca"); !apierrors.IsNotFound(err) {
		t.Fatalf("get before create: %v, want NotFound", err)
	}
	in := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "smr-system", Name: "ca"}, Data: map[string][]byte{"ca.crt": []byte("pem")}}
	if _, err := c.CreateSecret(ctx, in); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetSecret(ctx, "smr-system", "ca")
	if err != nil || string(got.Data["ca.crt"]) != "pem" {
		t.Fatalf("get after create: %v %v", got, err)
	}
	if _, err := c.CreateSecret(ctx, in); !apierrors.IsAlreadyExists(err) {
		t.Fatalf("second create: %v, want AlreadyExists", err)
	}
	srv.FailWith(func(*http.Request) error {
		return apierrors.NewForbidden(corev1.Resource("secrets"), "ca", nil)
	})
	if _, err := c.GetSecret(ctx, "smr-system", "ca"); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "get secret smr-system/ca") {
		t.Fatalf("forbidden get: %v, want Forbidden naming the secret", err)
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	c := kubecoretest.New(t).Client(t)
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken")
	if err := os.WriteFile(broken, []byte("clusters: [unclosed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		do   func() error
		want string
	}{
		{"nil config", func() error { _, err := kubecore.NewForConfig(nil); return err }, "nil rest config"},
		{"empty kubeconfig path", func() error { _, err := kubecore.FromKubeconfig(""); return err }, "empty kubeconfig path"},
		{"missing kubeconfig", func() error { _, err := kubecore.FromKubeconfig(filepath.Join(dir, "nope")); return err }, "kubeconfig " + filepath.Join(dir, "nope")},
		{"broken kubeconfig", func() error { _, err := kubecore.FromKubeconfig(broken); return err }, "kubeconfig " + broken},
		{"secret without name", func() error { _, err := c.GetSecret(ctx, "ns", ""); return err }, "namespace and name must be set"},
		{"create nil secret", func() error { _, err := c.CreateSecret(ctx, nil); return err }, "namespace and name must be set"},
		{"bad label selector", func() error { _, err := c.ListPods(ctx, "default", "a in (("); return err }, "list pods"},
		{"pod without name", func() error { _, err := c.GetPod(ctx, "ns", ""); return err }, "namespace and name must be set"},
		{"pod not found", func() error { _, err := c.GetPod(ctx, "ns", "nope"); return err }, "get pod ns/nope"},
		{"pod status without namespace", func() error { _, err := c.PatchPodStatus(ctx, "", "p", []byte("{}")); return err }, "namespace and name must be set"},
		{"pod status of a missing pod", func() error { _, err := c.PatchPodStatus(ctx, "ns", "nope", []byte("{}")); return err }, "patch status of pod ns/nope"},
		{"pod status patch not JSON", func() error { _, err := c.PatchPodStatus(ctx, "ns", "nope", []byte("{")); return err }, "patch status of pod ns/nope"},
		{"statefulset without name", func() error { _, err := c.GetStatefulSet(ctx, "ns", ""); return err }, "namespace and name must be set"},
		{"missing statefulset", func() error { _, err := c.GetStatefulSet(ctx, "ns", "gone"); return err }, "get statefulset ns/gone"},
		{"configmap without name", func() error { _, err := c.GetConfigMap(ctx, "ns", ""); return err }, "namespace and name must be set"},
		{"create nil configmap", func() error { _, err := c.CreateConfigMap(ctx, nil); return err }, "namespace and name must be set"},
		{"update configmap without resourceVersion", func() error {
			_, err := c.UpdateConfigMap(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"}})
			return err
		}, "resourceVersion must be set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// The scheme knows core/v1 and apps/v1 and nothing else (the point of the
// package).
func TestSchemeOnlyCoreAndAppsV1(t *testing.T) {
	for gvk := range kubecore.Scheme().AllKnownTypes() {
		if gvk.Group != "" && gvk.Group != "apps" {
			t.Errorf("scheme registers %v, want core/v1 and apps/v1 only", gvk)
		}
	}
}
