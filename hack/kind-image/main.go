// Command kind-image writes the smr-cri node image as a docker-archive tar,
// without Docker or a registry: one layer holding the (static) smr-cri
// binary at /usr/local/bin/smr-cri. hack/kind-up.sh loads it into kind with
// `kind load image-archive`; `ctr -n k8s.io images import` takes it too.
//
//	go run ./hack/kind-image --binary _out/kind/smr-cri --tag localhost/smr-cri:dev --out _out/kind/smr-cri.tar
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// BinaryPath is where the image keeps smr-cri (the DaemonSet's command).
const BinaryPath = "/usr/local/bin/smr-cri"

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "kind-image:", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("kind-image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	binary := fs.String("binary", "", "static smr-cri binary for linux (CGO_ENABLED=0)")
	tag := fs.String("tag", "localhost/smr-cri:dev", "image reference")
	arch := fs.String("arch", runtime.GOARCH, "image architecture (the kind nodes')")
	out := fs.String("out", "", "docker-archive tar to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binary == "" || *out == "" || fs.NArg() > 0 {
		return errors.New("usage: kind-image --binary FILE --out FILE.tar [--tag REF] [--arch ARCH]")
	}
	return Build(*binary, *tag, *arch, *out)
}

// Build writes the image to out.
func Build(binary, tag, arch, out string) error {
	ref, err := name.NewTag(tag, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", tag, err)
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		return fmt.Errorf("read binary: %w", err)
	}
	if !bytes.HasPrefix(bin, []byte("\x7fELF")) {
		return fmt.Errorf("%s is not an ELF binary (build it with GOOS=linux CGO_ENABLED=0)", binary)
	}
	layer, err := binaryLayer(bin)
	if err != nil {
		return err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Config: v1.Config{
			Entrypoint: []string{BinaryPath},
			Env:        []string{"PATH=/usr/local/bin"},
			Labels:     map[string]string{"org.opencontainers.image.source": "https://github.com/smr-io/smr-cri"},
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return err
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(tmp, out)
}

// binaryLayer is a reproducible layer (fixed mtimes) with the binary and its
// parent directories.
func binaryLayer(bin []byte) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/", "tmp/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: BinaryPath[1:], Mode: 0o755, Size: int64(len(bin)), ModTime: mtime}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}
