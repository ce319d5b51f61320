package manifests

import (
	_ "k8s.io/api/apps/v1"
	_ "k8s.io/api/core/v1"
	_ "k8s.io/api/networking/v1"
	_ "k8s.io/api/rbac/v1"
	_ "k8s.io/apimachinery/pkg/apis/meta/v1"
	_ "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	_ "k8s.io/cri-api/pkg/apis/runtime/v1"
)
