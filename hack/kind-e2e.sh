#!/usr/bin/env bash
# make kind-e2e: the README's kind walkthrough, for real, on this machine.
#
# Starts dockerd if none answers (its own data root under $SMR_CACHE/kind-node/docker,
# --iptables=false, and the OCI runtime wrapper hack/kind-e2e/runc-without-sys-resource that
# this VM needs; see README "What was verified") and stops what it started; builds the node image
# (hack/kind-node/build.sh, cached) and kind v0.33.0 (go install, cached); creates the cluster from
# hack/kind-config.yaml on a docker network in 198.18.192.0/24; then runs the walkthrough step by
# step as the README writes it, deletes the cluster and checks nothing is left on the host.
# Last line:
#   kind-e2e: steps=N passed=N pods_restarted_by_install=0
# A failed step or a Ctrl-C ends the run there (the summary line then says how far it got); the
# cluster, the docker network and the dockerd it started are removed on every way out.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${SMR_CACHE:-$ROOT/_cache}"
KN="$CACHE/kind-node"
OUT="$ROOT/_out/kind-e2e"
CLUSTER=smr
KIND_NET_SUBNET=198.18.192.0/24 # test/manifests checks it against hack/kind-config.yaml's subnets
KIND_NET_GW=198.18.192.1
DOCKER_DIR="$KN/docker"
export PATH="/usr/local/go/bin:$KN/bin:$PATH"
START=$SECONDS
mkdir -p "$OUT" "$KN/bin"

say() { printf '[kind-e2e %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
steps=0 passed=0 restarted=unknown
summarized=
summary() {
	summarized=1
	echo "kind-e2e: steps=$steps passed=$passed pods_restarted_by_install=$restarted"
}
fail() {
	say "FAILED at step $steps: $*"
	((steps == 0)) || collect_state
	cleanup
	summary
	exit 1
}
# collect_state: what a failed run leaves to read after the cluster is gone ($OUT/failure/):
# nodes, pods, events, and each node's smr-cri and kubelet logs.
collect_state() {
	local d="$OUT/failure" n
	rm -rf "$d" && mkdir -p "$d"
	say "collecting the cluster's state into $d"
	{
		timeout 60 kubectl --context "kind-$CLUSTER" get nodes -o wide
		timeout 60 kubectl --context "kind-$CLUSTER" get pods -A -o wide
		timeout 60 kubectl --context "kind-$CLUSTER" get events -A --sort-by=.lastTimestamp
		# The pod network: its logs (previous instances too) and every node's routes.
		timeout 60 kubectl --context "kind-$CLUSTER" -n kube-system logs -l app=podnet --prefix --timestamps --tail=-1
		timeout 60 kubectl --context "kind-$CLUSTER" -n kube-system logs -l app=podnet --prefix --timestamps --tail=-1 --previous
	} >"$d/cluster.txt" 2>&1
	for n in $(timeout 60 kind get nodes --name "$CLUSTER" 2>/dev/null); do
		timeout 60 docker exec "$n" tail -n 2000 /var/log/smr-cri/smr-cri.log >"$d/$n.smr-cri.log" 2>&1
		timeout 60 docker exec "$n" journalctl -u kubelet --no-pager -n 2000 >"$d/$n.kubelet.log" 2>&1
		timeout 60 docker exec "$n" ip route >"$d/$n.routes" 2>&1
	done
}
# step NAME CMD...: one walkthrough step; stops the run when it fails.
step() {
	local name=$1
	shift
	steps=$((steps + 1))
	say "step $steps: $name"
	if "$@"; then
		passed=$((passed + 1))
		say "step $steps: $name: ok"
	else
		fail "$name"
	fi
}
# retry SECONDS CMD...: until CMD succeeds or SECONDS pass.
retry() {
	local until=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < until)) || return 1
		sleep 3
	done
}

