# Sourced by hack/install-deps.sh (kubelet) and hack/cluster/build-kube.sh (control plane and
# kubectl), so that every Kubernetes binary of the cluster is built the same way: the release it
# is built from (test/lab/cluster.KubeVersion must say the same) and the linker flags that make it
# report that release. Without them `--version` says v0.0.0-master, `kubectl get nodes` shows
# that for every node and kubectl warns about version skew.
KUBE_VERSION=v1.37.2
# Part of every build stamp: change it with the flags, so cached binaries are rebuilt.
KUBE_BUILD="$KUBE_VERSION ldflags-1"

_kube_v=${KUBE_VERSION#v}
_kube_major=${_kube_v%%.*}
_kube_minor=${_kube_v#*.}
_kube_minor=${_kube_minor%%.*}
KUBE_LDFLAGS=""
for _kube_pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	KUBE_LDFLAGS+=" -X $_kube_pkg.gitVersion=$KUBE_VERSION -X $_kube_pkg.gitMajor=$_kube_major"
	KUBE_LDFLAGS+=" -X $_kube_pkg.gitMinor=$_kube_minor -X $_kube_pkg.gitTreeState=clean"
done
unset _kube_v _kube_major _kube_minor _kube_pkg

# kube_reports_version BIN: true when BIN runs and reports KUBE_VERSION (`--version`, or
# `version --client` for kubectl). A cached binary that says anything else is rebuilt, whatever
# its stamp says.
kube_reports_version() {
	local out
	out=$("$1" --version 2>/dev/null) || out=$("$1" version --client 2>/dev/null) || return 1
	[[ " ${out//$'\n'/ } " == *" $KUBE_VERSION "* ]]
}
