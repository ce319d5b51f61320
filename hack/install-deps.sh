#!/usr/bin/env bash
# Installs what the node lab needs on a fresh Debian machine (as root, no systemd) and builds the
# CRI tools and kubelet from Go modules into the repository's _cache/ (reused by later runs).
#   apt: containerd runc CNI plugins iptables socat redis etcd busybox-static iproute2 procps
#        prometheus (promtool checks manifests/monitoring)
#   _cache/bin/crictl   sigs.k8s.io/cri-tools/cmd/crictl  v1.37.0  (hack/tools/critest module)
#   _cache/bin/critest  sigs.k8s.io/cri-tools/cmd/critest v1.37.0  (go test -c, same module)
#   _cache/bin/kubelet  k8s.io/kubernetes/cmd/kubelet     v1.37.2  (hack/tools/kubelet module,
#                       version ldflags of hack/cluster/kube-version.sh, like the control plane)
# Idempotent: each binary is skipped when it exists and its version stamp matches.
# The kubelet build (8+ minutes cold on 2 cores) starts first, in the background.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SMR_CACHE:-$ROOT/_cache}"
BIN="$CACHE/bin"
LOGS="$CACHE/logs"
START=$SECONDS
mkdir -p "$BIN" "$LOGS"

say() { printf '[install-deps %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get, and the lab runs containerd/runc/kubelet)"

export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || die "go not found (expected /usr/local/go/bin/go)"

# KUBE_VERSION, KUBE_BUILD, KUBE_LDFLAGS, kube_reports_version: kubelet is built exactly like the
# control plane (hack/cluster/build-kube.sh), so it reports KUBE_VERSION, not v0.0.0-master.
source "$ROOT/hack/cluster/kube-version.sh"
CRITOOLS_VERSION=v1.37.0

# stamp NAME: what the binary must have been built from (version + the build module's go.sum).
stamp() {
	local name=$1 version=$2 mod=$3
	echo "$name $version $(go version | awk '{print $3}') $(sha256sum "$mod/go.sum" | cut -c1-16)"
}
fresh() { # fresh NAME STAMP -> true when the binary exists and was built from STAMP
	[[ -x "$BIN/$1" && -f "$BIN/$1.stamp" && "$(cat "$BIN/$1.stamp")" == "$2" ]]
}

# --- kubelet: start first, in the background -------------------------------------------------
KUBELET_MOD="$ROOT/hack/tools/kubelet"
KUBELET_STAMP="$(stamp kubelet "$KUBE_BUILD" "$KUBELET_MOD")"
KUBELET_PID=""
# A stamp from before the version flags, or a binary reporting another version, is rebuilt
# (only the link step when GOCACHE has the packages).
if fresh kubelet "$KUBELET_STAMP" && kube_reports_version "$BIN/kubelet"; then
	say "kubelet $KUBE_VERSION: cached ($BIN/kubelet)"
else
	say "kubelet $KUBE_VERSION: building in the background (log $LOGS/kubelet-build.log)"
	(
		cd "$KUBELET_MOD"
		go build -ldflags "$KUBE_LDFLAGS" -o "$BIN/kubelet.tmp.$$" k8s.io/kubernetes/cmd/kubelet &&
			mv "$BIN/kubelet.tmp.$$" "$BIN/kubelet" &&
			echo "$KUBELET_STAMP" >"$BIN/kubelet.stamp"
	) >"$LOGS/kubelet-build.log" 2>&1 &
	KUBELET_PID=$!
fi
# Never leave the background build running if this script stops early.
trap 'exit 130' INT
trap 'exit 143' TERM
# (the go build is a child of the background subshell: stop it first, then the subshell).
trap '[[ -n "$KUBELET_PID" ]] && { pkill -TERM -P "$KUBELET_PID"; kill "$KUBELET_PID"; } 2>/dev/null; rm -f "$BIN"/*.tmp.$$; true' EXIT

# --- apt packages ----------------------------------------------------------------------------
PKGS=(containerd runc containernetworking-plugins iptables socat redis-server redis-tools
	etcd-server etcd-client busybox-static iproute2 procps util-linux prometheus)
missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	say "apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# policy-rc.d: never start daemons from package scripts (there is no init system to own them).
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
		POLICY_ADDED=1
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1 ||
		{ tail -20 "$LOGS/apt.log"; die "apt-get install failed"; }
	[[ -n "${POLICY_ADDED:-}" ]] && rm -f /usr/sbin/policy-rc.d
	say "apt packages installed"
else
	say "apt packages: all present"
fi

# --- crictl and critest (one build-only module pinned to cri-tools v1.37.0) -------------------
CRITEST_MOD="$ROOT/hack/tools/critest"
CRICTL_STAMP="$(stamp crictl $CRITOOLS_VERSION "$CRITEST_MOD")"
if fresh crictl "$CRICTL_STAMP"; then
	say "crictl $CRITOOLS_VERSION: cached"
else
	say "crictl $CRITOOLS_VERSION: building"
	(cd "$CRITEST_MOD" && go build -o "$BIN/crictl.tmp.$$" sigs.k8s.io/cri-tools/cmd/crictl) ||
		die "crictl build failed"
	mv "$BIN/crictl.tmp.$$" "$BIN/crictl" # atomic: a concurrent run never sees half a binary
	echo "$CRICTL_STAMP" >"$BIN/crictl.stamp"
	say "crictl built"
fi
CRITEST_STAMP="$(stamp critest $CRITOOLS_VERSION "$CRITEST_MOD")"
if fresh critest "$CRITEST_STAMP"; then
	say "critest $CRITOOLS_VERSION: cached"
else
	say "critest $CRITOOLS_VERSION: building (go test -c)"
	# cmd/critest has only test files, so it is built as a test binary.
	(cd "$CRITEST_MOD" && go test -c -o "$BIN/critest.tmp.$$" sigs.k8s.io/cri-tools/cmd/critest) ||
		die "critest build failed"
	mv "$BIN/critest.tmp.$$" "$BIN/critest"
	echo "$CRITEST_STAMP" >"$BIN/critest.stamp"
	say "critest built"
fi

# --- wait for kubelet ------------------------------------------------------------------------
if [[ -n "$KUBELET_PID" ]]; then
	while kill -0 "$KUBELET_PID" 2>/dev/null; do
		say "kubelet build still running ..."
		for _ in $(seq 30); do kill -0 "$KUBELET_PID" 2>/dev/null || break; sleep 2; done
	done
	if ! wait "$KUBELET_PID"; then
		KUBELET_PID=""
		tail -30 "$LOGS/kubelet-build.log"
		die "kubelet build failed (log $LOGS/kubelet-build.log)"
	fi
	KUBELET_PID=""
	say "kubelet built"
fi
fresh kubelet "$KUBELET_STAMP" || die "kubelet missing after build"

kube_reports_version "$BIN/kubelet" || die "$BIN/kubelet does not run or does not report $KUBE_VERSION"
"$BIN/crictl" --version >/dev/null || die "crictl does not run"
say "done: $(ls "$BIN" | grep -v '\.stamp$' | tr '\n' ' ')"