# --- dockerd -------------------------------------------------------------------------------
started_dockerd= our_dockerd= preexisting_run_docker=
start_dockerd() {
	if [[ -n "${DOCKER_HOST:-}" ]] && docker version >/dev/null 2>&1; then
		say "using the dockerd at $DOCKER_HOST"
		return
	fi
	export DOCKER_HOST="unix://$DOCKER_DIR/docker.sock"
	if docker version >/dev/null 2>&1; then
		say "using the dockerd at $DOCKER_HOST (left running)"
		return
	fi
	command -v dockerd >/dev/null || apt-get install -y --no-install-recommends docker.io >&2 || return 1
	mkdir -p "$DOCKER_DIR"
	[[ -e /run/docker ]] && preexisting_run_docker=1 # dockerd creates /run/docker/plugins
	say "starting dockerd ($DOCKER_DIR)"
	# --iptables=false etc.: dockerd touches neither the host's firewall nor its forwarding; the
	# wrapper drops the one capability this VM's root lacks (see its comment).
	# Its own session: a Ctrl-C of the run must not reach dockerd before the cleanup has deleted
	# the cluster through it (it would stop the nodes and leave them and the network behind).
	setsid dockerd --data-root "$DOCKER_DIR/data" --exec-root "$DOCKER_DIR/exec" --pidfile "$DOCKER_DIR/pid" \
		-H "$DOCKER_HOST" --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
		--add-runtime "nosysresource=$ROOT/hack/kind-e2e/runc-without-sys-resource" \
		--default-runtime nosysresource >"$OUT/dockerd.log" 2>&1 &
	started_dockerd=$! our_dockerd=$!
	retry 60 docker version >/dev/null 2>&1 || { tail -20 "$OUT/dockerd.log" >&2; return 1; }
}
# stop_dockerd: SIGTERM lets dockerd stop its containers and the containerd it started; one
# that has not exited after a minute is killed with that containerd (its child), so no daemon
# of this run outlives it.
stop_dockerd() {
	[[ -n "$started_dockerd" ]] || return 0
	local pid=$started_dockerd children
	started_dockerd=
	say "stopping the dockerd it started (pid $pid)"
	children=$(pgrep -P "$pid")
	kill "$pid" 2>/dev/null
	for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
	if kill -0 "$pid" 2>/dev/null; then
		say "dockerd $pid still runs after 60s: killing it and its children ($children)"
		kill -KILL "$pid" $children 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
	[[ -n "$preexisting_run_docker" ]] || rmdir /run/docker/plugins /run/docker 2>/dev/null
	return 0
}
# cleanup: on every way out (a failed step, Ctrl-C, an error of this script): the cluster, the
# docker network and the dockerd this run started. KIND_E2E_KEEP=1 keeps them for a look.
cleaned= touched_cluster=
cleanup() {
	[[ -z "$cleaned" ]] || return 0
	cleaned=1
	[[ -z "${KIND_E2E_KEEP:-}" ]] || { say "KIND_E2E_KEEP: cluster and dockerd left running (DOCKER_HOST=${DOCKER_HOST:-})"; return 0; }
	if [[ -n "$touched_cluster" ]] && docker version >/dev/null 2>&1; then
		kind delete cluster --name "$CLUSTER" >/dev/null 2>&1
		docker network rm kind >/dev/null 2>&1
	fi
	stop_dockerd
}
trap 'fail "interrupted"' INT TERM
trap 'cleanup; [[ -n "$summarized" ]] || summary' EXIT

# --- prerequisites (not walkthrough steps) ----------------------------------------------------
# (docker import cannot set STOPSIGNAL: `docker stop` of a node waits its timeout, then kills.)
say "building the node image (cached: hack/kind-node/build.sh)"
NODE_TAR=$(hack/kind-node/build.sh) || { say "node image build failed"; summary; exit 1; }
if ! [[ -x "$KN/bin/kind" ]]; then
	say "building kind v0.33.0"
	(cd /tmp && GOBIN="$KN/bin" nice -n 10 go install sigs.k8s.io/kind@v0.33.0) || { summary; exit 1; }
