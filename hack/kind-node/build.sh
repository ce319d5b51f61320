#!/usr/bin/env bash
# Builds a kind node image for Kubernetes v1.37.2 without any registry, as a rootfs tar that
# `docker import` turns into an image (hack/kind-e2e.sh does that):
#   - a Debian bookworm rootfs (debootstrap) with systemd, containerd, runc, CNI plugins, iptables;
#   - kind v0.33.0's own node files (entrypoint, systemd units, containerd config) from its module;
#   - kubeadm, kubelet, kubectl v1.37.2 built from Go modules;
#   - the images kubeadm and kind need (kube-apiserver, -controller-manager, -scheduler,
#     kube-proxy, etcd, coredns, pause, the pod network of /kind/manifests/default-cni.yaml) and
#     the example's Redis, imported into the rootfs' containerd.
# Everything is cached under $SMR_CACHE/kind-node (default _cache/kind-node); a rerun with the
# same inputs prints the cached tar's path in a second. Cold: ~15 min on 2 cores (Kubernetes
# binaries already built by hack/install-deps.sh and hack/cluster/build-kube.sh: ~+15 min).
#
# The node image is a test fixture of this machine, not something users get: users run kind's
# published node images. It carries two settings this machine needs (see README, "What was
# verified"): containerd's restrict_oom_score_adj and no OOMScoreAdjust for containerd.service,
# because this VM's root lacks CAP_SYS_RESOURCE.
#
# Usage: hack/kind-node/build.sh        (prints the rootfs tar's path on stdout)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${SMR_CACHE:-$ROOT/_cache}"
KN="$CACHE/kind-node"
BIN="$KN/bin"
source "$ROOT/hack/cluster/kube-version.sh"
KUBE_DIR="$CACHE/kube-$KUBE_VERSION"
KIND_VERSION=v0.33.0
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
START=$SECONDS
export PATH="/usr/local/go/bin:$PATH"

