// Package kubesecret adapts the core/v1 API client (internal/kubecore) to pki.SecretStore, so that the node
// daemon keeps the cluster CA in the Secret smr-system/smr-cri-ca (see
// pki.EnsureCA). It needs get and create on that Secret (manifests/rbac.yaml).
package kubesecret

import (
	"context"
	"fmt"

	"github.com/smr-io/smr-cri/internal/kubecore"
	"github.com/smr-io/smr-cri/internal/pki"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Store is a pki.SecretStore over the Kubernetes API.
type Store struct {
	Client *kubecore.Client
}

var _ pki.SecretStore = Store{}

// GetSecret implements pki.SecretStore.
func (s Store) GetSecret(ctx context.Context, namespace, name string) (map[string][]byte, bool, error) {
	sec, err := s.Client.GetSecret(ctx, namespace, name)
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("kubesecret: %w", err)
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
	_, err := s.Client.CreateSecret(ctx, sec)
	if apierrors.IsAlreadyExists(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("kubesecret: %w", err)
	}
	return false, nil
}