fi
start_dockerd || fail "dockerd did not start"
NODE_IMAGE="localhost/smr-kind-node:$(basename "$NODE_TAR" .tar | sed 's/^node-//')"
if ! docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
	say "importing $NODE_IMAGE"
	docker import --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
		--change 'ENV container=docker' \
		"$NODE_TAR" "$NODE_IMAGE" >/dev/null || fail "docker import"
fi
# Node images of earlier inputs (several GB each in the data root) are of no further use.
for old in $(docker images --format '{{.Repository}}:{{.Tag}}' localhost/smr-kind-node | grep -vxF "$NODE_IMAGE"); do
	say "removing the outdated node image $old"
	docker rmi "$old" >/dev/null || say "could not remove $old"
done
touched_cluster=1
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1
# kind uses the network named "kind" when it exists: this one keeps the nodes in the project's
# range (kind's own default is a private range).
docker network rm kind >/dev/null 2>&1
docker network create --driver bridge --subnet "$KIND_NET_SUBNET" --gateway "$KIND_NET_GW" \
	-o com.docker.network.bridge.enable_ip_masquerade=false kind >/dev/null || fail "docker network"

K() { kubectl --context "kind-$CLUSTER" "$@"; }
NODES=()
SUMS="$OUT/kubelet-files.sha256"

