package install

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// Where kubelet reads its container runtime endpoint, as paths on the host.
// Flags beat the KubeletConfiguration file, and among flags the ones
// expanded later on kubelet's command line win (kubeadm's drop-in runs
// `kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS
// $KUBELET_EXTRA_ARGS`), so the lists below go from low to high precedence.
var (
	// unitGlobs are kubelet's systemd unit and drop-ins (minikube puts the
	// whole command line, flag included, into 10-kubeadm.conf).
	unitGlobs = []string{
		"/lib/systemd/system/kubelet.service",
		"/usr/lib/systemd/system/kubelet.service",
		"/etc/systemd/system/kubelet.service",
		"/lib/systemd/system/kubelet.service.d/*.conf",
		"/usr/lib/systemd/system/kubelet.service.d/*.conf",
		"/etc/systemd/system/kubelet.service.d/*.conf",
	}
	// envFiles hold KUBELET_KUBEADM_ARGS (kubeadm, kind) and
	// KUBELET_EXTRA_ARGS (the user's last-resort overrides).
	envFiles = []string{
		"/var/lib/kubelet/kubeadm-flags.env",
		"/etc/sysconfig/kubelet",
		"/etc/default/kubelet",
	}
	// DefaultKubeletConfig is used when no --config flag names another file.
	DefaultKubeletConfig = "/var/lib/kubelet/config.yaml"
)

// KubeletDefaultEndpoint is what kubelet uses when neither a flag nor its
// configuration file sets containerRuntimeEndpoint.
const KubeletDefaultEndpoint = "unix:///run/containerd/containerd.sock"

// ErrNoKubelet means no kubelet configuration was found under the host root.
var ErrNoKubelet = errors.New("no kubelet configuration found")

// ErrBadKubeletConfig marks a kubelet file that cannot be parsed or rewritten.
var ErrBadKubeletConfig = errors.New("bad kubelet configuration")

const endpointFlag = "--container-runtime-endpoint"

var (
	// endpointFlagRE matches the flag with "=" or a space, the value
	// optionally quoted; group 2 is the value.
	endpointFlagRE = regexp.MustCompile(`--container-runtime-endpoint(=|[ \t]+)("?[^\s"]+"?)`)
	// configFlagRE finds kubelet's --config; "--config-dir" does not match.
	configFlagRE = regexp.MustCompile(`--config(?:=|[ \t]+)"?([^\s"-][^\s"]*)"?`)
	// configKeyRE is the top-level block-style YAML key in a KubeletConfiguration.
	configKeyRE = regexp.MustCompile(`(?m)^containerRuntimeEndpoint:[ \t]*([^#\r\n]*?)[ \t]*(#[^\r\n]*)?(\r?)$`)
)

// Location kinds.
const (
	KindUnit   = "systemd-unit"
	KindEnv    = "env-file"
	KindConfig = "kubelet-config"
)

// location is one file that sets (or, for the config file, may set)
// kubelet's runtime endpoint.
type location struct {
	Path     string // on the host, e.g. /var/lib/kubelet/config.yaml
	Kind     string
	Endpoint string // the value found there; "" if the config file lacks the key
	orig     []byte
	// rewritten is orig pointing at smr-cri (set by plan).
	rewritten []byte
}

// discovery is what kubelet's files say about the runtime endpoint.
type discovery struct {
	// Locations that set the endpoint (or the config file, which gets the
	// key added when nothing sets it), low to high precedence.
	Locations []location
	// Effective is the endpoint kubelet uses now.
	Effective string
}

// discoverKubelet reads kubelet's systemd units, flag files and
// KubeletConfiguration under root.
func discoverKubelet(root string) (discovery, error) {
	var flagLocs []location
	configPath := ""
	var looked []string
	scan := func(p, kind string) error {
		looked = append(looked, p)
		data, err := os.ReadFile(hostPath(root, p))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if m := configFlagRE.FindSubmatch(data); m != nil {
			configPath = string(m[1])
		}
		ms := endpointFlagRE.FindAllSubmatch(data, -1)
		if len(ms) == 0 {
			return nil
		}
		ep := unquote(string(ms[len(ms)-1][2]))
		flagLocs = append(flagLocs, location{Path: p, Kind: kind, Endpoint: ep, orig: data})
		return nil
	}
	for _, g := range unitGlobs {
		matches, err := globHost(root, g)
		if err != nil {
			return discovery{}, err
		}
		if len(matches) == 0 {
			looked = append(looked, g)
		}
		for _, p := range matches {
			if err := scan(p, KindUnit); err != nil {
				return discovery{}, err
			}
		}
	}
	for _, p := range envFiles {
		if err := scan(p, KindEnv); err != nil {
			return discovery{}, err
		}
	}
	if configPath == "" {
		configPath = DefaultKubeletConfig
	}
	if !path.IsAbs(configPath) {
		return discovery{}, fmt.Errorf("%w: kubelet --config %q is not an absolute path", ErrBadKubeletConfig, configPath)
	}

	var d discovery
	looked = append(looked, configPath)
	data, err := os.ReadFile(hostPath(root, configPath))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if len(flagLocs) == 0 {
			return discovery{}, fmt.Errorf("%w under host root %s: looked at %s", ErrNoKubelet, root, strings.Join(dedup(looked), ", "))
		}
	case err != nil:
		return discovery{}, fmt.Errorf("read %s: %w", configPath, err)
	default:
		ep, err := configEndpoint(configPath, data)
		if err != nil {
			return discovery{}, err
		}
		// The config file is rewritten when it sets the key, or when nothing
		// else does (then the key is added, since kubelet's default is
		// containerd's socket).
		if ep != "" || len(flagLocs) == 0 {
			d.Locations = append(d.Locations, location{Path: configPath, Kind: KindConfig, Endpoint: ep, orig: data})
		}
	}
	d.Locations = append(d.Locations, flagLocs...)
	d.Effective = KubeletDefaultEndpoint
	for _, l := range d.Locations {
		if l.Endpoint != "" {
			d.Effective = l.Endpoint
		}
	}
	return d, nil
}

