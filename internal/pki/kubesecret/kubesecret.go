// Package kubesecret adapts client-go to pki.SecretStore, so that the node
// daemon keeps the cluster CA in the Secret smr-system/smr-cri-ca (see
// pki.EnsureCA). It needs get and create on that Secret (manifests/rbac.yaml).
package kubesecret

import (
	"context"
	"fmt"

	"github.com/smr-io/smr-cri/internal/pki"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Store is a pki.SecretStore over the Kubernetes API.
type Store struct {
	Client kubernetes.Interface
}

var _ pki.SecretStore = Store{}

// GetSecret implements pki.SecretStore.
func (s Store) GetSecret(ctx context.Context, namespace, name string) (map[string][]byte, bool, error) {
	sec, err := s.Client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("kubesecret: get %s/%s: %w", namespace, name, err)
	}
	return sec.Data, true, nil
}

// CreateSecret implements pki.SecretStore.
func (s Store) CreateSecret(ctx context.Context, namespace, name string, data map[string][]byte) (bool, error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "smr-cri", "app.kubernetes.io/component": "cluster-ca"}},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
	_, err := s.Client.CoreV1().Secrets(namespace).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("kubesecret: create %s/%s: %w", namespace, name, err)
	}
	return false, nil
}