# --- the walkthrough ----------------------------------------------------------------------------
create_cluster() {
	kind create cluster --config hack/kind-config.yaml --image "$NODE_IMAGE" --wait 5m &&
		mapfile -t NODES < <(kind get nodes --name "$CLUSTER" | sort)
}
# The files install rewrites, hashed on every node before install: uninstall must restore them.
kubelet_file_sums() {
	local n
	for n in "${NODES[@]}"; do
		docker exec "$n" sh -c 'cd / && sha256sum var/lib/kubelet/config.yaml var/lib/kubelet/kubeadm-flags.env etc/systemd/system/kubelet.service.d/* 2>/dev/null' | sed "s|^|$n |"
	done
}
# pod_fingerprint: every running pod's containers with their IDs and restart counts; a pod that
# survives install/upgrade/uninstall keeps exactly these.
pod_fingerprint() {
	K get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{range .status.containerStatuses[*]} {.name}={.containerID}:{.restartCount}{end}{"\n"}{end}' |
		grep -v '^smr-system/' | sort
}
install_smr() {
	kubelet_file_sums >"$SUMS" && [[ -s "$SUMS" ]] || return 1
	pod_fingerprint >"$OUT/pods-before-install" || return 1
	CLUSTER=$CLUSTER KIND_UP_SKIP_CREATE=1 hack/kind-up.sh
}
node_runs_smr() {
	local n
	for n in $(kind get nodes --name "$CLUSTER" | grep -v control-plane); do
		docker exec "$n" systemctl status smr-cri >&2 || return 1
		[[ "$(docker exec "$n" grep containerRuntimeEndpoint /var/lib/kubelet/config.yaml)" == 'containerRuntimeEndpoint: unix:///run/smr-cri/smr-cri.sock' ]] || return 1
		# serve reaches the API server where kubelet does, not through a ClusterIP that needs kube-proxy.
		retry 60 docker exec "$n" grep -qx '    server: https://smr-control-plane:6443' /var/lib/smr-cri/kube/kubeconfig ||
			{ say "$n: serve's kubeconfig does not name kubelet's API server"; return 1; }
	done
	K -n smr-system logs ds/smr-cri -c install | tail -5 >&2
}
pods_unchanged() { # FILE: the fingerprint taken before
	local now
	now=$(pod_fingerprint) || return 1
	# Pods that existed before must be the same (new pods may have appeared).
	local lost
	lost=$(comm -23 "$1" <(echo "$now"))
	# Summed over install, upgrade and uninstall: pods_restarted_by_install of the summary.
	restarted=$((${restarted/unknown/0} + $(echo -n "$lost" | grep -c . || true)))
	[[ -z "$lost" ]] || { say "pods changed:"; echo "$lost" >&2; return 1; }
}
deploy_redis() { K apply -k examples/redis/ && K rollout status sts/redis --timeout 5m; }
rcli() { # redis-cli through the Service, as the README's `kubectl run rc -it ... redis-cli -h redis`
	# Not `run -i`: a one-shot redis-cli exits before kubectl attaches and its output is lost;
	# the pod's log keeps it.
	local pod="rc-$RANDOM" out
	K run "$pod" --restart=Never --image docker.io/library/redis:7.2 --image-pull-policy=Never \
		-- redis-cli -h redis "$@" >/dev/null || return 1
	# Until the client exits, 60 s at most; a client that failed (e.g. a name lookup while DNS
	# was down) ends the wait at once, so that a caller's retry can try again.
	local phase= until=$((SECONDS + 60))
	while phase=$(K get pod "$pod" -o jsonpath='{.status.phase}' 2>/dev/null); [[ "$phase" != Succeeded && "$phase" != Failed ]]; do
		((SECONDS < until)) || break
		sleep 1
	done
	if [[ "$phase" != Succeeded ]]; then
		say "client pod $pod did not succeed in 60s: $(K get pod "$pod" -o wide --no-headers 2>&1)"
		K logs "$pod" >&2
		K delete pod "$pod" --wait=false >/dev/null
		return 1
	fi
	out=$(K logs "$pod")
	K delete pod "$pod" --wait=false >/dev/null
	echo "$out"
}
write_read() {
	[[ "$(rcli SET greeting hello)" == OK ]] || return 1
	rcli INCR visits >/dev/null || return 1
	local i v
	for i in 0 1 2; do
		v=$(retry 30 K exec "redis-$i" -- redis-cli -h 127.0.0.1 GET greeting) || return 1
		[[ "$v" == hello ]] || { say "redis-$i has greeting=$v"; return 1; }
	done
}
# traces: the README's all-nodes command (without -f, from the start: --tail=-1). "Every write
# shows up on every node": each worker's trace pod has commit lines of the group.
traces() {
	local pods
	pods=$(K -n smr-system logs -l app.kubernetes.io/name=smr-cri --prefix --max-log-requests 4 --tail=-1 |
		grep 'smr=commit group=default.redis index=' | grep -o '^\[pod/[^/]*' | sort -u | wc -l)
	[[ "$pods" == 3 ]] || { say "commit traces from $pods trace pods, want 3"; return 1; }
}
same_on_all() { # KEY VALUE
	local i v
	for i in 0 1 2; do
		v=$(K exec "redis-$i" -- redis-cli -h 127.0.0.1 GET "$1") && [[ "$v" == "$2" ]] || return 1
	done
}
kill_replica() {
	K delete pod redis-1 --wait=false && [[ "$(rcli SET after-replica yes)" == OK ]] &&
		K rollout status sts/redis --timeout 5m && retry 120 same_on_all after-replica yes
}
# cluster_dns: the Service name resolves from some replica's pod (busybox nslookup).
cluster_dns() {
	local i
	for i in 0 1 2; do
		K exec "redis-$i" -- nslookup redis.default.svc.cluster.local >/dev/null 2>&1 && return 0
	done
	return 1
}
kill_node() {
	# The client reaches redis by its Service name: wait for cluster DNS too, whose replicas may
	# have run on the restarted node (a run on 2026-12-03 had both there: every lookup failed
	# for over a minute, "Temporary failure in name resolution").
	docker restart smr-worker2 >/dev/null && retry 300 K wait --for=condition=Ready node/smr-worker2 --timeout 10s &&
		retry 300 cluster_dns &&
		[[ "$(retry 60 rcli SET after-node yes)" == OK ]] && K rollout status sts/redis --timeout 5m &&
		retry 180 same_on_all after-node yes
}
upgrade() {
	pod_fingerprint >"$OUT/pods-before-upgrade"
	# The README's step 5, command for command.
	CGO_ENABLED=0 GOOS=linux go build -ldflags "-X github.com/smr-io/smr-cri/internal/cli.version=v2" -o _out/kind/smr-cri ./cmd/smr-cri &&
		go run ./hack/kind-image --binary _out/kind/smr-cri --tag localhost/smr-cri:v2 --out _out/kind/smr-cri-v2.tar &&
		kind load image-archive --name "$CLUSTER" _out/kind/smr-cri-v2.tar &&
		K -n smr-system set image ds/smr-cri install=localhost/smr-cri:v2 trace=localhost/smr-cri:v2 &&
		K -n smr-system rollout status ds/smr-cri --timeout 10m || return 1
	local n
	for n in $(kind get nodes --name "$CLUSTER" | grep -v control-plane); do
		docker exec "$n" /usr/local/bin/smr-cri version | grep -q '^smr-cri v2 ' || { say "$n still runs the old smr-cri"; return 1; }
	done
	same_on_all greeting hello && pods_unchanged "$OUT/pods-before-upgrade"
}
uninstall() {
	pod_fingerprint >"$OUT/pods-before-uninstall"
	K delete -k examples/redis/ --wait=true &&
		K -n smr-system delete ds smr-cri &&
		K apply -k manifests/uninstall &&
		K -n smr-system rollout status ds/smr-cri-uninstall --timeout 10m &&
		K delete -k manifests/uninstall && K delete -k manifests/ --ignore-not-found || return 1
	diff <(kubelet_file_sums) "$SUMS" >&2 || { say "kubelet's files differ from before install"; return 1; }
	# Every pod that ran before the uninstall except the deleted example is untouched.
	pods_unchanged <(grep -v '^default/redis-' "$OUT/pods-before-uninstall")
}
delete_cluster() { kind delete cluster --name "$CLUSTER" && docker network rm kind >/dev/null; }
# nothing_left: after the cleanup, the host has no trace of the run: the dockerd it started is
# gone, no docker bridge (br-<id>) or address of the kind network is left on the host, and
# the host's firewall has no docker or kind-network rule (dockerd runs with --iptables=false;
# the nodes' kube-proxy and podnet rules live in the nodes' own network namespaces).
nothing_left() {
	cleanup
	[[ -z "${KIND_E2E_KEEP:-}" ]] || return 0
	local left=
	[[ -n "$our_dockerd" ]] && kill -0 "$our_dockerd" 2>/dev/null && left+=" dockerd($our_dockerd)"
	left+=$(ip -o addr show to "$KIND_NET_SUBNET" | awk '{printf " address(%s %s)", $2, $4}')
	left+=$(ip -o link show type bridge | grep -oE '^[0-9]+: br-[0-9a-f]{12}:' | sed 's/^[0-9]*: / bridge(/; s/:$/)/' | tr -d '\n')
	left+=$( (iptables-save; ip6tables-save) 2>/dev/null | grep -E 'DOCKER|198\.18\.192\.' | sed 's/^/ rule(/; s/$/)/' | tr '\n' ' ')
	[[ -z "$left" ]] || { say "left behind:$left"; return 1; }
}

step "kind create cluster --config hack/kind-config.yaml" create_cluster
step "install: hack/kind-up.sh (kind load image-archive, kubectl apply -k manifests/, rollout)" install_smr
step "pods running before install kept their containers" pods_unchanged "$OUT/pods-before-install"
step "every node runs smr-cri.service, kubelet points at smr-cri" node_runs_smr
step "kubectl apply -k examples/redis/" deploy_redis
step "write/read through the Service, same state on every replica" write_read
step "ordering traces via kubectl logs" traces
step "kill a replica (kubectl delete pod redis-1)" kill_replica
step "kill a node (docker restart smr-worker2)" kill_node
step "upgrade the DaemonSet to a newly built smr-cri" upgrade
step "uninstall: kubelet's files restored byte for byte, pods kept" uninstall
step "kind delete cluster" delete_cluster
step "nothing left behind: dockerd stopped, no docker bridge, address or firewall rule on the host" nothing_left
summary