say() { printf '[kind-node %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
mkdir -p "$BIN" "$KN/logs"

exec 8>"$KN/.lock"
flock 8

# stamp_ok NAME STAMP: NAME was built from exactly these inputs.
stamp_ok() { [[ -e "$KN/$1" && -f "$KN/$1.stamp" && "$(cat "$KN/$1.stamp")" == "$2" ]]; }
stamp_set() { echo "$2" >"$KN/$1.stamp"; }
gover=$(go version | awk '{print $3}')

# 1. Kubernetes binaries: kubelet from hack/install-deps.sh, the rest from build-kube.sh (cached).
[[ -x "$CACHE/bin/kubelet" ]] || die "$CACHE/bin/kubelet missing: run hack/install-deps.sh first"
"$ROOT/hack/cluster/build-kube.sh" kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl >&2

# 2. kubeadm, etcd, coredns (build-only modules in hack/kind-node/tools), podnet and pause (this repo).
build_tool() { # NAME MODULE_DIR PACKAGE CGO LDFLAGS
	local name=$1 dir=$2 pkg=$3 cgo=$4 ldflags=$5
	local stamp="$name $gover $(cat "$dir/go.mod" "$dir/go.sum" "$dir"/*.go 2>/dev/null | sha256sum | cut -c1-16) $ldflags"
	if stamp_ok "bin/$name" "$stamp"; then say "$name: cached"; return; fi
	say "$name: building (log $KN/logs/$name.log)"
	local trim=()
	[[ $cgo == 0 ]] && trim=(-trimpath)
	(cd "$dir" && CGO_ENABLED=$cgo nice -n 10 go build "${trim[@]}" -ldflags "$ldflags" -o "$BIN/$name.tmp" "$pkg") >"$KN/logs/$name.log" 2>&1 ||
		{ tail -20 "$KN/logs/$name.log" >&2; die "$name build failed"; }
	mv "$BIN/$name.tmp" "$BIN/$name"
	stamp_set "bin/$name" "$stamp"
}
T="$ROOT/hack/kind-node/tools"
build_tool kubeadm "$T/kube" k8s.io/kubernetes/cmd/kubeadm 1 "$KUBE_LDFLAGS"
build_tool etcd "$T/etcd" go.etcd.io/etcd/server/v3 0 "-s -w"
build_tool coredns "$T/coredns" . 0 "-s -w"
build_podnet_pause() {
	local stamp="podnet+pause $gover $(cd "$ROOT" && git ls-files -s hack/kind-node/podnet test/lab/nodelab/pause go.sum | sha256sum | cut -c1-16)"
	if stamp_ok bin/podnet "$stamp" && [[ -x "$BIN/pause" ]]; then say "podnet, pause: cached"; return; fi
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/podnet" ./hack/kind-node/podnet &&
		CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/pause" ./test/lab/nodelab/pause)
	stamp_set bin/podnet "$stamp"
}
build_podnet_pause

# 3. The Debian base (network: Debian's mirror, like apt).
PKGS=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,nftables,conntrack,ethtool,socat,ebtables,kmod,ca-certificates,procps,iproute2,util-linux,mount,bash,libseccomp2,pigz,less
if stamp_ok rootfs "bookworm $PKGS"; then
	say "debian rootfs: cached"
else
	command -v debootstrap >/dev/null || apt-get install -y --no-install-recommends debootstrap >&2
	say "debian rootfs: debootstrap bookworm (log $KN/logs/debootstrap.log)"
	rm -rf "$KN/rootfs" "$KN/rootfs.tmp"
	nice -n 10 debootstrap --variant=minbase --include="$PKGS" bookworm "$KN/rootfs.tmp" "$DEBIAN_MIRROR" >"$KN/logs/debootstrap.log" 2>&1 ||
		{ tail -20 "$KN/logs/debootstrap.log" >&2; die "debootstrap failed"; }
	rm -rf "$KN/rootfs.tmp/var/cache/apt/archives"/*.deb
	mv "$KN/rootfs.tmp" "$KN/rootfs"
	stamp_set rootfs "bookworm $PKGS"
fi

# 4. Image tars.
img_stamp="$(cd "$ROOT" && git ls-files -s hack/kind-node/images test/lab/nodelab | sha256sum | cut -c1-16) $(cat "$BIN"/*.stamp "$KUBE_DIR"/*.stamp | sha256sum | cut -c1-16)"
if stamp_ok images "$img_stamp"; then
	say "images: cached"
else
	say "images: writing tars"
	rm -rf "$KN/images"
	(cd "$ROOT" && go run ./hack/kind-node/images --kube-dir "$KUBE_DIR" --bin-dir "$BIN" --out "$KN/images.tmp")
	mv "$KN/images.tmp" "$KN/images"
	stamp_set images "$img_stamp"
fi

# 5. The node rootfs, as a tar.
KIND_SRC=$(cd "$ROOT/hack/kind-node/tools/kube" && go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION
[[ -d "$KIND_SRC/images/base/files" ]] || (cd /tmp && GOFLAGS=-mod=mod go mod download sigs.k8s.io/kind@$KIND_VERSION) >&2
node_stamp="$(cat "$KN/rootfs.stamp" "$KN/images.stamp" "$ROOT/hack/kind-node/build.sh" "$ROOT/hack/kind-node/default-cni.yaml" | sha256sum | cut -c1-16)"
NODE_TAR="$KN/node-$KUBE_VERSION-$node_stamp.tar"
if [[ -f "$NODE_TAR" ]]; then
	say "node rootfs: cached"
	echo "$NODE_TAR"
	exit 0
fi
W="$KN/work"
rm -rf "$W"
say "node rootfs: assembling in $W"
cp -a "$KN/rootfs" "$W"
cp -r "$KIND_SRC/images/base/files/." "$W/"
chmod -R u+w "$W/kind" "$W/etc/systemd/system" "$W/etc/containerd" "$W/usr/local/bin"
chmod 755 "$W/kind" "$W/kind/bin" "$W"/kind/bin/* "$W"/usr/local/bin/*
install -m 0755 "$CACHE/bin/kubelet" "$W/usr/bin/kubelet"
install -m 0755 "$BIN/kubeadm" "$W/usr/bin/kubeadm"
install -m 0755 "$KUBE_DIR/kubectl" "$W/usr/bin/kubectl"
ln -sf /usr/bin/containerd "$W/usr/local/bin/containerd"
rm -rf "$W/opt/cni/bin" && mkdir -p "$W/opt/cni" && ln -s /usr/lib/cni "$W/opt/cni/bin"
mkdir -p "$W/etc/kubernetes/manifests" "$W/kind/manifests"
echo "$KUBE_VERSION" >"$W/kind/version"
cp "$ROOT/hack/kind-node/default-cni.yaml" "$W/kind/manifests/default-cni.yaml"
# containerd 1.6 (Debian): kind's v2 config, with the pause kubeadm v1.37.2 names, without the
# base spec kind generates with its own containerd, and (this machine) restrict_oom_score_adj.
sed -i -e '/base_runtime_spec/d' -e 's#sandbox_image = .*#sandbox_image = "registry.k8s.io/pause:3.10.2"#' \
	-e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' "$W/etc/containerd/config.toml"
sed -i '/^OOMScoreAdjust=/d' "$W/etc/systemd/system/containerd.service"
# As kind's base image: only the services a node needs start.
find "$W/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$W"/lib/systemd/system/multi-user.target.wants/* "$W"/etc/systemd/system/*.wants/* \
	"$W"/lib/systemd/system/local-fs.target.wants/* "$W"/lib/systemd/system/sockets.target.wants/*udev* \
	"$W"/lib/systemd/system/sockets.target.wants/*initctl* "$W"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$W/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$W/sbin/init"
chroot "$W" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >&2
chroot "$W" systemctl mask systemd-binfmt.service >&2

# Preload: a containerd of this machine (same Debian 1.6.20 as the node's) writes the rootfs'
# /var/lib/containerd, unpacked for the overlayfs snapshotter the node uses.
CT="$KN/preload"
rm -rf "$CT" && mkdir -p "$CT"
cat >"$CT/config.toml" <<TOML
version = 2
root = "$W/var/lib/containerd"
state = "$CT/state"
[grpc]
  address = "$CT/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
TOML
containerd --config "$CT/config.toml" >"$KN/logs/preload-containerd.log" 2>&1 &
ctd=$!
trap 'kill $ctd 2>/dev/null; wait $ctd 2>/dev/null || true' EXIT
for _ in $(seq 50); do [[ -S "$CT/containerd.sock" ]] && break; sleep 0.2; done
for t in "$KN"/images/*.tar; do
	say "preloading $(basename "$t")"
	ctr -a "$CT/containerd.sock" -n k8s.io images import --all-platforms --snapshotter overlayfs "$t" >&2
done
ctr -a "$CT/containerd.sock" -n k8s.io images ls -q >&2
kill $ctd; wait $ctd 2>/dev/null || true
trap - EXIT

say "node rootfs: writing $NODE_TAR"
rm -f "$KN"/node-*.tar
tar --numeric-owner --xattrs -C "$W" -cf "$NODE_TAR.tmp" .
mv "$NODE_TAR.tmp" "$NODE_TAR"
rm -rf "$W" "$CT"
say "done in $((SECONDS - START))s"
echo "$NODE_TAR"
