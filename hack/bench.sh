#!/usr/bin/env bash
# `make bench` (needs root): redis-benchmark (Debian redis-tools, 50 clients, SET and GET, -r 1000) in one run
# against one plain Redis pod and against a 3-replica smr group of Redis pods, all on a private containerd
# through a real `smr-cri serve` (internal/daemon BenchmarkRedisPodsReplicatedVsPlain): the group's traffic
# enters at a pod IP and goes through the pod netns' iptables redirect into smr-cri, raft (mutual TLS, disk
# WAL) and every replica's app. Then 1 client against both for the median latency.
#
# First, unless SMR_BENCH_CORE=0, the cheaper in-process comparison (replication
# BenchmarkRedisReplicatedVsPlain: redis-server processes behind the executor and a raftcore group in one
# process, no pods, CRI or iptables), which isolates the executor+raft cost; its line is labelled bench-core.
#
# Output ends with (the pod benchmark's median of 3 rounds):
#   bench-core: set ratio=.. get ratio=.. p50 added latency at 1 client=.. ms
#   bench: set ratio=R1 get ratio=R2 p50 added latency at 1 client=L ms
# Knobs: SMR_BENCH_SCALE (request counts, default 1), SMR_BENCH_VIA=leader|follower (which replica pod the
# smr clients connect to, default leader), SMR_BENCH_ROUNDS (default 3), SMR_BENCH_SERVE_ARGS (extra `smr-cri serve` flags for an A/B run,
# e.g. --insecure-raft), SMR_BENCH_CORE=0 (skip the bench-core line).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:$PATH"
cd "$ROOT"
command -v redis-benchmark >/dev/null || hack/install-deps.sh
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT

# run LABEL PKG BENCH: run one benchmark (its full output on stderr) and print its last `bench:` line
# relabelled LABEL; fail if it printed none.
run() {
	local label=$1 pkg=$2 bench=$3 out="$log/$1.out"
	if ! SMR_INTEGRATION=1 go test -count=1 -run '^$' -bench "^${bench}\$" -benchtime 1x -timeout 15m "$pkg" 2>&1 | tee "$out" >&2; then
		echo "bench.sh: $bench failed (output above)" >&2
		return 1
	fi
	local line
	line="$(grep '^bench: ' "$out" | tail -1)" || { echo "bench.sh: $bench printed no bench: line" >&2; return 1; }
	echo "$label:${line#bench:}"
}

# A failed bench-core run is reported but does not stop the pod benchmark (the line `make bench` is for);
# the script still exits non-zero.
core="" rc=0
if [[ "${SMR_BENCH_CORE:-1}" != 0 ]]; then
	core="$(run bench-core ./replication/ BenchmarkRedisReplicatedVsPlain)" || { core="bench-core: FAILED (output above)"; rc=1; }
fi
pods="$(run bench ./internal/daemon/ BenchmarkRedisPodsReplicatedVsPlain)"
[[ -z "$core" ]] || echo "$core"
echo "$pods"
exit "$rc"
