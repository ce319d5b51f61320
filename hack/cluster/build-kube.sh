#!/usr/bin/env bash
# Builds the Kubernetes control-plane binaries the local cluster needs, v1.37.2, from Go modules:
#   kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl
# into _cache/kube-v1.37.2/ (git-ignored; $SMR_CACHE overrides _cache). kubelet is built by
# hack/install-deps.sh into _cache/bin/kubelet; this script links it into the same directory.
#
# The build uses the build-only module hack/tools/kubelet (owned by the node lab), which pins
# k8s.io/kubernetes v1.37.2 and replaces every staging module with its published v0.37.2; its
# go.mod lists these commands as `tool` lines so that go.sum covers them.
#
# Idempotent: each binary carries a stamp (version, Go version, hash of the module's go.sum) and
# is skipped when the stamp matches. Cold on 2 cores this takes 15+ minutes; warm it takes a second.
# Usage: hack/cluster/build-kube.sh [binary ...]   (default: all five)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${SMR_CACHE:-$ROOT/_cache}"
# KUBE_VERSION, KUBE_BUILD, KUBE_LDFLAGS, kube_reports_version (shared with install-deps' kubelet)
source "$ROOT/hack/cluster/kube-version.sh"
OUT="$CACHE/kube-$KUBE_VERSION"
MOD="$ROOT/hack/tools/kubelet"
LOGS="$CACHE/logs"
START=$SECONDS
export PATH="/usr/local/go/bin:$PATH"

say() { printf '[build-kube %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

command -v go >/dev/null || die "go not found (expected /usr/local/go/bin/go)"
[[ -f "$MOD/go.mod" ]] || die "build module $MOD missing"
mkdir -p "$OUT" "$LOGS"

ALL=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)
WANT=("$@")
((${#WANT[@]})) || WANT=("${ALL[@]}")
for b in "${WANT[@]}"; do
	[[ " ${ALL[*]} " == *" $b "* ]] || die "unknown binary $b (known: ${ALL[*]})"
done

# Two runs at once (a manual cluster-up and a test) would write the same files: take turns.
exec 9>"$OUT/.lock"
if ! flock -n 9; then
	say "another build-kube.sh is running; waiting for it"
	flock 9
fi

STAMP="$KUBE_BUILD $(go version | awk '{print $3}') $(sha256sum "$MOD/go.sum" | cut -c1-16)"
fresh() { [[ -x "$OUT/$1" && -f "$OUT/$1.stamp" && "$(cat "$OUT/$1.stamp")" == "$STAMP" ]] && kube_reports_version "$OUT/$1"; }

todo=()
for b in "${WANT[@]}"; do
	if fresh "$b"; then say "$b $KUBE_VERSION: cached"; else todo+=("$b"); fi
done

# One `go build` per binary, one at a time: the machine has 2 cores shared with other work, and
# the packages the binaries share are compiled once and reused from GOCACHE by the next build.
# Same flags as install-deps' kubelet build (no -trimpath, KUBE_LDFLAGS), so kubelet's cached
# packages count.
for b in "${todo[@]}"; do
	t0=$SECONDS
	log="$LOGS/build-$b.log"
	say "$b $KUBE_VERSION: building (log $log)"
	(cd "$MOD" && nice -n 5 go build -ldflags "$KUBE_LDFLAGS" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b") >"$log" 2>&1 ||
		{ tail -30 "$log"; die "$b build failed (log $log)"; }
	mv "$OUT/$b.tmp" "$OUT/$b"
	echo "$STAMP" >"$OUT/$b.stamp"
	say "$b built in $((SECONDS - t0))s ($(du -h "$OUT/$b" | cut -f1))"
done

# kubelet comes from hack/install-deps.sh; link it here so the cluster finds one directory.
if [[ -x "$CACHE/bin/kubelet" ]]; then
	ln -sf "$CACHE/bin/kubelet" "$OUT/kubelet"
fi
for b in "${WANT[@]}"; do
	kube_reports_version "$OUT/$b" || die "$OUT/$b does not run or does not report $KUBE_VERSION"
done
say "done in $((SECONDS - START))s: $OUT"
