#!/usr/bin/env bash
# Runs the CRI validation suite (critest, cri-tools v1.37.0) twice on the same spec selection:
# directly against a private containerd, then through `smr-cri serve` in front of that same
# containerd. Ends with exactly one summary line
#   critest: direct P passed F failed; via smr-cri P passed F failed
# and exits non-zero if the two passed sets differ (the difference is printed above it).
# Needs root. Everything it starts is stopped on every exit path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SMR_CACHE:-$ROOT/_cache}"
export PATH="/usr/local/go/bin:$PATH"
START=$SECONDS
say() { printf '[critest %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it starts containerd, runc and CNI)"

# Groups: PodSandbox, Container (basic, volume, log, mounts, OOM), Streaming (exec, attach,
# port-forward), Networking, Multiple Containers, Runtime info, Idempotence, Security Context,
# and AppArmor/NRI (these skip themselves here: the kernel has AppArmor off and containerd 1.6 has
# no NRI socket; the report lists every spec skipped at run time with its reason).
# Left out: Image Manager, Image Consistency, Image Identifier and Image Volume pull from a
# registry by design.
FOCUS="${CRITEST_FOCUS:-\[k8s\.io\] (PodSandbox|Container|Streaming|Networking|Multiple Containers|Runtime info|Idempotence|Security Context|AppArmor|NRI)}"
# Specs inside the focus that are skipped, and why (regexp::reason).
SKIP_REASONS=(
	"pull|Pull|public image::needs a container registry; nothing can be pulled on this machine"
	"NoNewPrivs::needs registry.k8s.io/e2e-test-images/nonewprivs:1.3 (a setuid test program), which needs a registry"
)
SKIP=""
for entry in "${SKIP_REASONS[@]}"; do
	SKIP="${SKIP:+$SKIP|}${entry%%::*}"
done
SKIP="${CRITEST_SKIP:-$SKIP}"

"$ROOT/hack/install-deps.sh" >&2
CRITEST="$CACHE/bin/critest"
[[ -x "$CRITEST" ]] || die "critest missing in $CACHE/bin (hack/install-deps.sh)"

WORK="$(mktemp -d /tmp/smr-critest.XXXXXX)"
# critest's HostIpc specs create shared memory segments on the host (ipcmk) and leave them.
shm_ids() { ipcs -m 2>/dev/null | awk '$2 ~ /^[0-9]+$/ {print $2}' | sort; }
shm_ids >"$WORK/shm-before"
SMR_PID=""
CRITEST_PID=""
TORN_DOWN=""
teardown() { # stop smr-cri and the lab; idempotent; non-zero if cleanup failed
	[[ -n "$TORN_DOWN" ]] && return 0
	TORN_DOWN=1
	local rc=0
	if [[ -n "$CRITEST_PID" ]] && kill -0 "$CRITEST_PID" 2>/dev/null; then
		kill -TERM "$CRITEST_PID"
		for _ in $(seq 100); do kill -0 "$CRITEST_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$CRITEST_PID" 2>/dev/null || true
	fi
	if [[ -n "$SMR_PID" ]] && kill -0 "$SMR_PID" 2>/dev/null; then
		kill -TERM "$SMR_PID"
		for _ in $(seq 50); do kill -0 "$SMR_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$SMR_PID" 2>/dev/null || true
	fi
	if [[ -x "$WORK/lab" ]]; then
		"$WORK/lab" containerd-down "$WORK/ctd" >&2 || rc=1
	fi
	local id
	for id in $(shm_ids | comm -13 "$WORK/shm-before" -); do
		ipcrm -m "$id" 2>/dev/null || true
	done
	return $rc
}
on_exit() {
	local rc=$?
	set +e
	teardown || rc=1
	# Keep the logs of a failed run; remove the directory only when nothing is mounted in it.
	if [[ $rc -eq 0 ]] && ! grep -q " $WORK/" /proc/self/mountinfo; then
		rm -rf "$WORK"
	fi
	exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

say "building bin/smr-cri and the lab tool"
(cd "$ROOT" && go build -o bin/smr-cri ./cmd/smr-cri && go build -o "$WORK/lab" ./hack/lab) ||
	die "build failed"

"$WORK/lab" sweep >&2 || true # labs left by killed runs
say "starting a private containerd in $WORK/ctd"
SOCK="$("$WORK/lab" containerd-up --owner $$ "$WORK/ctd")"
SMR_SOCK="$WORK/smr-cri.sock"
"$ROOT/bin/smr-cri" serve --listen "$SMR_SOCK" --runtime-endpoint "unix://$SOCK" \
	>"$WORK/smr-cri.log" 2>&1 &
SMR_PID=$!
for _ in $(seq 100); do [[ -S "$SMR_SOCK" ]] && break; kill -0 $SMR_PID || break; sleep 0.1; done
[[ -S "$SMR_SOCK" ]] || { tail -20 "$WORK/smr-cri.log" >&2; die "smr-cri did not come up"; }

say "focus: $FOCUS"
for entry in "${SKIP_REASONS[@]}"; do
	say "skip: /${entry%%::*}/ — ${entry#*::}"
done

# -ginkgo.flake-attempts=2: a failed spec is retried once, in both runs alike. containerd 1.6
# races in a few specs under load (the OOMKilled reason arrives after the exit event); the
# report names every spec that passed only on its retry.
run_critest() { # NAME ENDPOINT
	local name=$1 ep=$2 rc=0
	say "running critest $name (unix://$ep); log $WORK/$name.log"
	# In the background + wait, so that INT/TERM reach the trap at once (teardown stops critest).
	(cd "$WORK" && exec "$CRITEST" \
		--runtime-endpoint "unix://$ep" --image-endpoint "unix://$ep" \
		-ginkgo.focus="$FOCUS" -ginkgo.skip="$SKIP" \
		-ginkgo.flake-attempts=2 -ginkgo.no-color -ginkgo.v -ginkgo.json-report="$WORK/$name.json" \
		>"$WORK/$name.log" 2>&1) &
	CRITEST_PID=$!
	wait "$CRITEST_PID" || rc=$?
	CRITEST_PID=""
	[[ -s "$WORK/$name.json" ]] || { tail -30 "$WORK/$name.log" >&2; die "critest $name wrote no report (exit $rc)"; }
	say "critest $name finished (exit $rc): $(grep -E '^(Ran|PASS|FAIL)' "$WORK/$name.log" | tr '\n' ' ')"
}
run_critest direct "$SOCK"
run_critest via-smr-cri "$SMR_SOCK"

# Stop everything first so that the summary line is the last thing printed.
rc=0
"$WORK/lab" critest-report "$WORK/direct.json" "$WORK/via-smr-cri.json" >"$WORK/report.txt" 2>&1 || rc=$?
teardown || { say "ERROR: cleanup failed"; rc=1; }
[[ $rc -eq 0 ]] || say "logs kept in $WORK"
# Failures and differences, then the summary line last; non-zero if the passed sets differ.
cat "$WORK/report.txt"
exit $rc
