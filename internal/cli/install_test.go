package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/install"
)

func TestParseInstall(t *testing.T) {
	o, err := parseInstall("install", installHelp, []string{"--host-root", "/host", "--timeout", "3m"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	if o.HostRoot != "/host" || o.Timeout.Minutes() != 3 || o.Binary != exe || o.Healthz != "http://127.0.0.1:10248/healthz" {
		t.Errorf("options %+v", o)
	}
	o, err = parseInstall("uninstall", uninstallHelp, []string{"--host-root", "/", "--force"}, &bytes.Buffer{})
	if err != nil || !o.Force {
		t.Errorf("uninstall --force: %+v, %v", o, err)
	}
	w := o.wire(&bytes.Buffer{})
	if h, ok := w.Exec.(install.HostRunner); !ok || h.Root != "/" {
		t.Errorf("executor %#v", w.Exec)
	}
	if n, ok := w.Node.(install.KubeletReady); !ok || n.Socket != install.SocketPath {
		t.Errorf("node checker %#v", w.Node)
	}
}

func TestInstallBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"install"}, "--host-root is required", 2},
		{[]string{"uninstall", "--host-root", "/h", "extra"}, "unexpected arguments", 2},
		{[]string{"install", "--host-root", "/h", "--force"}, "flag provided but not defined", 2},
		{[]string{"uninstall", "--host-root", "/h", "--binary", "x"}, "flag provided but not defined", 2},
		{[]string{"install", "--host-root", "/h", "--timeout", "0s"}, "--timeout must be positive", 2},
		{[]string{"install", "--host-root", filepath.Join(dir, "missing")}, "host root", 1},
		{[]string{"uninstall", "--host-root", filepath.Join(dir, "missing")}, "host root", 1},
		{[]string{"install", "--host-root", dir, "--binary", filepath.Join(dir, "none")}, "read smr-cri binary", 1},
	} {
		var out bytes.Buffer
		err := Run(context.Background(), c.args, &out, &out)
		if err == nil || !strings.Contains(err.Error(), c.want) || exitcode.Of(err) != c.code {
			t.Errorf("%q: got %v (exit %d), want %q (exit %d)", c.args, err, exitcode.Of(err), c.want, c.code)
		}
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"uninstall", "--help"}, &out, &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-force") {
		t.Errorf("uninstall --help: %v, %q", err, out.String())
	}
}

// TestManifestArgsParse: the command lines in the DaemonSets are accepted by
// these very flag parsers, so a renamed flag breaks this test, not a cluster.
func TestManifestArgsParse(t *testing.T) {
	for _, f := range []string{"../../manifests/daemonset.yaml", "../../manifests/uninstall/daemonset.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var ds appsv1.DaemonSet
		if err := yaml.Unmarshal(data, &ds); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		spec := ds.Spec.Template.Spec
		for _, c := range append(spec.InitContainers, spec.Containers...) {
			if len(c.Args) == 0 {
				t.Fatalf("%s/%s: no args", f, c.Name)
			}
			var err error
			switch c.Args[0] {
			case "install", "uninstall":
				_, err = parseInstall(c.Args[0], "", c.Args[1:], &bytes.Buffer{})
			case "trace":
				_, err = parseTrace(c.Args[1:], &bytes.Buffer{})
			default:
				err = errors.New("unknown subcommand")
			}
			if err != nil {
				t.Errorf("%s/%s: args %q: %v", f, c.Name, c.Args, err)
			}
		}
	}
}

// TestUnitExecStartParses: the command line install writes into
// smr-cri.service is accepted by serve's flag parser, with the values meant.
func TestUnitExecStartParses(t *testing.T) {
	for _, ep := range []string{"unix:///run/containerd/containerd.sock", "unix:///var/run/cri-dockerd.sock"} {
		var argv []string
		for line := range strings.Lines(string(install.UnitFile(ep))) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "ExecStart="); ok {
				argv = strings.Fields(v)
			}
		}
		if len(argv) < 2 || argv[0] != install.BinaryPath || argv[1] != "serve" {
			t.Fatalf("ExecStart %q", argv)
		}
		o, err := parseServe(argv[2:], &bytes.Buffer{})
		if err != nil {
			t.Fatalf("serve rejects the unit's flags %q: %v", argv[2:], err)
		}
		if o.RuntimeEndpoint != ep || o.Listen != install.SocketPath {
			t.Errorf("serve options %+v, want runtime %s and listen %s", o, ep, install.SocketPath)
		}
	}
}
