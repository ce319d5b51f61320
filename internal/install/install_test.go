package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// recorder is the recording CommandRunner: it logs every command and fails the
// first run of each command listed in fail (a transient failure, so the
// rollback's own run of the same command succeeds).
type recorder struct {
	cmds []string
	fail map[string]error
}

func (r *recorder) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	c := strings.Join(append([]string{name}, args...), " ")
	r.cmds = append(r.cmds, c)
	if err := r.fail[c]; err != nil {
		delete(r.fail, c)
		return []byte("simulated output of " + c), err
	}
	return nil, nil
}

// fakeCRI answers Version unless err is set; it records the socket asked.
type fakeCRI struct {
	err    error
	socket string
}

func (f *fakeCRI) Version(_ context.Context, socket string) (string, error) {
	f.socket = socket
	return "containerd 2.1.4", f.err
}

type fakeNode struct{ err error }

func (f fakeNode) Ready(context.Context) error { return f.err }

// fixtureModes are modes git cannot keep (it stores only the executable bit).
var fixtureModes = map[string]fs.FileMode{
	"kubeadm-flags/var/lib/kubelet/kubeadm-flags.env": 0o600,
}

// newHost copies a fixture tree into a temp dir and returns the host root.
func newHost(t *testing.T, fixture string) string {
	t.Helper()
	src := filepath.Join("testdata", fixture)
	root := filepath.Join(t.TempDir(), "host")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(root, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if m, ok := fixtureModes[filepath.ToSlash(filepath.Join(fixture, rel))]; ok {
			mode = m
		}
		if err := os.WriteFile(dst, data, mode); err != nil {
			return err
		}
		return os.Chmod(dst, mode)
	})
	if err != nil {
		t.Fatalf("copy fixture %s: %v", fixture, err)
	}
	return root
}

// fakeBinary writes a stand-in for the smr-cri binary.
func fakeBinary(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "smr-cri")
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// render lists a tree (type, mode, path, content) so two trees compare as
// strings and golden files show every byte install writes.
func render(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			fmt.Fprintf(&b, "d %04o /%s\n", fi.Mode().Perm(), filepath.ToSlash(rel))
			return nil
		}
		if !fi.Mode().IsRegular() {
			fmt.Fprintf(&b, "%s /%s\n", fi.Mode(), filepath.ToSlash(rel))
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "f %04o /%s (%d bytes)\n", fi.Mode().Perm(), filepath.ToSlash(rel), len(data))
		for line := range strings.Lines(string(data)) {
			fmt.Fprintf(&b, "  | %s", line)
		}
		if len(data) > 0 && !strings.HasSuffix(string(data), "\n") {
			b.WriteString("\n  (no newline at end)\n")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("render %s: %v", root, err)
	}
	return b.String()
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", "golden", name)
	if os.Getenv("UPDATE_GOLDEN") == "1" {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read golden file (regenerate with UPDATE_GOLDEN=1): %v", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file (UPDATE_GOLDEN=1 regenerates it):\n%s", name, diff(string(want), got))
	}
}

// diff shows the first differing lines.
func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\n want %q\n got  %q", i+1, wl, gl)
		}
	}
	return "(equal)"
}

type env struct {
	root string
	exec *recorder
	cri  *fakeCRI
	node *fakeNode
	opts Options
}

func newEnv(t *testing.T, fixture string) *env {
	e := &env{root: newHost(t, fixture), exec: &recorder{fail: map[string]error{}}, cri: &fakeCRI{}, node: &fakeNode{}}
	e.opts = Options{HostRoot: e.root, Binary: fakeBinary(t, "fake smr-cri binary v1\n"), Exec: e.exec, CRI: e.cri, Node: e.node,
		Timeout: 20 * time.Millisecond, PollInterval: time.Millisecond}
	return e
}

var fixtures = []string{"kind", "kubeadm-flags", "minikube"}

