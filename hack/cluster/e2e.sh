#!/usr/bin/env bash
# The end-to-end tests on the local multi-node cluster (what `make e2e` runs), as root, also on a
# fresh machine: installs what is missing (hack/install-deps.sh), builds the Kubernetes binaries
# if missing (hack/cluster/build-kube.sh), brings the cluster up once, runs ./e2e/, takes the
# cluster down and checks nothing is left. The last line is the summary: `e2e: scenarios=N linearizable=N lost_writes=0 diverged=0`. Extra arguments go to
# `go test` (e.g. -run TestPartitionHeal).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PATH="/usr/local/go/bin:$PATH"
cd "$ROOT"
if [[ $(id -u) -ne 0 ]]; then
	echo "hack/cluster/e2e.sh: must run as root (network namespaces, containerd, kubelet)" >&2
	exit 1
fi
mkdir -p _out
# apt packages and kubelet (idempotent; seconds when everything is there), then the control plane.
hack/install-deps.sh || exit 1
hack/cluster/build-kube.sh || exit 1
SMR_INTEGRATION=1 go test -count=1 -v -timeout 60m ./e2e/ "$@" 2>&1 | tee _out/e2e.log
rc=${PIPESTATUS[0]}
line=$(grep -E '^e2e: scenarios=' _out/e2e.log | tail -1)
[[ $rc -eq 0 ]] || echo "e2e: FAILED (go test exit $rc; log _out/e2e.log)"
echo "${line:-e2e: scenarios=0 linearizable=0 lost_writes=0 diverged=0 (no summary: see _out/e2e.log)}"
exit "$rc"