// plan computes every rewrite and checks no backup is in the way, so that
// unusable files are reported before anything changes.
func (d *discovery) plan(root string) error {
	for i := range d.Locations {
		l := &d.Locations[i]
		data, err := l.rewrite(Endpoint)
		if err != nil {
			return err
		}
		l.rewritten = data
		backup := l.Path + BackupSuffix
		if _, err := os.Lstat(hostPath(root, backup)); err == nil {
			return fmt.Errorf("%w: backup %s already exists (left by an earlier install?); move it away", ErrBadInput, backup)
		}
	}
	return nil
}

// configEndpoint parses a KubeletConfiguration and returns its
// containerRuntimeEndpoint ("" when unset).
func configEndpoint(p string, data []byte) (string, error) {
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrBadKubeletConfig, p, err)
	}
	if k, _ := m["kind"].(string); k != "KubeletConfiguration" {
		return "", fmt.Errorf("%w: %s: kind is %q, want KubeletConfiguration", ErrBadKubeletConfig, p, m["kind"])
	}
	v, set := m["containerRuntimeEndpoint"]
	if !set || v == nil {
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%w: %s: containerRuntimeEndpoint is %T, want a string", ErrBadKubeletConfig, p, v)
	}
	return s, nil
}

// rewrite returns the location's bytes with the endpoint set to ep; every
// other byte is kept.
func (l location) rewrite(ep string) ([]byte, error) {
	switch l.Kind {
	case KindConfig:
		return rewriteConfig(l.Path, l.orig, ep)
	default:
		n := 0
		out := endpointFlagRE.ReplaceAllFunc(l.orig, func(m []byte) []byte {
			n++
			sub := endpointFlagRE.FindSubmatch(m)
			val := ep
			if bytes.HasPrefix(sub[2], []byte(`"`)) {
				val = `"` + ep + `"`
			}
			return []byte(endpointFlag + string(sub[1]) + val)
		})
		if n == 0 {
			return nil, fmt.Errorf("%w: %s: no %s flag to rewrite", ErrBadKubeletConfig, l.Path, endpointFlag)
		}
		return out, nil
	}
}

// rewriteConfig sets containerRuntimeEndpoint in a block-style YAML
// KubeletConfiguration, adding the key if absent, and checks by parsing
// that exactly that key changed.
func rewriteConfig(p string, orig []byte, ep string) ([]byte, error) {
	var out []byte
	locs := configKeyRE.FindAllSubmatchIndex(orig, -1)
	switch len(locs) {
	case 0:
		out = slices.Clone(orig)
		if len(out) > 0 && !bytes.HasSuffix(out, []byte("\n")) {
			out = append(out, '\n')
		}
		out = append(out, "containerRuntimeEndpoint: "+ep+"\n"...)
	case 1:
		// Replace just the value (group 1), keeping any comment and line end.
		s, e := locs[0][2], locs[0][3]
		out = append(append(slices.Clone(orig[:s]), ep...), orig[e:]...)
	default:
		return nil, fmt.Errorf("%w: %s: containerRuntimeEndpoint appears %d times", ErrBadKubeletConfig, p, len(locs))
	}
	var before, after map[string]any
	if err := yaml.Unmarshal(orig, &before); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadKubeletConfig, p, err)
	}
	if err := yaml.Unmarshal(out, &after); err != nil {
		return nil, fmt.Errorf("%w: %s: rewritten file does not parse: %w", ErrBadKubeletConfig, p, err)
	}
	before["containerRuntimeEndpoint"] = ep
	if !reflect.DeepEqual(before, after) {
		return nil, fmt.Errorf("%w: %s: cannot rewrite containerRuntimeEndpoint in place (only a top-level block-style key is supported)", ErrBadKubeletConfig, p)
	}
	return out, nil
}

func unquote(s string) string { return strings.Trim(s, `"`) }

func dedup(s []string) []string {
	var out []string
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}