// TestInstallUninstallGolden: install gives the golden tree and commands, a
// second install changes nothing, uninstall restores the original tree.
func TestInstallUninstallGolden(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx, func(t *testing.T) {
			e := newEnv(t, fx)
			orig := render(t, e.root)
			var log strings.Builder
			e.opts.Log = &log
			if err := Install(context.Background(), e.opts); err != nil {
				t.Fatalf("install: %v\n%s", err, log.String())
			}
			installed := render(t, e.root)
			checkGolden(t, fx+".install", installed+"--- commands\n"+strings.Join(e.exec.cmds, "\n")+"\n--- log\n"+log.String())
			if want := filepath.Join(e.root, SocketPath); e.cri.socket != want {
				t.Errorf("CRI Version asked on %q, want %q", e.cri.socket, want)
			}

			// Idempotent: nothing is written, only "start" (a no-op on a running unit).
			e.exec.cmds = nil
			if err := Install(context.Background(), e.opts); err != nil {
				t.Fatalf("second install: %v", err)
			}
			if got := render(t, e.root); got != installed {
				t.Errorf("second install changed the tree:\n%s", diff(installed, got))
			}
			if want := []string{"systemctl start smr-cri.service"}; !slices.Equal(e.exec.cmds, want) {
				t.Errorf("second install ran %q, want %q", e.exec.cmds, want)
			}

			e.exec.cmds = nil
			log.Reset()
			if err := Uninstall(context.Background(), e.opts); err != nil {
				t.Fatalf("uninstall: %v\n%s", err, log.String())
			}
			if got := render(t, e.root); got != orig {
				t.Errorf("uninstall did not restore the original tree:\n%s", diff(orig, got))
			}
			checkGolden(t, fx+".uninstall", "--- commands\n"+strings.Join(e.exec.cmds, "\n")+"\n--- log\n"+log.String())

			// Uninstall again: nothing installed, nothing done.
			e.exec.cmds = nil
			if err := Uninstall(context.Background(), e.opts); err != nil || len(e.exec.cmds) != 0 {
				t.Errorf("second uninstall: err %v, commands %q; want nil and none", err, e.exec.cmds)
			}
		})
	}
}

// TestInstallRollsBack fails each step in turn and checks the node is left
// byte for byte as it was, with an error naming the step.
func TestInstallRollsBack(t *testing.T) {
	boom := errors.New("boom")
	cases := []struct {
		name     string
		setup    func(e *env)
		step     string
		undoCmds []string // commands the rollback must run
	}{
		{"daemon-reload fails", func(e *env) { e.exec.fail["systemctl daemon-reload"] = boom },
			"start smr-cri.service", []string{"systemctl daemon-reload"}},
		{"smr-cri does not start", func(e *env) { e.exec.fail["systemctl restart smr-cri.service"] = boom },
			"start smr-cri.service", []string{"systemctl disable --now smr-cri.service", "systemctl daemon-reload"}},
		{"CRI Version fails", func(e *env) { e.cri.err = boom },
			"wait until smr-cri answers CRI Version on /run/smr-cri/smr-cri.sock",
			[]string{"systemctl disable --now smr-cri.service", "systemctl daemon-reload"}},
		{"kubelet restart fails", func(e *env) { e.exec.fail["systemctl restart kubelet.service"] = boom },
			"restart kubelet", []string{"systemctl disable --now smr-cri.service", "systemctl daemon-reload", "systemctl restart kubelet.service"}},
		{"node never Ready", func(e *env) { e.node.err = boom },
			"wait until the node is Ready", []string{"systemctl disable --now smr-cri.service", "systemctl daemon-reload", "systemctl restart kubelet.service"}},
	}
	for _, fx := range fixtures {
		for _, c := range cases {
			t.Run(fx+"/"+c.name, func(t *testing.T) {
				e := newEnv(t, fx)
				orig := render(t, e.root)
				c.setup(e)
				err := Install(context.Background(), e.opts)
				var se *StepError
				if !errors.As(err, &se) {
					t.Fatalf("install: got %v, want a *StepError", err)
				}
				if se.Step != c.step || se.RollbackErr != nil || !errors.Is(err, boom) {
					t.Errorf("install error %q: want step %q, cause boom and a clean rollback", err, c.step)
				}
				if !strings.Contains(err.Error(), "rolled back") {
					t.Errorf("error %q does not say it was rolled back", err)
				}
				if got := render(t, e.root); got != orig {
					t.Errorf("rollback left the tree changed:\n%s", diff(orig, got))
				}
				tail := e.exec.cmds[len(e.exec.cmds)-len(c.undoCmds):]
				if !slices.Equal(tail, c.undoCmds) {
					t.Errorf("rollback ran %q, want it to end with %q (all: %q)", tail, c.undoCmds, e.exec.cmds)
				}
			})
		}
	}
}

