#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run), on a fresh machine as root:
#   hack/install-deps.sh                      apt packages + crictl/critest/kubelet into _cache/
#   go build ./... && go vet ./...
#   SMR_INTEGRATION=1 go test -count=1 -timeout 40m ./...   unit + integration tests (real parts)
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
say "go build ./..."
go build ./...
say "go vet ./..."
go vet ./...
sweep
say "go test (SMR_INTEGRATION=1) ./..."
rc=0
SMR_INTEGRATION=1 go test -count=1 -timeout 40m ./... || rc=$?
sweep
if [[ $rc -ne 0 ]]; then
	say "go test FAILED (exit $rc)"
	exit $rc
fi
say "critest"
hack/critest.sh
say "all tests passed"
