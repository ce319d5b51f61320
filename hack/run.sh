#!/usr/bin/env bash
# The main job (`make run`): on a fresh machine as root, install what is missing, build the
# Kubernetes binaries once (cached in _cache/), bring up the local cluster (a control plane and
# three worker nodes, each a network namespace running containerd, smr-cri and kubelet), apply
# the project's manifests and the replicated Redis example, and show it working. The cluster
# stays up afterwards so you can talk to it; `make cluster-down` removes all of it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:$PATH"
cd "$ROOT"
if [[ $(id -u) -ne 0 ]]; then
	echo "hack/run.sh: must run as root (network namespaces, containerd, kubelet). Run: sudo make run" >&2
	exit 1
fi
hack/install-deps.sh
go build -o bin/smr-cri ./cmd/smr-cri
go build -o bin/kubectl-smr ./cmd/kubectl-smr
go run ./hack/cluster demo "$@"

cat <<MSG

The cluster is still running. Talk to the replicated Redis:
  export KUBECONFIG=$ROOT/_out/cluster/admin.kubeconfig
  $ROOT/_cache/kube-v1.37.2/kubectl get pods -o wide
  $ROOT/_cache/kube-v1.37.2/kubectl exec -it redis-0 -- redis-cli -h redis    # through the Service
  $ROOT/_cache/kube-v1.37.2/kubectl logs -n smr-system ds/smr-cri -f        # ordering traces (one node)
  PATH=$ROOT/bin:\$PATH $ROOT/_cache/kube-v1.37.2/kubectl smr status -A --watch   # every member, live
  tail -f $ROOT/_out/cluster/logs/smr-node1-smr-cri.log                      # the same, from the file
Take it down with: make cluster-down
MSG

# The operator's view last: every replicated member of the cluster, through the API server
# (kubectl finds the plugin bin/kubectl-smr on PATH). Retried while the killed pod's member
# catches up.
KUBE_BIN="${SMR_CACHE:-$ROOT/_cache}/kube-v1.37.2"
echo
echo "==> kubectl smr status -A   (the kubectl plugin bin/kubectl-smr; README \"The operator's view\")"
for _ in $(seq 1 30); do
	if out=$(PATH="$ROOT/bin:$KUBE_BIN:$PATH" KUBECONFIG="$ROOT/_out/cluster/admin.kubeconfig" \
		kubectl smr status -A --color never 2>&1) && ! grep -q '<-' <<<"$out"; then
		break
	fi
	sleep 2
done
echo "$out"
