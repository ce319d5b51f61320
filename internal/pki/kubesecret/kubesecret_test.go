package kubesecret

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/test/lab/kubecoretest"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Two nodes start on an empty cluster: the first creates the Secret, the
// second reads the same CA (over HTTP, through the real core/v1 client).
func TestEnsureCASecretThroughAPI(t *testing.T) {
	ctx := context.Background()
	srv := kubecoretest.New(t)
	first, created, err := pki.EnsureCASecret(ctx, Store{srv.Client(t)}, pki.SecretNamespace, pki.SecretName)
	if err != nil || !created {
		t.Fatalf("first node: created=%v err=%v", created, err)
	}
	second, created, err := pki.EnsureCASecret(ctx, Store{srv.Client(t)}, pki.SecretNamespace, pki.SecretName)
	if err != nil || created || !second.Cert.Equal(first.Cert) {
		t.Fatalf("second node: created=%v err=%v", created, err)
	}
	obj, err := srv.Tracker.Get(corev1.SchemeGroupVersion.WithResource("secrets"), pki.SecretNamespace, pki.SecretName)
	if err != nil {
		t.Fatal(err)
	}
	if l := obj.(*corev1.Secret).Labels["app.kubernetes.io/name"]; l != "smr-cri" {
		t.Fatalf("secret label app.kubernetes.io/name=%q, want smr-cri", l)
	}
}

func TestCreateAlreadyExistsAndErrors(t *testing.T) {
	ctx := context.Background()
	existing := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: pki.SecretName, Namespace: pki.SecretNamespace}}
	srv := kubecoretest.New(t, existing)
	s := Store{srv.Client(t)}
	exists, err := s.CreateSecret(ctx, pki.SecretNamespace, pki.SecretName, nil)
	if err != nil || !exists {
		t.Fatalf("create over an existing secret: exists=%v err=%v", exists, err)
	}
	// A forbidden get or create (RBAC missing) is an error, not "not found"
	// or "exists".
	srv.FailWith(func(*http.Request) error {
		return apierrors.NewForbidden(corev1.Resource("secrets"), pki.SecretName, nil)
	})
	if _, found, err := s.GetSecret(ctx, pki.SecretNamespace, pki.SecretName); err == nil || found || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("forbidden get: found=%v err=%v", found, err)
	}
	if exists, err := s.CreateSecret(ctx, pki.SecretNamespace, "other", nil); err == nil || exists {
		t.Fatalf("forbidden create: exists=%v err=%v", exists, err)
	}
}
