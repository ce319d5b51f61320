#!/usr/bin/env bash
# Creates the kind cluster of hack/kind-config.yaml (1 control plane, 3
# workers), builds the smr-cri image without Docker or a registry, loads it
# into the nodes and installs smr-cri with manifests/ (the DaemonSet's init
# container installs smr-cri on each node and restarts kubelet there).
#
#   hack/kind-up.sh                 # cluster "smr", image localhost/smr-cri:dev
#   CLUSTER=dev hack/kind-up.sh     # another cluster name
#   KIND_UP_SKIP_CREATE=1 ...       # reuse an existing cluster
#
# Needs: go, kind (>= v0.24), kubectl. Re-running it rebuilds and reloads the
# image and re-applies the manifests; nothing else changes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER=${CLUSTER:-smr}
IMAGE=${IMAGE:-localhost/smr-cri:dev}
OUT=${OUT:-_out/kind}
KUBECTL=(kubectl --context "kind-${CLUSTER}")

for tool in go kind kubectl; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "kind-up: $tool not found in PATH (install it first; see docs/install.md)" >&2
		exit 1
	fi
done

# The node image's architecture: kind's nodes run the machine's own.
ARCH=${ARCH:-$(go env GOARCH)}
VERSION=$(git describe --always --dirty 2>/dev/null || echo dev)

echo "kind-up: building smr-cri (linux/${ARCH}, static)" >&2
mkdir -p "$OUT"
CGO_ENABLED=0 GOOS=linux GOARCH="$ARCH" go build -trimpath \
	-ldflags "-s -w -X github.com/smr-io/smr-cri/internal/cli.version=${VERSION}" \
	-o "$OUT/smr-cri" ./cmd/smr-cri

echo "kind-up: writing image ${IMAGE} to ${OUT}/smr-cri-image.tar" >&2
go run ./hack/kind-image --binary "$OUT/smr-cri" --tag "$IMAGE" --arch "$ARCH" --out "$OUT/smr-cri-image.tar"

if [[ "${KIND_UP_SKIP_CREATE:-}" != 1 ]] && ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
	echo "kind-up: creating cluster ${CLUSTER}" >&2
	kind create cluster --name "$CLUSTER" --config hack/kind-config.yaml --wait 5m
fi

echo "kind-up: loading the image into every node" >&2
kind load image-archive --name "$CLUSTER" "$OUT/smr-cri-image.tar"

if [[ "$IMAGE" != localhost/smr-cri:dev ]]; then
	echo "kind-up: IMAGE=${IMAGE} differs from the manifests' localhost/smr-cri:dev; edit manifests/daemonset.yaml or use kustomize's images:" >&2
fi

echo "kind-up: installing smr-cri" >&2
"${KUBECTL[@]}" apply -k manifests/
# The init container restarts kubelet on each node in turn; this waits for all.
"${KUBECTL[@]}" -n smr-system rollout status ds/smr-cri --timeout 10m
echo "kind-up: done. Try: kubectl apply -k examples/redis/ && kubectl -n smr-system logs -f ds/smr-cri" >&2