// TestUninstallRollsBack: an uninstall that fails half way leaves smr-cri
// installed exactly as before.
func TestUninstallRollsBack(t *testing.T) {
	boom := errors.New("boom")
	for _, c := range []struct {
		name  string
		setup func(e *env)
		step  string
	}{
		{"node never Ready", func(e *env) { e.node.err = boom }, "wait until the node is Ready"},
		{"stop fails", func(e *env) { e.exec.fail["systemctl disable --now smr-cri.service"] = boom }, "stop smr-cri.service"},
		{"kubelet restart fails", func(e *env) { e.exec.fail["systemctl restart kubelet.service"] = boom }, "restart kubelet"},
	} {
		for _, fx := range fixtures {
			t.Run(fx+"/"+c.name, func(t *testing.T) {
				e := newEnv(t, fx)
				if err := Install(context.Background(), e.opts); err != nil {
					t.Fatal(err)
				}
				installed := render(t, e.root)
				c.setup(e)
				err := Uninstall(context.Background(), e.opts)
				var se *StepError
				if !errors.As(err, &se) || se.Step != c.step || se.RollbackErr != nil {
					t.Fatalf("uninstall: got %v, want a clean rollback of step %q", err, c.step)
				}
				if got := render(t, e.root); got != installed {
					t.Errorf("rollback left the tree changed:\n%s", diff(installed, got))
				}
			})
		}
	}
}

