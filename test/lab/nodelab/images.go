package nodelab

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image references the lab builds. The e2e-test-images names are the ones critest v1.37.0 uses by
// default, so it finds them already present and never pulls.
const (
	PauseImage        = "localhost/pause:smr"
	BusyboxImage      = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
	NginxImage        = "registry.k8s.io/e2e-test-images/nginx:1.14-2"
	HttpdImage        = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4"
	HostNetNginxImage = "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest"
	RedisImage        = "localhost/redis:smr"
	// ExampleRedisImage is the reference examples/redis uses; the lab gives it the same image.
	ExampleRedisImage = "docker.io/library/redis:7.2"
	// SmrCRIImage is the image manifests/daemonset.yaml runs (hack/kind-image builds the same
	// layout for kind): the static smr-cri binary at /usr/local/bin/smr-cri, nothing else.
	SmrCRIImage = "localhost/smr-cri:dev"
)

// DefaultImages is what StartContainerd imports unless told otherwise.
var DefaultImages = []string{PauseImage, BusyboxImage, NginxImage, HttpdImage, HostNetNginxImage, RedisImage}

const (
	busyboxPath  = "/bin/busybox" // from Debian's busybox-static
	redisPath    = "/usr/bin/redis-server"
	redisCLIPath = "/usr/bin/redis-cli"
	ipcsPath     = "/usr/bin/ipcs" // util-linux
	imagePATH    = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// layerFile is one entry of an image layer. Exactly one of Content, HostPath, Link is used;
// a directory has none of them and Dir set.
type layerFile struct {
	Path     string // absolute path inside the image
	Mode     int64
	Dir      bool
	Link     string // symlink target
	HardLink string // hard link to this earlier entry (absolute path inside the image)
	HostPath string // copy this file's content (symlinks followed)
	Content  []byte
}

// buildLayer renders files as an uncompressed tar, adding parent directories first.
func buildLayer(files []layerFile) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	// Reproducible: a fixed mtime, so the same inputs give the same layer digest.
	mtime := time.Unix(0, 0)
	var addDir func(p string) error
	addDir = func(p string) error {
		p = path.Clean(p)
		if p == "/" || seen[p] {
			return nil
		}
		if err := addDir(path.Dir(p)); err != nil {
			return err
		}
		seen[p] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/", Mode: 0o755, ModTime: mtime})
	}
	// Sorted by path, but hard links after everything else: their targets must already exist.
	sorted := append([]layerFile(nil), files...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if (sorted[i].HardLink == "") != (sorted[j].HardLink == "") {
			return sorted[i].HardLink == ""
		}
		return sorted[i].Path < sorted[j].Path
	})
	for _, f := range sorted {
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("layer entry %q: path must be absolute", f.Path)
		}
		if f.Dir {
			if err := addDir(path.Dir(f.Path)); err != nil {
				return nil, err
			}
			p := path.Clean(f.Path)
			if seen[p] {
				continue
			}
			seen[p] = true
			mode := f.Mode
			if mode == 0 {
				mode = 0o755
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/", Mode: mode, ModTime: mtime}); err != nil {
				return nil, err
			}
			continue
		}
		if err := addDir(path.Dir(f.Path)); err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(path.Clean(f.Path), "/")
		if seen["/"+name] {
			return nil, fmt.Errorf("layer entry %q: duplicate path", f.Path)
		}
		seen["/"+name] = true
		if f.HardLink != "" {
			target := strings.TrimPrefix(path.Clean(f.HardLink), "/")
			if !seen["/"+target] {
				return nil, fmt.Errorf("layer entry %q: hard link target %q must come first", f.Path, f.HardLink)
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o755, ModTime: mtime}); err != nil {
				return nil, err
			}
			continue
		}
		if f.Link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: f.Link, Mode: 0o777, ModTime: mtime}); err != nil {
				return nil, err
			}
			continue
		}
		content := f.Content
		if f.HostPath != "" {
			b, err := os.ReadFile(f.HostPath)
			if err != nil {
				return nil, fmt.Errorf("layer entry %q: %w", f.Path, err)
			}
			content = b
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(content)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(content); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}

// newImage assembles a linux/amd64 image from layers with the given runtime config.
func newImage(cfg v1.Config, layers ...v1.Layer) (v1.Image, error) {
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Config:       cfg,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(img, layers...)
}

