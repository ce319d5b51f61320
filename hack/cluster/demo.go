package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/test/lab/cluster"
)

// demo brings a fresh cluster up and shows the product on it: the project's manifests and
// examples/redis (3 replicas labelled smr.io/replicate=true), a write through the Service, the
// same value read from every replica's own Redis, the leader's pod killed while the Service keeps
// answering, and where the ordering traces are.
func demo(ctx context.Context, cfg cluster.Config, out io.Writer) error {
	step := func(format string, args ...any) { fmt.Fprintf(out, "\n==> "+format+"\n", args...) }
	cl, err := cluster.Up(ctx, cfg, out)
	if err != nil {
		return err
	}
	kubectl := func(args ...string) (string, error) {
		b, err := cl.Kubectl(ctx, args...)
		return strings.TrimSpace(string(b)), err
	}
	step("the project's manifests: cluster up applied namespace smr-system and its RBAC (pod discovery,\n" +
		"    events, the raft CA Secret smr-system/smr-cri-ca) from manifests/; manifests/daemonset.yaml\n" +
		"    installs smr-cri on systemd nodes, while here every node already runs `smr-cri serve` in front\n" +
		"    of containerd (its trace DaemonSet comes at the end)")
	if err := cl.ApplyInstallRBAC(ctx); err != nil {
		return err
	}
	step("applying examples/redis: a Redis StatefulSet of 3 replicas labelled smr.io/replicate=true")
	if _, err := kubectl("apply", "-k", filepath.Join(cl.RepoRoot, "examples", "redis")); err != nil {
		return err
	}
	if _, err := kubectl("rollout", "status", "statefulset/redis", "--timeout=3m"); err != nil {
		return err
	}
	pods, _ := kubectl("get", "pods", "-l", "app=redis", "-o", "wide")
	fmt.Fprintln(out, pods)

	client := cl.Nodes[0].Name
	dial, err := cl.NodeDialer(client)
	if err != nil {
		return err
	}
	ip, err := kubectl("get", "service", "redis", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		return err
	}
	svc := redis.NewClient(&redis.Options{Addr: net.JoinHostPort(ip, "6379"), Dialer: dial, MaxRetries: -1,
		DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	defer svc.Close()
	step("writing through the Service redis (%s:6379), from node %s", ip, client)
	if err := retry(ctx, time.Minute, func() error {
		return svc.Set(ctx, "greeting", "hello from smr-cri", 0).Err()
	}); err != nil {
		return fmt.Errorf("SET through the service: %w", err)
	}
	n, err := svc.Incr(ctx, "visits").Result()
	if err != nil {
		return fmt.Errorf("INCR through the service: %w", err)
	}
	fmt.Fprintf(out, "SET greeting \"hello from smr-cri\" -> OK\nINCR visits -> %d\n", n)

	step("reading every replica's own Redis (127.0.0.1:6379 inside each pod, past smr-cri)")
	if err := readReplicas(ctx, cl, out, kubectl); err != nil {
		return err
	}

	changes, err := cl.LeaderChanges("default.redis")
	if err != nil || len(changes) == 0 {
		return fmt.Errorf("no leader in the ordering traces: %v", err)
	}
	leader := changes[len(changes)-1]
	leaderPod := fmt.Sprintf("redis-%d", leader.Member-1)
	step("killing the leader's pod %s (raft member %d on %s, term %d); the Service keeps answering",
		leaderPod, leader.Member, leader.Node, leader.Term)
	if _, err := kubectl("delete", "pod", leaderPod, "--wait=false"); err != nil {
		return err
	}
	ok := 0
	for end := time.Now().Add(12 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		n, err := svc.Incr(ctx, "visits").Result()
		if err != nil {
			fmt.Fprintf(out, "%s INCR visits -> error: %v\n", time.Now().Format("15:04:05"), err)
			svc.Close()
			svc = redis.NewClient(svc.Options()) // a fresh connection, as a client would reconnect
			continue
		}
		ok++
		fmt.Fprintf(out, "%s INCR visits -> %d\n", time.Now().Format("15:04:05"), n)
	}
	if ok == 0 {
		return errors.New("the service did not answer after the leader's pod was killed")
	}
	if _, err := kubectl("rollout", "status", "statefulset/redis", "--timeout=3m"); err != nil {
		return err
	}
	if changes, err := cl.LeaderChanges("default.redis"); err == nil && len(changes) > 0 {
		now := changes[len(changes)-1]
		fmt.Fprintf(out, "leader now: raft member %d on %s (term %d)\n", now.Member, now.Node, now.Term)
	}
	step("%s is back and rebuilt its state from the log", leaderPod)
	if err := retry(ctx, time.Minute, func() error { return readReplicas(ctx, cl, io.Discard, kubectl) }); err != nil {
		return err
	}
	if err := readReplicas(ctx, cl, out, kubectl); err != nil {
		return err
	}

	step("the ordering traces through the project's DaemonSet: manifests/ with the local overlay %s\n"+
		"    (no systemd installer here; each node's trace container tails that node's smr-cri log)", cluster.TraceOverlay)
	if _, err := cl.ApplyTraceDaemonSet(ctx); err != nil {
		return err
	}
	if _, err := kubectl("rollout", "status", "-n", "smr-system", "ds/smr-cri", "--timeout=3m"); err != nil {
		return err
	}
	logsCmd := []string{"logs", "-n", "smr-system", "ds/smr-cri", "--tail=-1"}
	var commits []string
	if err := retry(ctx, time.Minute, func() error {
		all, err := kubectl(logsCmd...)
		if err != nil {
			return err
		}
		commits = commits[:0]
		for _, line := range strings.Split(all, "\n") {
			if strings.Contains(line, "smr=commit") {
				commits = append(commits, line)
			}
		}
		if len(commits) == 0 {
			return errors.New("no smr=commit lines yet in kubectl logs -n smr-system ds/smr-cri")
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "$ KUBECONFIG=%s %s logs -n smr-system ds/smr-cri | grep smr=commit | tail -5\n%s\n",
		cl.AdminKubeconfig(), cl.KubectlPath(), strings.Join(commits[max(0, len(commits)-5):], "\n"))

	step("where to look")
	logs := filepath.Join(cl.LogDir(), "smr-node*-smr-cri.log")
	fmt.Fprintf(out, `ordering traces (one line per applied request), one pod per node:
    kubectl logs -n smr-system -l app.kubernetes.io/name=smr-cri --prefix --tail=-1 | grep smr=commit
the same files on the host:
    grep -h 'smr=commit' %s | sort | tail
leader elections:
    grep -h 'became leader' %s
the cluster:
    export KUBECONFIG=%s; %s get pods -o wide
take it down:
    make cluster-down
`, logs, logs, cl.AdminKubeconfig(), cl.KubectlPath())
	return nil
}

// readReplicas prints greeting and visits as each replica's own Redis holds them; it fails if
// the replicas differ.
func readReplicas(ctx context.Context, cl *cluster.Cluster, out io.Writer, kubectl func(...string) (string, error)) error {
	list, err := kubectl("get", "pods", "-l", "app=redis", "-o", `jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName} {end}`)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, f := range strings.Fields(list) {
		pod, node, _ := strings.Cut(f, "=")
		netns, err := cl.PodNetNS(ctx, node, "default", pod)
		if err != nil {
			return err
		}
		app := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", MaxRetries: -1,
			Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return netintercept.DialInNetns(ctx, netns, network, addr)
			}})
		vals, err := app.MGet(ctx, "greeting", "visits").Result()
		app.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", pod, err)
		}
		line := fmt.Sprintf("greeting=%v visits=%v", vals[0], vals[1])
		fmt.Fprintf(out, "%s on %s: %s\n", pod, node, line)
		seen[line] = true
	}
	if len(seen) != 1 {
		return fmt.Errorf("the replicas differ: %v", seen)
	}
	return nil
}

// retry calls f every 500ms until it succeeds or timeout passes.
func retry(ctx context.Context, timeout time.Duration, f func() error) error {
	end := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(end) || ctx.Err() != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}
