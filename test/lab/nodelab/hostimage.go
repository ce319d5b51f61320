package nodelab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// HostImage is an image made of files already on this machine: binaries built from Go modules
// elsewhere (the kind node image's control plane, hack/kind-node) or from Debian's packages. Every
// ELF file gets the shared libraries `ldd` names, so unmodified Debian programs run in it.
type HostImage struct {
	Ref   string
	Files map[string]string // path in the image -> file on the host
	// HostDirs are copied whole to the same path (dlopen'ed modules that ldd cannot see, such as
	// iptables' /usr/lib/x86_64-linux-gnu/xtables).
	HostDirs   []string
	Links      map[string]string // symlink in the image -> its target
	Entrypoint []string
	Cmd        []string
}

// WriteHostImages writes imgs into one docker-archive tar at out (`ctr images import` takes it).
func WriteHostImages(ctx context.Context, out string, imgs []HostImage) error {
	refs := map[name.Reference]v1.Image{}
	for _, hi := range imgs {
		tag, err := name.NewTag(hi.Ref, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("nodelab: image reference %q: %w", hi.Ref, err)
		}
		img, err := hi.build(ctx)
		if err != nil {
			return fmt.Errorf("nodelab: build image %s: %w", hi.Ref, err)
		}
		refs[tag] = img
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("nodelab: write %s: %w", out, err)
	}
	tmp := out + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		return fmt.Errorf("nodelab: write %s: %w", out, err)
	}
	return os.Rename(tmp, out)
}

func (hi HostImage) build(ctx context.Context) (v1.Image, error) {
	files := append([]layerFile(nil), baseFiles()...)
	have := map[string]bool{}
	for _, f := range files {
		have[f.Path] = true
	}
	add := func(imgPath, hostPath string) error {
		if have[imgPath] {
			return nil
		}
		info, err := os.Stat(hostPath)
		if err != nil {
			return err
		}
		have[imgPath] = true
		files = append(files, layerFile{Path: imgPath, HostPath: hostPath, Mode: int64(info.Mode().Perm())})
		libs, err := librariesIfDynamic(ctx, hostPath)
		if err != nil {
			return err
		}
		for _, l := range libs {
			if !have[l.Path] {
				have[l.Path] = true
				files = append(files, l)
			}
		}
		return nil
	}
	paths := make([]string, 0, len(hi.Files))
	for p := range hi.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		if err := add(p, hi.Files[p]); err != nil {
			return nil, err
		}
	}
	for _, dir := range hi.HostDirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !d.Type().IsRegular() && d.Type()&fs.ModeSymlink == 0 {
				return err
			}
			return add(p, p)
		})
		if err != nil {
			return nil, fmt.Errorf("copy %s: %w", dir, err)
		}
	}
	for link, target := range hi.Links {
		files = append(files, layerFile{Path: link, Link: target})
	}
	l, err := buildLayer(files)
	if err != nil {
		return nil, err
	}
	return newImage(v1.Config{Env: []string{imagePATH}, Entrypoint: hi.Entrypoint, Cmd: hi.Cmd}, l)
}

// librariesIfDynamic is sharedLibraries for an ELF file that has any, and nothing for a static
// binary or a non-ELF file.
func librariesIfDynamic(ctx context.Context, p string) ([]layerFile, error) {
	head := make([]byte, 4)
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	_, err = f.Read(head)
	f.Close()
	if err != nil || string(head) != "\x7fELF" {
		return nil, nil
	}
	out, err := exec.CommandContext(ctx, "ldd", p).CombinedOutput()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && strings.Contains(string(out), "not a dynamic executable") {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", p, err, out)
	}
	return parseLdd(string(out))
}
