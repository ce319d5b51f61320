# smr-cri — see README.md. Every target is a thin wrapper over a script or a go command,
# so CI (.ci/run) and people run exactly the same thing.
SHELL := /bin/bash
GO    ?= go
BIN   := bin

.PHONY: all build run test unit critest e2e cluster-up cluster-down test-security fuzz kind-up kind-e2e bench bench-profile bench-ceiling bench-cri bench-raft bench-raft-tls bench-idle bench-netintercept vet fmt clean help

all: build

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

build: ## build bin/smr-cri
	$(GO) build -o $(BIN)/smr-cri ./cmd/smr-cri

run: ## the main job: install what is missing, start a local replicated service you can talk to
	hack/run.sh

test: ## the whole test suite (installs what is missing; needs root)
	hack/test.sh

unit: ## unit tests only: no root, no daemons
	$(GO) test -count=1 ./...

critest: ## CRI validation suite directly against containerd and through smr-cri
	hack/critest.sh

e2e: ## end-to-end fault scenarios on the local multi-node cluster (needs root)
	hack/cluster/e2e.sh

cluster-up: ## a control plane and three worker nodes (network namespaces) on this machine
	hack/install-deps.sh
	$(GO) build -o $(BIN)/smr-cri ./cmd/smr-cri
	$(GO) run ./hack/cluster up

cluster-down: ## remove every process, namespace, mount, rule and file of the local cluster
	$(GO) run ./hack/cluster down

test-security: ## mTLS between ordering nodes, rogue peers, replay, socket modes
	hack/test-security.sh

fuzz: ## run each protocol framer fuzzer for FUZZTIME (default 30s)
	for f in FuzzRESPRequest FuzzRESPResponse FuzzHTTPRequest FuzzHTTPResponse; do \
		$(GO) test ./replication/framing -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} || exit 1; done

kind-e2e: ## the README's kind walkthrough for real: node image built here, dockerd, kind v0.33.0 (root; not in `make test`)
	hack/kind-e2e.sh

kind-up: ## create a kind cluster from hack/kind-config.yaml and install smr-cri (needs kind + docker)
	hack/kind-up.sh

bench: ## redis-benchmark: plain Redis pod vs a 3-replica smr group; prints bench:, bench-pipelined: (-P 16) and bench-proxy-ceiling: (a forwarding proxy with no ordering vs direct)
	hack/bench.sh

bench-profile: ## `make bench`'s pods, one round, then a CPU profile of serve under the group's SET load (SMR_BENCH_PROFILE_ROUND=get|pipelined-set|...): _out/bench-serve.pprof and its top functions
	mkdir -p _out
	SMR_BENCH_CORE=0 SMR_BENCH_ROUNDS=$${SMR_BENCH_ROUNDS:-1} SMR_BENCH_PROFILE=$(CURDIR)/_out/bench-serve.pprof hack/bench.sh
	$(GO) tool pprof -top -nodecount 40 _out/bench-serve.pprof

bench-ceiling: ## upper bounds for `make bench` SET with no ordering at all: three serial SET loops, and three pipelined ones (depth 32), each vs redis-benchmark -c 50
	SMR_INTEGRATION=1 $(GO) test -count=1 -run '^$$' -bench AppCeiling -benchtime 1x ./replication/

bench-audit: ## one ordered audit on real Redis: the copy-on-write capture's stall (the fork) and digest time vs the command digest's stall (baseline, same run); prints `audit: keys=K stall_ms=S digest_s=D ...`
	SMR_INTEGRATION=1 $(GO) test -count=1 -run '^$$' -bench RedisDigest -benchtime 3x ./replication/appstate/ | grep '^audit:'

bench-raft-tls: ## mTLS vs plaintext raft commit rate, side by side
	hack/bench-raft-tls.sh

bench-cri: ## CRI proxy overhead vs direct calls: real containerd and a fake runtime, in-process and as `serve` (root)
	SMR_INTEGRATION=1 $(GO) test -run '^$$' -bench . -benchtime 2s ./cri/

bench-raft: ## raftcore 3 processes vs a 3-member etcd cluster
	hack/bench-raft.sh

bench-idle: ## idle raft members' CPU: a Node per member (production) vs one shared Node, and ticking alone
	$(GO) test -count=1 -run '^$$' -bench IdleGroups -benchtime 2x ./raftcore/transport/

bench-netintercept: ## apply/cleanup and redirect latency (needs root)
	SMR_INTEGRATION=1 $(GO) test -run '^$$' -bench . -benchtime 300x -count 3 ./netintercept/

vet:
	$(GO) vet ./...

fmt:
	gofmt -l -w $$(git ls-files '*.go')

clean: ## remove build outputs (keeps the _cache of built Kubernetes tools)
	rm -rf $(BIN) _out

.PHONY: kubectl-smr check-monitoring

kubectl-smr: ## build bin/kubectl-smr, the kubectl plugin (put it on PATH: kubectl smr status)
	$(GO) build -o $(BIN)/kubectl-smr ./cmd/kubectl-smr

check-monitoring: ## promtool check of manifests/monitoring's rules, dashboard and metric-name checks (no daemons)
	promtool check rules manifests/monitoring/rules.yaml
	SMR_INTEGRATION=1 $(GO) test -count=1 ./internal/monitoring/

.PHONY: hostile-input fuzz-rediscmd bench-audit

hostile-input: ## hostile byte streams against a real serve with 3 Redis pods for SMR_HOSTILE_DURATION (default 3m; root)
	SMR_INTEGRATION=1 SMR_HOSTILE_DURATION=$${SMR_HOSTILE_DURATION:-3m} $(GO) test -count=1 -timeout 30m -v -run '^TestIntegrationHostileInput$$' ./internal/daemon/

fuzz-rediscmd: ## fuzz the Redis request splitter and origin rewrites for FUZZTIME (default 30s)
	$(GO) test ./replication/rediscmd -run '^$$' -fuzz '^FuzzRewrite$$' -fuzztime $${FUZZTIME:-30s}

.PHONY: bench-recovery
bench-recovery: ## state transfer to a new member vs replaying the log from the start (real redis-servers); SMR_RECOVERY_WRITES (default 200000)
	@mkdir -p _out
	SMR_INTEGRATION=1 SMR_BENCH_RECOVERY=1 $(GO) test -count=1 -timeout 180m -run '^TestBenchRecovery$$' -v ./replication/ \
		> _out/bench-recovery.log 2>&1 || (tail -n 30 _out/bench-recovery.log; exit 1)
	@grep '^recovery:' _out/bench-recovery.log
