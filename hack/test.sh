#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run), on a fresh machine as root:
#   hack/install-deps.sh                      apt packages + crictl/critest/kubelet into _cache/
#   go build ./... && go vet ./...
#   SMR_INTEGRATION=1 go test -p 1 -count=1 -timeout 60m ./...   unit + integration tests (real parts)
#   hack/critest.sh                           CRI validation suite, direct vs through smr-cri
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:$PATH"
START=$SECONDS
say() { printf '[test %4ds] %s\n' "$((SECONDS - START))" "$*"; }

if [[ $(id -u) -ne 0 ]]; then
	echo "hack/test.sh: must run as root: the integration tests start containerd, runc, CNI and" >&2
	echo "kubelet, and hack/install-deps.sh installs apt packages. Run: sudo hack/test.sh" >&2
	exit 1
fi
cd "$ROOT"

# Anything a killed earlier run left behind (labs whose owner is gone) is cleaned up first.
sweep() { go run ./hack/lab sweep || true; }

say "install dependencies"
hack/install-deps.sh
# The control-plane binaries for e2e/ (minutes when cold): built here, outside go test's timeout.
say "Kubernetes binaries for the local cluster"
hack/cluster/build-kube.sh
say "go build ./..."
go build ./...
say "go vet ./..."
go vet ./...
sweep
say "go test (SMR_INTEGRATION=1) ./..."
gotest=0
# -p 1: one test binary at a time. The integration packages each start real daemons (containerd,
# kubelet, raft groups, a whole cluster in e2e/); run side by side on 2 cores they starve each
# other's raft election timers. Compilation already happened in go vet above.
SMR_INTEGRATION=1 go test -p 1 -count=1 -timeout 60m ./... || gotest=$?
sweep
[[ $gotest -eq 0 ]] || say "go test FAILED (exit $gotest); running critest anyway"
# critest runs either way, so one CI run reports both; its summary line comes last.
say "critest"
critest=0
hack/critest.sh || critest=$?
if [[ $gotest -ne 0 || $critest -ne 0 ]]; then
	say "FAILED: go test exit $gotest, critest exit $critest"
	exit 1
fi
say "all tests passed"