// TestUpgrade: a new binary on an installed node replaces only the binary
// and restarts only smr-cri.
func TestUpgrade(t *testing.T) {
	e := newEnv(t, "kind")
	if err := Install(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	e.exec.cmds = nil
	e.opts.Binary = fakeBinary(t, "fake smr-cri binary v2\n")
	if err := Install(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	if want := []string{"systemctl enable smr-cri.service", "systemctl restart smr-cri.service"}; !slices.Equal(e.exec.cmds, want) {
		t.Errorf("upgrade ran %q, want %q", e.exec.cmds, want)
	}
	got, _ := os.ReadFile(filepath.Join(e.root, BinaryPath))
	if string(got) != "fake smr-cri binary v2\n" {
		t.Errorf("binary after upgrade: %q", got)
	}

	// A failed upgrade puts the old binary back and restarts smr-cri with it.
	e.exec.cmds = nil
	e.cri.err = errors.New("boom")
	e.opts.Binary = fakeBinary(t, "fake smr-cri binary v3\n")
	if err := Install(context.Background(), e.opts); err == nil {
		t.Fatal("upgrade with a failing CRI Version succeeded")
	}
	got, _ = os.ReadFile(filepath.Join(e.root, BinaryPath))
	if string(got) != "fake smr-cri binary v2\n" {
		t.Errorf("binary after failed upgrade: %q, want v2 back", got)
	}
	if last := e.exec.cmds[len(e.exec.cmds)-1]; last != "systemctl restart smr-cri.service" {
		t.Errorf("failed upgrade ended with %q, want a restart of smr-cri on the old binary", last)
	}
}

func TestBadInput(t *testing.T) {
	write := func(rel, content string) func(e *env) {
		return func(e *env) {
			p := filepath.Join(e.root, rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name    string
		fixture string
		setup   func(e *env)
		op      func(context.Context, Options) error
		wantErr error
		want    string
	}{
		{"missing host root", "kind", func(e *env) { e.opts.HostRoot = filepath.Join(e.root, "nope") }, Install, ErrBadInput, "no such file"},
		{"empty host root flag", "kind", func(e *env) { e.opts.HostRoot = "" }, Install, ErrBadInput, "--host-root is required"},
		{"host root is a file", "kind", func(e *env) { e.opts.HostRoot = filepath.Join(e.root, "var/lib/kubelet/config.yaml") }, Uninstall, ErrBadInput, "not a directory"},
		{"missing binary", "kind", func(e *env) { e.opts.Binary = filepath.Join(e.root, "nope") }, Install, ErrBadInput, "read smr-cri binary"},
		{"no kubelet config", "kind", func(e *env) {
			os.RemoveAll(filepath.Join(e.root, "etc"))
			os.RemoveAll(filepath.Join(e.root, "var/lib/kubelet"))
		}, Install, ErrNoKubelet, "looked at /lib/systemd/system/kubelet.service"},
		{"unparseable config", "kind", write("var/lib/kubelet/config.yaml", "kind: KubeletConfiguration\n  : [\n"), Install, ErrBadKubeletConfig, "/var/lib/kubelet/config.yaml"},
		{"config of another kind", "kind", write("var/lib/kubelet/config.yaml", "apiVersion: v1\nkind: ConfigMap\n"), Install, ErrBadKubeletConfig, "want KubeletConfiguration"},
		{"endpoint not a string", "kind", write("var/lib/kubelet/config.yaml", "kind: KubeletConfiguration\ncontainerRuntimeEndpoint: [a]\n"), Install, ErrBadKubeletConfig, "want a string"},
		{"flow-style config", "kind", write("var/lib/kubelet/config.yaml", "{kind: KubeletConfiguration, containerRuntimeEndpoint: unix:///run/containerd/containerd.sock}\n"), Install, ErrBadKubeletConfig, "in place"},
		{"relative --config", "minikube", write("etc/default/kubelet", "KUBELET_EXTRA_ARGS=--config kubelet.yaml\n"), Install, ErrBadKubeletConfig, "not an absolute path"},
		{"already pointing at a dead smr-cri", "kind", func(e *env) {
			write("var/lib/kubelet/kubeadm-flags.env", `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/smr-cri/smr-cri.sock"`+"\n")(e)
			e.cri.err = errors.New("connection refused")
		}, Install, ErrBadInput, "does not answer (connection refused), and there is no install state"},
		{"backup exists", "kind", write("var/lib/kubelet/config.yaml.smr-cri.orig", "old"), Install, ErrBadInput, "already exists"},
		{"corrupt state", "kind", write("var/lib/smr-cri/install.json", `{"version": 1, "bogus": true}`), Uninstall, ErrBadInput, "unknown field"},
		{"state without endpoint", "kind", write("var/lib/smr-cri/install.json", `{"version": 1}`), Install, ErrBadInput, "runtimeEndpoint"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, c.fixture)
			c.setup(e)
			before := ""
			if fi, err := os.Stat(e.root); err == nil && fi.IsDir() {
				before = render(t, e.root)
			}
			err := c.op(context.Background(), e.opts)
			if !errors.Is(err, c.wantErr) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %v containing %q", err, c.wantErr, c.want)
			}
			if len(e.exec.cmds) != 0 {
				t.Errorf("bad input still ran %q", e.exec.cmds)
			}
			if before != "" && render(t, e.root) != before {
				t.Errorf("bad input changed the tree")
			}
		})
	}
}

// TestInstallAdopts: a node whose kubelet already talks to a running
// smr-cri (set up without install) is left alone, and install succeeds.
func TestInstallAdopts(t *testing.T) {
	e := newEnv(t, "kind")
	p := filepath.Join(e.root, "var/lib/kubelet/config.yaml")
	data, _ := os.ReadFile(p)
	os.WriteFile(p, []byte(strings.Replace(string(data), "unix:///run/containerd/containerd.sock", Endpoint, 1)), 0o644)
	before := render(t, e.root)
	var log strings.Builder
	e.opts.Log = &log
	if err := Install(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	if render(t, e.root) != before || len(e.exec.cmds) != 0 || !strings.Contains(log.String(), "nothing to do") {
		t.Errorf("adopting changed something: commands %q, log %q", e.exec.cmds, log.String())
	}
	e.node.err = errors.New("NotReady")
	if err := Install(context.Background(), e.opts); err == nil || !strings.Contains(err.Error(), "not Ready") {
		t.Errorf("adopting a node that is not Ready: %v", err)
	}
}

// TestUninstallChangedFile: a kubelet file edited after install is not
// clobbered unless --force.
func TestUninstallChangedFile(t *testing.T) {
	e := newEnv(t, "kind")
	orig, _ := os.ReadFile(filepath.Join(e.root, "var/lib/kubelet/config.yaml"))
	if err := Install(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(e.root, "var/lib/kubelet/config.yaml")
	f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("maxPods: 50\n")
	f.Close()
	err := Uninstall(context.Background(), e.opts)
	if !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("uninstall of an edited file: got %v, want ErrChanged mentioning --force", err)
	}
	if err := Install(context.Background(), e.opts); !errors.Is(err, ErrChanged) {
		t.Fatalf("install over an edited file: got %v, want ErrChanged", err)
	}
	e.opts.Force = true
	if err := Uninstall(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); string(got) != string(orig) {
		t.Errorf("forced uninstall did not restore the original")
	}
}

func TestRewriteConfig(t *testing.T) {
	const ep = "unix:///run/smr-cri/smr-cri.sock"
	cases := []struct{ name, in, want string }{
		{"plain", "kind: KubeletConfiguration\ncontainerRuntimeEndpoint: unix:///run/containerd/containerd.sock\nfoo: 1\n",
			"kind: KubeletConfiguration\ncontainerRuntimeEndpoint: " + ep + "\nfoo: 1\n"},
		{"quoted with comment", "kind: KubeletConfiguration\ncontainerRuntimeEndpoint: \"unix:///x.sock\" # set by me\n",
			"kind: KubeletConfiguration\ncontainerRuntimeEndpoint: " + ep + " # set by me\n"},
		{"CRLF", "kind: KubeletConfiguration\r\ncontainerRuntimeEndpoint: unix:///x.sock\r\n",
			"kind: KubeletConfiguration\r\ncontainerRuntimeEndpoint: " + ep + "\r\n"},
		{"absent, no final newline", "kind: KubeletConfiguration",
			"kind: KubeletConfiguration\ncontainerRuntimeEndpoint: " + ep + "\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := rewriteConfig("config.yaml", []byte(c.in), ep)
			if err != nil || string(got) != c.want {
				t.Errorf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
	// Nested keys of the same name are not touched and duplicates are refused.
	if _, err := rewriteConfig("c", []byte("kind: KubeletConfiguration\ncontainerRuntimeEndpoint: a\ncontainerRuntimeEndpoint: b\n"), ep); !errors.Is(err, ErrBadKubeletConfig) {
		t.Errorf("duplicate key: got %v", err)
	}
}

func TestRewriteFlags(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`A="--x --container-runtime-endpoint=unix:///a.sock --y"`, `A="--x --container-runtime-endpoint=unix:///run/smr-cri/smr-cri.sock --y"`},
		{`ExecStart=/k --container-runtime-endpoint "unix:///a.sock"`, `ExecStart=/k --container-runtime-endpoint "unix:///run/smr-cri/smr-cri.sock"`},
		{`A=--container-runtime-endpoint /a.sock`, `A=--container-runtime-endpoint unix:///run/smr-cri/smr-cri.sock`},
	} {
		got, err := location{Path: "f", Kind: KindEnv, orig: []byte(c.in)}.rewrite(Endpoint)
		if err != nil || string(got) != c.want {
			t.Errorf("rewrite %q: got %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}