// baseFiles are the directories and files every lab image gets: mount points and a minimal
// /etc so that tools inside (busybox id, whoami) and runc behave as in a distribution image.
func baseFiles() []layerFile {
	return []layerFile{
		{Path: "/tmp", Dir: true, Mode: 0o1777},
		{Path: "/var/run", Dir: true},
		{Path: "/root", Dir: true, Mode: 0o700},
		{Path: "/proc", Dir: true},
		{Path: "/sys", Dir: true},
		{Path: "/dev", Dir: true},
		{Path: "/etc/passwd", Content: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Content: []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
}

// BusyboxFiles lists /bin/busybox from the host plus one hard link per applet (`busybox
// --list-full`), like the real busybox image: a masked path (critest masks /bin/ls) then hides
// only that applet, where a symlink would mask the busybox binary behind it. The applet named
// busybox is skipped: it would replace the binary by a link to itself. util-linux's ipcs (with
// its libraries) is added because Debian's busybox lacks that applet and critest's IPC specs
// run it.
func BusyboxFiles(ctx context.Context) ([]layerFile, error) {
	if _, err := os.Stat(busyboxPath); err != nil {
		return nil, fmt.Errorf("busybox image: %w (install busybox-static): %w", err, ErrMissing)
	}
	out, err := exec.CommandContext(ctx, busyboxPath, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox image: %s --list-full: %w", busyboxPath, err)
	}
	files := []layerFile{{Path: busyboxPath, HostPath: busyboxPath, Mode: 0o755}}
	for _, line := range strings.Fields(string(out)) {
		p := "/" + strings.TrimPrefix(line, "/")
		if path.Base(p) == "busybox" {
			continue
		}
		files = append(files, layerFile{Path: p, HardLink: busyboxPath})
	}
	if _, err := os.Stat(ipcsPath); err == nil {
		libs, err := sharedLibraries(ctx, ipcsPath)
		if err != nil {
			return nil, fmt.Errorf("busybox image: %w", err)
		}
		files = append(files, layerFile{Path: ipcsPath, HostPath: ipcsPath, Mode: 0o755})
		files = append(files, libs...)
	}
	return files, nil
}

// sharedLibraries returns the files `ldd bin` names (the dynamic loader included), each under the
// path the loader looks for, with the content of the real file behind any symlink.
func sharedLibraries(ctx context.Context, bin string) ([]layerFile, error) {
	out, err := exec.CommandContext(ctx, "ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	return parseLdd(string(out))
}

// parseLdd reads ldd output lines such as "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
// and "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file and is skipped.
func parseLdd(out string) ([]layerFile, error) {
	var files []layerFile
	seen := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "linux-vdso") || strings.HasPrefix(line, "statically linked") {
			continue
		}
		var p string
		if _, after, ok := strings.Cut(line, "=>"); ok {
			f := strings.Fields(after)
			if len(f) == 0 || f[0] == "not" {
				return nil, fmt.Errorf("ldd: unresolved library in %q", line)
			}
			p = f[0]
		} else {
			p = strings.Fields(line)[0]
		}
		if !path.IsAbs(p) {
			return nil, fmt.Errorf("ldd: unexpected line %q", line)
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		files = append(files, layerFile{Path: p, HostPath: p, Mode: 0o755})
	}
	return files, nil
}

// goBinary builds a static binary of a package in this repository (CGO off, so the image needs
// no libraries).
func goBinary(ctx context.Context, pkg, out string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// imageBuilder builds images on demand, sharing the binaries and the busybox layer between them.
type imageBuilder struct {
	ctx     context.Context
	tmp     string
	busybox v1.Layer
	bins    map[string]string
}

func (b *imageBuilder) bin(pkg string) (string, error) {
	if p, ok := b.bins[pkg]; ok {
		return p, nil
	}
	p := filepath.Join(b.tmp, path.Base(pkg))
	if err := goBinary(b.ctx, pkg, p); err != nil {
		return "", err
	}
	b.bins[pkg] = p
	return p, nil
}

func (b *imageBuilder) busyboxLayer() (v1.Layer, error) {
	if b.busybox != nil {
		return b.busybox, nil
	}
	files, err := BusyboxFiles(b.ctx)
	if err != nil {
		return nil, err
	}
	l, err := buildLayer(append(baseFiles(), files...))
	if err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	b.busybox = l
	return l, nil
}

// webServer is the nginx/httpd stand-in: busybox (critest execs sh in it) plus the web server.
func (b *imageBuilder) webServer(name, port string) (v1.Image, error) {
	base, err := b.busyboxLayer()
	if err != nil {
		return nil, err
	}
	bin, err := b.bin("./test/lab/nodelab/webserver")
	if err != nil {
		return nil, err
	}
	l, err := buildLayer([]layerFile{{Path: "/usr/sbin/nginx", HostPath: bin, Mode: 0o755}})
	if err != nil {
		return nil, err
	}
	return newImage(v1.Config{
		Env:          []string{imagePATH},
		Cmd:          []string{"/usr/sbin/nginx", "--name", name, "--port", port},
		ExposedPorts: map[string]struct{}{port + "/tcp": {}},
	}, base, l)
}

func (b *imageBuilder) build(ref string) (v1.Image, error) {
	switch ref {
	case PauseImage:
		bin, err := b.bin("./test/lab/nodelab/pause")
		if err != nil {
			return nil, err
		}
		l, err := buildLayer([]layerFile{{Path: "/pause", HostPath: bin, Mode: 0o755}})
		if err != nil {
			return nil, err
		}
		return newImage(v1.Config{Entrypoint: []string{"/pause"}}, l)
	case BusyboxImage:
		base, err := b.busyboxLayer()
		if err != nil {
			return nil, err
		}
		return newImage(v1.Config{Env: []string{imagePATH}, Cmd: []string{"sh"}}, base)
	case NginxImage:
		return b.webServer("nginx", "80")
	case HttpdImage:
		return b.webServer("httpd", "80")
	case HostNetNginxImage:
		// critest's host-network specs expect this image to serve on 12003 in the host netns.
		return b.webServer("nginx", "12003")
	case RedisImage, ExampleRedisImage:
		base, err := b.busyboxLayer()
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(redisPath); err != nil {
			return nil, fmt.Errorf("redis image: %w (install redis-server): %w", err, ErrMissing)
		}
		libs, err := sharedLibraries(b.ctx, redisPath)
		if err != nil {
			return nil, fmt.Errorf("redis image: %w", err)
		}
		files := append([]layerFile{
			{Path: redisPath, HostPath: redisPath, Mode: 0o755},
			{Path: "/data", Dir: true, Mode: 0o777},
		}, libs...)
		// redis-cli (redis-tools; the same libraries) for exec probes such as examples/redis'.
		if _, err := os.Stat(redisCLIPath); err == nil {
			files = append(files, layerFile{Path: redisCLIPath, HostPath: redisCLIPath, Mode: 0o755})
		}
		l, err := buildLayer(files)
		if err != nil {
			return nil, fmt.Errorf("redis layer: %w", err)
		}
		return newImage(v1.Config{
			Env: []string{imagePATH},
			// Like the official redis image: reachable from the pod network (no protected mode).
			Cmd:          []string{redisPath, "--protected-mode", "no", "--save", "", "--appendonly", "no"},
			WorkingDir:   "/data",
			ExposedPorts: map[string]struct{}{"6379/tcp": {}},
		}, base, l)
	case SmrCRIImage:
		bin, err := b.bin("./cmd/smr-cri") // CGO_ENABLED=0: static
		if err != nil {
			return nil, err
		}
		l, err := buildLayer([]layerFile{{Path: "/usr/local/bin/smr-cri", HostPath: bin, Mode: 0o755}})
		if err != nil {
			return nil, err
		}
		return newImage(v1.Config{Entrypoint: []string{"/usr/local/bin/smr-cri"}, Env: []string{"PATH=/usr/local/bin"}}, l)
	default:
		return nil, fmt.Errorf("nodelab: unknown image %q (known: %s)", ref, strings.Join(DefaultImages, ", "))
	}
}

// BuildImages writes the named images (DefaultImages when refs is empty) into one docker-archive
// tar at out, ready for `ctr images import`. Nothing is pulled: the binaries come from this
// repository (built with the go tool) and from the host's Debian packages.
func BuildImages(ctx context.Context, out string, refs ...string) error {
	if len(refs) == 0 {
		refs = DefaultImages
	}
	tmp, err := os.MkdirTemp("", "nodelab-images-")
	if err != nil {
		return fmt.Errorf("nodelab: build images: %w", err)
	}
	defer os.RemoveAll(tmp)
	b := &imageBuilder{ctx: ctx, tmp: tmp, bins: map[string]string{}}
	imgs := map[name.Reference]v1.Image{}
	for _, ref := range refs {
		tag, err := name.NewTag(ref, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("nodelab: image reference %q: %w", ref, err)
		}
		img, err := b.build(ref)
		if err != nil {
			return fmt.Errorf("nodelab: build image %s: %w", ref, err)
		}
		imgs[tag] = img
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("nodelab: build images: %w", err)
	}
	tmpOut := out + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmpOut, imgs); err != nil {
		return fmt.Errorf("nodelab: write %s: %w", out, err)
	}
	if err := os.Rename(tmpOut, out); err != nil {
		return fmt.Errorf("nodelab: build images: %w", err)
	}
	return nil
}
