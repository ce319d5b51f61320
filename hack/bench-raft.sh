#!/usr/bin/env bash
# bench-raft: raftcore (3 raftnode processes on loopback, real disk WAL)
# vs a 3-member etcd cluster (Debian etcd-server, go.etcd.io/etcd/client/v3),
# 128-byte payload, 1/16/64 concurrent proposers, side by side in one run.
# The last line is the summary:
#   raft: commits/s at 64 proposers smr=X etcd=Y ratio=R; p50 commit latency at 1 proposer smr=A ms etcd=B ms
# Env: BENCH_DURATION (default 5s per level), ETCD (default /usr/bin/etcd).
set -euo pipefail
cd "$(dirname "$0")/.."
ETCD="${ETCD:-/usr/bin/etcd}"
if [[ ! -x "$ETCD" ]]; then
	echo "bench-raft: $ETCD not found; install etcd-server (hack/install-deps.sh)" >&2
	exit 1
fi
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/raftnode" ./hack/raftnode
go build -o "$bin/benchraft" ./hack/benchraft
"$bin/benchraft" -raftnode "$bin/raftnode" -etcd "$ETCD" -duration "${BENCH_DURATION:-5s}" -proposers 1,16,64 -payload 128
