package kubesecret

import (
	"context"
	"errors"
	"testing"

	"github.com/smr-io/smr-cri/internal/pki"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// Two nodes start on an empty cluster: the first creates the Secret, the
// second reads the same CA.
func TestEnsureCASecretThroughClientGo(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	first, created, err := pki.EnsureCASecret(ctx, Store{cs}, pki.SecretNamespace, pki.SecretName)
	if err != nil || !created {
		t.Fatalf("first node: created=%v err=%v", created, err)
	}
	second, created, err := pki.EnsureCASecret(ctx, Store{cs}, pki.SecretNamespace, pki.SecretName)
	if err != nil || created || !second.Cert.Equal(first.Cert) {
		t.Fatalf("second node: created=%v err=%v", created, err)
	}
}

func TestCreateAlreadyExistsAndErrors(t *testing.T) {
	ctx := context.Background()
	existing := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: pki.SecretName, Namespace: pki.SecretNamespace}}
	s := Store{fake.NewClientset(existing)}
	exists, err := s.CreateSecret(ctx, pki.SecretNamespace, pki.SecretName, nil)
	if err != nil || !exists {
		t.Fatalf("create over an existing secret: exists=%v err=%v", exists, err)
	}
	// A forbidden get (RBAC missing) is an error, not "not found".
	cs := fake.NewClientset()
	cs.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("forbidden")
	})
	if _, _, err := (Store{cs}).GetSecret(ctx, pki.SecretNamespace, pki.SecretName); err == nil {
		t.Fatal("get error swallowed")
	}
}
