package nodelab

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseLdd(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    []string
		wantErr string
	}{
		{
			name: "debian redis",
			out: "\tlinux-vdso.so.1 (0x00007ffd)\n" +
				"\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007fd5)\n" +
				"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fd5)\n" +
				"\t/lib64/ld-linux-x86-64.so.2 (0x00007fd5)\n" +
				"\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007fd5)\n",
			want: []string{"/lib/x86_64-linux-gnu/libm.so.6", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"},
		},
		{name: "static", out: "\tstatically linked\n"},
		{name: "unresolved", out: "\tlibfoo.so.1 => not found\n", wantErr: "unresolved"},
		{name: "relative", out: "\tlibfoo.so.1 (0x1)\n", wantErr: "unexpected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files, err := parseLdd(tt.out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseLdd error = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range files {
				got = append(got, f.Path)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("paths = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBuildLayer(t *testing.T) {
	l, err := buildLayer([]layerFile{
		{Path: "/bin/ash", HardLink: "/bin/busybox"},
		{Path: "/bin/sh", Link: "/bin/busybox"},
		{Path: "/bin/busybox", Content: []byte("elf"), Mode: 0o755},
		{Path: "/tmp", Dir: true, Mode: 0o1777},
	})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	got := map[string]*tar.Header{}
	var order []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
		order = append(order, h.Name)
	}
	// Parents come before children so that extraction never creates a directory implicitly,
	// and hard links after their targets.
	if want := "bin/,bin/busybox,bin/sh,tmp/,bin/ash"; strings.Join(order, ",") != want {
		t.Fatalf("entries = %v, want %s", order, want)
	}
	if h := got["bin/sh"]; h.Typeflag != tar.TypeSymlink || h.Linkname != "/bin/busybox" {
		t.Fatalf("bin/sh = %+v, want symlink to /bin/busybox", h)
	}
	if h := got["bin/ash"]; h.Typeflag != tar.TypeLink || h.Linkname != "bin/busybox" {
		t.Fatalf("bin/ash = %+v, want hard link to bin/busybox", h)
	}
	if h := got["tmp/"]; h.Mode != 0o1777 {
		t.Fatalf("tmp mode = %o, want 1777", h.Mode)
	}
}

func TestBuildLayerBadInput(t *testing.T) {
	tests := []struct {
		name  string
		files []layerFile
		want  string
	}{
		{"relative path", []layerFile{{Path: "bin/sh", Content: []byte("x")}}, "must be absolute"},
		{"duplicate", []layerFile{{Path: "/a", Content: []byte("x")}, {Path: "/a", Content: []byte("y")}}, "duplicate"},
		{"missing host file", []layerFile{{Path: "/a", HostPath: "/nonexistent/file"}}, "no such file"},
		{"hard link to nothing", []layerFile{{Path: "/a", HardLink: "/b"}}, "must come first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := buildLayer(tt.files); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("buildLayer error = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestBuildImagesUnknownRef(t *testing.T) {
	err := BuildImages(context.Background(), filepath.Join(t.TempDir(), "x.tar"), "docker.io/library/nope:1")
	if err == nil || !strings.Contains(err.Error(), "unknown image") {
		t.Fatalf("BuildImages error = %v, want unknown image", err)
	}
}

func TestRenderConfig(t *testing.T) {
	dir := t.TempDir()
	st := labState{Slot: 161, Bridge: bridgeName(161), Subnet: slotSubnet(161)}
	if err := renderConfig(dir, st); err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(filepath.Join(dir, "config.toml"))
	cni, _ := os.ReadFile(filepath.Join(dir, "cni", "10-smrlab.conflist"))
	for _, want := range []string{"version = 2", "restrict_oom_score_adj = true", `sandbox_image = "localhost/pause:smr"`, dir + "/containerd.sock", dir + "/runc"} {
		if !bytes.Contains(cfg, []byte(want)) {
			t.Errorf("config.toml lacks %q", want)
		}
	}
	for _, want := range []string{`"bridge": "smrlab161"`, `"subnet": "198.19.161.0/24"`, `"gateway": "198.19.161.1"`, `"ipMasq": false`, `"dst": "198.18.0.0/15"`} {
		if !bytes.Contains(cni, []byte(want)) {
			t.Errorf("conflist lacks %q", want)
		}
	}
	// Every lab address stays inside 198.18.0.0/15.
	bench := netip.MustParsePrefix("198.18.0.0/15")
	for n := slotFirst; n <= slotLast; n++ {
		p := netip.MustParsePrefix(slotSubnet(n))
		if !bench.Contains(p.Addr()) || len(bridgeName(n)) > 15 {
			t.Fatalf("slot %d: subnet %s or bridge %s out of bounds", n, p, bridgeName(n))
		}
	}
}

func TestGatewayOfBadInput(t *testing.T) {
	if _, err := gatewayOf("not-a-cidr"); err == nil {
		t.Fatal("gatewayOf accepted a malformed subnet")
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/a\040b/c`); got != "/a b/c" {
		t.Fatalf("unescapeMount = %q", got)
	}
}

func TestSplitRule(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{`-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ`,
			[]string{"-A", "POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "CNI-HOSTPORT-MASQ"}},
		{`-N CNI-DN-1`, []string{"-N", "CNI-DN-1"}},
		{`-A X --comment "a \"q\"" -j Y`, []string{"-A", "X", "--comment", `a "q"`, "-j", "Y"}},
		{``, nil},
	}
	for _, tt := range tests {
		if got := splitRule(tt.in); strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("splitRule(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestStartBadOptions(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		run  func() error
		want string
	}{
		{"containerd without dir", func() error {
			_, err := StartContainerd(ctx, ContainerdOptions{})
			return err
		}, "Dir is required"},
		{"kubelet without dir", func() error {
			_, err := StartKubelet(ctx, KubeletOptions{RuntimeEndpoint: "unix:///x.sock"})
			return err
		}, "Dir and RuntimeEndpoint are required"},
		{"kubelet without endpoint", func() error {
			_, err := StartKubelet(ctx, KubeletOptions{Dir: t.TempDir()})
			return err
		}, "Dir and RuntimeEndpoint are required"},
		{"kubelet with tcp endpoint", func() error {
			_, err := StartKubelet(ctx, KubeletOptions{Dir: t.TempDir(), RuntimeEndpoint: "tcp://127.0.0.1:1"})
			return err
		}, "want unix:///path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestCachedToolMissing(t *testing.T) {
	t.Setenv("SMR_CACHE", t.TempDir())
	_, err := CachedTool("kubelet")
	if !errors.Is(err, ErrMissing) {
		t.Fatalf("CachedTool error = %v, want ErrMissing", err)
	}
}
