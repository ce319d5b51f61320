package nodelab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// KVStoreImage holds the static examples/kvstore binary (HTTP on :8080) at /kvstore and nothing
// else. It is not in DefaultImages: the tests that need it build and import it themselves with
// BuildKVStoreImage and ImportImages.
const KVStoreImage = "localhost/kvstore:smr"

// kvstorePkg is the main package of the example HTTP key-value service.
const kvstorePkg = "./examples/kvstore/cmd/kvstore"

// BuildKVStoreImage writes KVStoreImage as a docker-archive tar at out (for ImportImages), built
// without a registry: the binary comes from this repository with CGO off.
func BuildKVStoreImage(ctx context.Context, out string) error {
	tmp, err := os.MkdirTemp("", "nodelab-kvstore-")
	if err != nil {
		return fmt.Errorf("nodelab: build %s: %w", KVStoreImage, err)
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "kvstore")
	if err := goBinary(ctx, kvstorePkg, bin); err != nil {
		return fmt.Errorf("nodelab: build %s: %w", KVStoreImage, err)
	}
	l, err := buildLayer([]layerFile{{Path: "/kvstore", HostPath: bin, Mode: 0o755}})
	if err != nil {
		return fmt.Errorf("nodelab: build %s layer: %w", KVStoreImage, err)
	}
	img, err := newImage(v1.Config{
		Entrypoint:   []string{"/kvstore", "--listen", ":8080"},
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
	}, l)
	if err != nil {
		return fmt.Errorf("nodelab: build %s: %w", KVStoreImage, err)
	}
	tag, err := name.NewTag(KVStoreImage, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("nodelab: image reference %q: %w", KVStoreImage, err)
	}
	if err := tarball.WriteToFile(out, tag, img); err != nil {
		return fmt.Errorf("nodelab: write %s: %w", out, err)
	}
	return nil
}
