#!/usr/bin/env bash
# test-security: smr-cri's security tests with real processes (see
# docs/security.md): unit tests of internal/pki and the transport's mutual
# TLS, then test/security (raftnode processes on loopback attacked by rogue
# processes and a replay of captured traffic; the CRI socket's mode). The
# last line summarizes what the tests observed (not a constant):
#   security: rogue-peer=rejected wrong-group=rejected replay=rejected socket-mode=0660 hostile-input=survived
# A value other than "rejected"/a mode, or "not-run", means a test failed or
# did not get that far; the exit status is then non-zero.
set -uo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! go build -o "$work/smr-cri" ./cmd/smr-cri; then
	echo "test-security: building smr-cri failed" >&2
	exit 1
fi
report="$work/report"
: >"$report"
status=0
SMR_SECURITY=1 SMR_CRI_BIN="$work/smr-cri" SMR_SECURITY_REPORT="$report" \
	go test -count=1 ./internal/pki/ ./raftcore/transport/ ./test/security/ || status=$?
# Hostile byte streams against a real serve with three Redis pods (real containerd,
# runc, CNI, iptables): longer than the minute `make test` gives it.
SMR_INTEGRATION=1 SMR_HOSTILE_DURATION="${SMR_HOSTILE_DURATION:-3m}" SMR_SECURITY_REPORT="$report" \
	go test -count=1 -timeout 30m -run '^TestIntegrationHostileInput$' ./internal/daemon/ || status=$?
value() {
	local v
	v="$(grep "^$1=" "$report" | tail -n1 | cut -d= -f2-)"
	echo "${v:-not-run}"
}
line="security:"
for k in rogue-peer wrong-group replay socket-mode hostile-input; do
	line+=" $k=$(value "$k")"
done
echo "$line"
exit "$status"
