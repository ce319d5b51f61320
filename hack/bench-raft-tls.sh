#!/usr/bin/env bash
# bench-raft-tls: the cost of mutual TLS between ordering nodes. Two
# 3-process raftnode clusters on loopback (real disk WAL) run side by side,
# one plaintext (-insecure-raft), one with mTLS (cluster CA in a temp dir);
# measurements alternate between them (median of BENCH_ROUNDS rounds) at 1
# and 64 concurrent proposers, 128-byte payloads. The last line is:
#   raft-tls: commits/s at 64 proposers plaintext=X mtls=Y tls-cost=Z%; serverCPU/commit at 64 ...; p50 at 1 proposer ...
# Target: tls-cost <= 10%. Env: BENCH_DURATION (default 5s), BENCH_ROUNDS (5).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/raftnode" ./hack/raftnode
go build -o "$bin/benchraft" ./hack/benchraft
"$bin/benchraft" -raftnode "$bin/raftnode" -tls-compare -duration "${BENCH_DURATION:-5s}" \
	-rounds "${BENCH_ROUNDS:-5}" -proposers 1,64 -payload 128 2> >(grep -v INSECURE >&2)
