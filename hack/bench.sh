#!/usr/bin/env bash
# `make bench` (needs root): redis-benchmark (Debian redis-tools, 50 clients, SET and GET, -r 1000) in one run
# against one plain Redis pod and against a 3-replica smr group of Redis pods, all on a private containerd
# through a real `smr-cri serve` (internal/daemon BenchmarkRedisPodsReplicatedVsPlain): the group's traffic
# enters at a pod IP and goes through the pod netns' iptables redirect into smr-cri, raft (mutual TLS, disk
# WAL) and every replica's app. Then 1 client against both for the median latency, and 50 pipelining clients
# (-P 16) against both. In the same run, the proxy ceiling: a second plain Redis pod, direct vs through a
# forwarding proxy with no ordering (test/lab/fwdproxy: smr-cri's in-pod listener behind the same iptables
# redirect, its framing and buffers, no raft, no executor), so the proxy's own share is visible.
#
# First, unless SMR_BENCH_CORE=0, the cheaper in-process comparison (replication
# BenchmarkRedisReplicatedVsPlain: redis-server processes behind the executor and a raftcore group in one
# process, no pods, CRI or iptables), which isolates the executor+raft cost; its lines are labelled bench-core.
#
# Output ends with (the pod benchmark's medians of 3 rounds):
#   bench-core: set ratio=.. get ratio=.. p50 added latency at 1 client=.. ms
#   bench-core-pipelined: set ratio=.. get ratio=..
#   bench: set ratio=R1 get ratio=R2 p50 added latency at 1 client=L ms
#   bench-pipelined: set ratio=R3 get ratio=R4
#   bench-proxy-ceiling: set ratio=R5 get ratio=R6
# Knobs: SMR_BENCH_SCALE (request counts of both benchmarks, default 1), SMR_BENCH_VIA=leader|follower (which replica pod the
# smr clients connect to, default leader), SMR_BENCH_ROUNDS (default 3), SMR_BENCH_SERVE_ARGS (extra `smr-cri serve` flags for an A/B run,
# e.g. --insecure-raft), SMR_BENCH_CORE=0 (skip the bench-core lines), SMR_BENCH_PROFILE=FILE (after the
# measured rounds, a CPU profile of serve while redis-benchmark loads the group, written to FILE; serve gets
# --pprof-addr on a loopback port), SMR_BENCH_PROFILE_ROUND=set|get|pipelined-set|pipelined-get (default set),
# SMR_BENCH_PROFILE_SECONDS (default 10). `make bench-profile` does that with one round and prints the top.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:$PATH"
cd "$ROOT"
command -v redis-benchmark >/dev/null || hack/install-deps.sh
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT

# go test runs in the package directory: the profile's path must be absolute.
if [[ -n "${SMR_BENCH_PROFILE:-}" ]]; then
	SMR_BENCH_PROFILE="$(realpath -m "$SMR_BENCH_PROFILE")"
	export SMR_BENCH_PROFILE
fi

# run LABEL PKG BENCH: run one benchmark (its full output on stderr) and print its `profile:`, `bench:` and
# `bench-*:` lines with `bench` replaced by LABEL; fail if it printed no `bench:` line.
run() {
	local label=$1 pkg=$2 bench=$3 out="$log/$1.out"
	if ! SMR_INTEGRATION=1 go test -count=1 -run '^$' -bench "^${bench}\$" -benchtime 1x -timeout 30m "$pkg" 2>&1 | tee "$out" >&2; then
		echo "bench.sh: $bench failed (output above)" >&2
		return 1
	fi
	grep -q '^bench: ' "$out" || { echo "bench.sh: $bench printed no bench: line" >&2; return 1; }
	grep -E '^(bench(-[a-z-]+)?|profile): ' "$out" | sed -E "s/^bench/$label/"
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
