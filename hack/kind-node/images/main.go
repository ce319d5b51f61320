// Command images writes every image a kind cluster of the node image needs, named as kubeadm
// v1.37.2 and the node image's pod network expect, into docker-archive tars that
// hack/kind-node/build.sh imports into the node's containerd: nothing can be pulled on this
// machine. The binaries come from Go modules (hack/cluster/build-kube.sh, hack/kind-node/tools)
// and the iptables tools kube-proxy runs from Debian.
//
//	go run ./hack/kind-node/images --kube-dir _cache/kube-v1.37.2 --bin-dir _cache/kind-node/bin --out DIR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// Refs kubeadm v1.37.2 uses (`kubeadm config images list --kubernetes-version v1.37.2`).
const (
	kubeVersion  = "v1.37.2"
	PauseRef     = "registry.k8s.io/pause:3.10.2"
	EtcdRef      = "registry.k8s.io/etcd:3.7.0-0"
	CoreDNSRef   = "registry.k8s.io/coredns/coredns:v1.14.6"
	PodnetRef    = "localhost/kind-podnet:dev" // default-cni.yaml's image
	registryKube = "registry.k8s.io/"
)

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kind-node images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	kubeDir := fs.String("kube-dir", "", "kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy "+kubeVersion)
	binDir := fs.String("bin-dir", "", "etcd, coredns, podnet, pause")
	out := fs.String("out", "", "directory for the tars")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kubeDir == "" || *binDir == "" || *out == "" || fs.NArg() > 0 {
		return errors.New("usage: images --kube-dir DIR --bin-dir DIR --out DIR")
	}
	imgs, err := Images(*kubeDir, *binDir)
	if err != nil {
		return err
	}
	if err := nodelab.WriteHostImages(ctx, filepath.Join(*out, "control-plane.tar"), imgs); err != nil {
		return err
	}
	// The example's Redis (also the `kubectl run ... redis-cli` client of the walkthrough).
	return nodelab.BuildImages(ctx, filepath.Join(*out, "redis.tar"), nodelab.ExampleRedisImage)
}

// iptables tools kube-proxy (iptables mode, kind's default) runs: Debian's nf_tables variant,
// as on the node.
var iptablesLinks = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

// Images lists the images; every binary must exist.
func Images(kubeDir, binDir string) ([]nodelab.HostImage, error) {
	bin := func(dir, name string) (string, error) {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("missing binary: %w", err)
		}
		return p, nil
	}
	var imgs []nodelab.HostImage
	for _, c := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		p, err := bin(kubeDir, c)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, nodelab.HostImage{Ref: registryKube + c + ":" + kubeVersion, Files: map[string]string{"/usr/local/bin/" + c: p}})
	}
	proxy, err := bin(kubeDir, "kube-proxy")
	if err != nil {
		return nil, err
	}
	links := map[string]string{}
	for _, l := range iptablesLinks {
		links["/usr/sbin/"+l] = "xtables-nft-multi"
	}
	imgs = append(imgs, nodelab.HostImage{
		Ref:      registryKube + "kube-proxy:" + kubeVersion,
		Files:    map[string]string{"/usr/local/bin/kube-proxy": proxy, "/usr/sbin/xtables-nft-multi": "/usr/sbin/xtables-nft-multi"},
		HostDirs: []string{"/usr/lib/x86_64-linux-gnu/xtables"},
		Links:    links,
	})
	for _, s := range []struct{ ref, name, path string }{
		{EtcdRef, "etcd", "/usr/local/bin/etcd"},
		{CoreDNSRef, "coredns", "/coredns"}, // kubeadm's Deployment runs /coredns (the image's entrypoint)
		{PodnetRef, "podnet", "/usr/local/bin/podnet"},
		{PauseRef, "pause", "/pause"},
	} {
		p, err := bin(binDir, s.name)
		if err != nil {
			return nil, err
		}
		img := nodelab.HostImage{Ref: s.ref, Files: map[string]string{s.path: p}}
		if s.ref == CoreDNSRef || s.ref == PauseRef {
			img.Entrypoint = []string{s.path}
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}
