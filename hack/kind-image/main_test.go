package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestBuild(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "smr-cri")
	content := "\x7fELF fake static binary"
	if err := os.WriteFile(bin, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.tar")
	if err := Build(bin, "localhost/smr-cri:dev", "arm64", out); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("localhost/smr-cri:dev")
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != "arm64" || cfg.OS != "linux" || cfg.Config.Entrypoint[0] != BinaryPath {
		t.Errorf("config: %+v", cfg)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, _ := layers[0].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if "/"+h.Name == BinaryPath {
			b, _ := io.ReadAll(tr)
			found = string(b) == content && h.Mode == 0o755
		}
	}
	if !found {
		t.Errorf("layer lacks %s with mode 0755 and the binary's bytes", BinaryPath)
	}
}

func TestBuildBadInput(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--out", filepath.Join(dir, "o.tar")}, "usage"},
		{[]string{"--binary", filepath.Join(dir, "none"), "--out", filepath.Join(dir, "o.tar")}, "read binary"},
		{[]string{"--binary", script, "--out", filepath.Join(dir, "o.tar")}, "not an ELF"},
		{[]string{"--binary", script, "--out", filepath.Join(dir, "o.tar"), "--tag", "Bad Tag"}, "image reference"},
	} {
		err := run(c.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.args, err, c.want)
		}
	}
}
