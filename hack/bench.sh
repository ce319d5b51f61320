#!/usr/bin/env bash
# `make bench`: redis-benchmark (Debian redis-tools, 50 clients) against one plain redis-server and
# against a 3-replica smr group (three redis-servers, each behind its own replica of the executor,
# ordered by a 3-member raftcore group with WAL fsync) in the same run. Last line:
#   bench: set ratio=R1 get ratio=R2 p50 added latency at 1 client=L ms
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:$PATH"
cd "$ROOT"
command -v redis-benchmark >/dev/null || hack/install-deps.sh
SMR_INTEGRATION=1 go test -count=1 -run '^$' -bench 'RedisReplicatedVsPlain' -benchtime 1x ./replication/ | tee /dev/stderr | grep '^bench:' | tail -1
