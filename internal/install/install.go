// Package install puts smr-cri on a Kubernetes node and takes it off again:
// it copies the binary, writes and starts a systemd unit running `smr-cri
// serve` in front of the runtime kubelet uses now, waits until it answers
// CRI Version, points kubelet at smr-cri's socket (wherever that node's
// kubelet reads its runtime endpoint), restarts kubelet and waits for the
// node to be Ready. Every file operation is relative to a host root (the
// DaemonSet mounts the node's / at /host), and every command goes through
// a CommandRunner, so tests run on fixture trees with a recording runner.
//
// A failed step undoes every completed step; uninstall restores kubelet's
// original files byte for byte.
package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Paths on the host and names.
const (
	BinaryPath  = "/usr/local/bin/smr-cri"
	UnitPath    = "/etc/systemd/system/smr-cri.service"
	UnitName    = "smr-cri.service"
	KubeletUnit = "kubelet.service"
	SocketPath  = "/run/smr-cri/smr-cri.sock"
	Endpoint    = "unix://" + SocketPath
	LogDir      = "/var/log/smr-cri"
	LogFile     = LogDir + "/smr-cri.log"
	StateDir    = "/var/lib/smr-cri"
	StatePath   = StateDir + "/install.json"
	// CredentialsDir holds the ServiceAccount token, CA and kubeconfig the
	// DaemonSet's trace container keeps for smr-cri serve.
	CredentialsDir = StateDir + "/kube"
	// KubeconfigPath is the kubeconfig in CredentialsDir; the unit passes it
	// to serve, which reads it once it exists (smr.io/membership: kubernetes).
	KubeconfigPath = CredentialsDir + "/kubeconfig"
	BackupSuffix   = ".smr-cri.orig"
)

// CommandRunner runs a command on the host (systemctl); it returns the combined
// output, and an error that includes it when the command fails.
type CommandRunner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// CRIChecker asks a CRI endpoint (a unix socket path as seen by this
// process) for its Version.
type CRIChecker interface {
	Version(ctx context.Context, socket string) (string, error)
}

// NodeChecker reports whether the node is Ready (nil) after kubelet restarted.
type NodeChecker interface {
	Ready(ctx context.Context) error
}

// Options configure Install and Uninstall.
type Options struct {
	// HostRoot is where the node's / is mounted ("/" on the node itself).
	HostRoot string
	// Binary is the smr-cri binary to copy (install only).
	Binary string
	Exec   CommandRunner
	CRI    CRIChecker
	Node   NodeChecker
	// Log receives one line per step (nil: discarded).
	Log io.Writer
	// Timeout bounds each wait (CRI Version, node Ready); default 2m.
	Timeout time.Duration
	// PollInterval between checks while waiting; default 1s.
	PollInterval time.Duration
	// Force lets uninstall restore kubelet's original files even if they
	// changed since install (the later change is lost).
	Force bool
}

// State is written to StatePath on install and read by uninstall.
type State struct {
	Version int `json:"version"`
	// RuntimeEndpoint is the endpoint kubelet used before; smr-cri forwards to it.
	RuntimeEndpoint string `json:"runtimeEndpoint"`
	// Files are the kubelet files rewritten to point at smr-cri.
	Files []StateFile `json:"files"`
	// CreatedDirs are directories install created (removed by uninstall).
	CreatedDirs []string `json:"createdDirs,omitempty"`
}

// StateFile is one rewritten kubelet file.
type StateFile struct {
	Path   string `json:"path"`
	Kind   string `json:"kind"`
	Backup string `json:"backup"`
	// SHA256 of the rewritten content, to notice later edits by others.
	SHA256 string `json:"sha256"`
}

// ErrBadInput marks an unusable host root, binary or option.
var ErrBadInput = errors.New("bad input")

// ErrChanged means a kubelet file changed since install.
var ErrChanged = errors.New("kubelet file changed since install")

// UnitFile renders the systemd unit running smr-cri in front of runtimeEndpoint.
// Its output goes to LogFile, which `smr-cri trace --follow` tails.
// serve gets --kubeconfig KubeconfigPath: the DaemonSet's trace container
// writes that file after this unit started, and serve reads it at the first
// attach that needs the API server.
func UnitFile(runtimeEndpoint string) []byte {
	return []byte(`# Installed by smr-cri install; removed by smr-cri uninstall.
[Unit]
Description=smr-cri: CRI proxy for transparent state machine replication
Documentation=https://github.com/smr-io/smr-cri
After=network-online.target containerd.service cri-docker.service
Before=kubelet.service

[Service]
ExecStart=` + BinaryPath + ` serve --runtime-endpoint ` + runtimeEndpoint + ` --listen ` + SocketPath + ` --kubeconfig ` + KubeconfigPath + `
Restart=always
RestartSec=2
StandardOutput=append:` + LogFile + `
StandardError=append:` + LogFile + `

[Install]
WantedBy=multi-user.target
`)
}

func (o *Options) check(op string) error {
	if o.HostRoot == "" {
		return fmt.Errorf("%w: %s: --host-root is required", ErrBadInput, op)
	}
	fi, err := os.Stat(o.HostRoot)
	if err != nil {
		return fmt.Errorf("%w: %s: host root: %w", ErrBadInput, op, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s: host root %s is not a directory", ErrBadInput, op, o.HostRoot)
	}
	if o.Exec == nil || o.CRI == nil || o.Node == nil {
		return fmt.Errorf("%w: %s: Exec, CRI and Node checkers are required", ErrBadInput, op)
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	return nil
}

func (o *Options) path(p string) string { return hostPath(o.HostRoot, p) }

// hostRel turns a path under the host root back into a host path.
func (o *Options) hostRel(p string) string {
	rel, err := filepath.Rel(o.HostRoot, p)
	if err != nil {
		return p
	}
	return "/" + filepath.ToSlash(rel)
}

func (o *Options) systemctl(ctx context.Context, args ...string) error {
	out, err := o.Exec.Run(ctx, "systemctl", args...)
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (o *Options) waitCRI(ctx context.Context) error {
	return waitFor(ctx, o.Timeout, o.PollInterval, func(ctx context.Context) error {
		_, err := o.CRI.Version(ctx, o.path(SocketPath))
		return err
	})
}

func (o *Options) waitReady(ctx context.Context) error {
	return waitFor(ctx, o.Timeout, o.PollInterval, o.Node.Ready)
}

func (o *Options) readState() (*State, error) {
	data, err := os.ReadFile(o.path(StatePath))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read install state: %w", err)
	}
	var s State
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: install state %s: %w", ErrBadInput, StatePath, err)
	}
	if s.Version != 1 || s.RuntimeEndpoint == "" {
		return nil, fmt.Errorf("%w: install state %s: want version 1 and a runtimeEndpoint", ErrBadInput, StatePath)
	}
	return &s, nil
}

// checkUnchanged verifies every rewritten kubelet file still holds what
// install wrote.
func (o *Options) checkUnchanged(s *State) error {
	for _, f := range s.Files {
		data, err := os.ReadFile(o.path(f.Path))
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrChanged, f.Path, err)
		}
		if sum(data) != f.SHA256 {
			return fmt.Errorf("%w: %s no longer holds what install wrote (kubeadm upgrade or a manual edit?); its original is in %s", ErrChanged, f.Path, f.Backup)
		}
	}
	return nil
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// restarts tracks which services a run restarted, so a rollback can restart
// them again once their files are back.
type restarts struct {
	o              *Options
	reload         bool // a unit file changed: daemon-reload
	kubeletUnits   bool // one of kubelet's unit files changed
	smr, smrExists bool
	kubelet        bool
}

// kubeletRestartStep restarts kubelet (after a daemon-reload if one of its
// unit files changed). It has no undo of its own: after restarts kubelet
// again once the undos restored its files.
func (r *restarts) kubeletRestartStep() step {
	return step{
		name: "restart kubelet",
		do: func(ctx context.Context) error {
			r.kubelet = true
			if r.kubeletUnits {
				if err := r.o.systemctl(ctx, "daemon-reload"); err != nil {
					return err
				}
			}
			return r.o.systemctl(ctx, "restart", KubeletUnit)
		},
	}
}

func (r *restarts) after(ctx context.Context) error {
	var errs []error
	if r.reload || r.kubeletUnits {
		errs = append(errs, r.o.systemctl(ctx, "daemon-reload"))
	}
	if r.smr && r.smrExists {
		errs = append(errs, r.o.systemctl(ctx, "restart", UnitName))
	}
	if r.kubelet {
		errs = append(errs, r.o.systemctl(ctx, "restart", KubeletUnit))
	}
	return errors.Join(errs...)
}

// writeStep replaces a host file with data (mode given) and undoes that
// byte for byte. It reports through changed whether anything was written.
func (o *Options) writeStep(name, p string, data []byte, mode fs.FileMode, changed *bool, created *[]string) step {
	var prev fileState
	var dirs []string
	return step{
		name: name,
		do: func(context.Context) error {
			var err error
			if prev, err = readState(o.path(p)); err != nil {
				return err
			}
			if prev.exists && bytes.Equal(prev.data, data) && prev.mode == mode {
				return nil
			}
			*changed = true
			if dirs, err = mkdirAll(filepath.Dir(o.path(p)), 0o755); err != nil {
				return err
			}
			*created = append(*created, dirs...)
			return writeFile(o.path(p), data, mode, -1, -1)
		},
		undo: func(context.Context) error {
			if !*changed {
				return nil
			}
			return errors.Join(prev.restore(o.path(p)), removeDirs(dirs))
		},
	}
}

// Install installs smr-cri on the node (see the package comment). Running it
// again on an installed node changes nothing (it only re-checks health); with
// a new binary it replaces the binary and restarts smr-cri only.
func Install(ctx context.Context, o Options) error {
	if err := o.check("install"); err != nil {
		return err
	}
	if o.Binary == "" {
		return fmt.Errorf("%w: install: no smr-cri binary given", ErrBadInput)
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return fmt.Errorf("%w: install: read smr-cri binary: %w", ErrBadInput, err)
	}
	state, err := o.readState()
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	var disc discovery
	if state != nil {
		// Installed before: kubelet already points at smr-cri.
		if err := o.checkUnchanged(state); err != nil {
			return fmt.Errorf("install: %w; run `smr-cri uninstall --force` first", err)
		}
	} else {
		if disc, err = discoverKubelet(o.HostRoot); err != nil {
			return fmt.Errorf("install: find kubelet's runtime endpoint: %w", err)
		}
		if err := disc.plan(o.HostRoot); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		if disc.Effective == Endpoint || disc.Effective == SocketPath {
			// Put in front of kubelet by other means (a node image, by hand):
			// nothing to do if it serves; without install state the runtime
			// behind it is unknown, so it cannot be installed over.
			if _, err := o.CRI.Version(ctx, o.path(SocketPath)); err != nil {
				return fmt.Errorf("%w: install: kubelet already uses %s, which does not answer (%w), and there is no install state at %s, so the runtime to forward to is unknown; restore kubelet's runtime endpoint by hand",
					ErrBadInput, disc.Effective, err, StatePath)
			}
			if err := o.waitReady(ctx); err != nil {
				return fmt.Errorf("install: kubelet already uses a running smr-cri, but the node is not Ready: %w", err)
			}
			fmt.Fprintf(o.Log, "install: kubelet already talks to a running smr-cri at %s, set up without smr-cri install; nothing to do\n", disc.Effective)
			return nil
		}
		state = &State{Version: 1, RuntimeEndpoint: disc.Effective}
	}
	fmt.Fprintf(o.Log, "install: kubelet's runtime is %s; smr-cri will listen on %s\n", state.RuntimeEndpoint, Endpoint)
	// Not fatal when missing or unreadable: serve then reaches the API server
	// through the kubernetes Service, once kube-proxy runs on the node.
	apiServer, err := kubeletAPIServer(o.HostRoot)
	switch {
	case err != nil:
		fmt.Fprintf(o.Log, "install: %v; smr-cri serve reaches the API server through the kubernetes Service\n", err)
	case apiServer == "":
		fmt.Fprintln(o.Log, "install: kubelet has no kubeconfig; smr-cri serve reaches the API server through the kubernetes Service")
	}

	_, unitErr := os.Stat(o.path(UnitPath))
	rs := &restarts{o: &o, smrExists: unitErr == nil}
	var binChanged, unitChanged bool
	var created []string
	var logDirs []string
	steps := []step{
		o.writeStep("copy the binary to "+BinaryPath, BinaryPath, bin, 0o755, &binChanged, &created),
		{
			name: "create the log directory " + LogDir,
			do: func(context.Context) (err error) {
				logDirs, err = mkdirAll(o.path(LogDir), 0o750)
				created = append(created, logDirs...)
				return err
			},
			undo: func(context.Context) error {
				if len(logDirs) == 0 {
					return nil
				}
				// smr-cri may have logged already: the directory goes with its content.
				return errors.Join(os.RemoveAll(o.path(LogDir)), removeDirs(logDirs))
			},
		},
		o.writeStep("write the systemd unit "+UnitPath, UnitPath, UnitFile(state.RuntimeEndpoint), 0o644, &unitChanged, &created),
		{
			name: "start " + UnitName,
			do: func(ctx context.Context) error {
				if !binChanged && !unitChanged {
					// Nothing new: make sure it runs (a no-op when it does).
					return o.systemctl(ctx, "start", UnitName)
				}
				rs.smr = true
				if unitChanged {
					rs.reload = true
					if err := o.systemctl(ctx, "daemon-reload"); err != nil {
						return err
					}
				}
				if err := o.systemctl(ctx, "enable", UnitName); err != nil {
					return err
				}
				return o.systemctl(ctx, "restart", UnitName)
			},
			undo: func(ctx context.Context) error {
				if rs.smrExists || !rs.smr {
					return nil // restarted with the old files by rs.after
				}
				if err := o.systemctl(ctx, "disable", "--now", UnitName); err != nil {
					return err
				}
				// serve's socket directory, empty once it stopped; best effort.
				_ = os.Remove(o.path(filepath.Dir(SocketPath)))
				return nil
			},
		},
		{
			name: "wait until smr-cri answers CRI Version on " + SocketPath,
			do:   o.waitCRI,
		},
	}
	if apiServer != "" {
		// The trace container names it in serve's kubeconfig (see APIServerFile).
		var apiChanged bool
		steps = append(steps, o.writeStep("record kubelet's API server "+apiServer+" in "+APIServerFile,
			APIServerFile, []byte(apiServer+"\n"), 0o644, &apiChanged, &created))
	}
	if len(disc.Locations) > 0 {
		steps = append(steps, o.pointKubeletStep(disc, state, &created, rs), rs.kubeletRestartStep())
	}
	steps = append(steps, step{name: "wait until the node is Ready", do: o.waitReady})
	if err := runSteps(ctx, "install", o.Log, steps, rs.after); err != nil {
		return err
	}
	if len(disc.Locations) == 0 && !binChanged && !unitChanged {
		fmt.Fprintln(o.Log, "install: already installed, nothing changed")
	} else {
		fmt.Fprintln(o.Log, "install: done; kubelet talks to", Endpoint)
	}
	return nil
}

// pointKubeletStep backs up and rewrites every kubelet file that sets the
// runtime endpoint, then writes the install state.
func (o *Options) pointKubeletStep(disc discovery, state *State, created *[]string, rs *restarts) step {
	var written []string // host paths this step wrote, for the undo
	var stateDirs []string
	origs := map[string]fileState{}
	return step{
		name: "point kubelet at " + Endpoint,
		do: func(context.Context) error {
			for _, l := range disc.Locations {
				orig, err := readState(o.path(l.Path))
				if err != nil {
					return err
				}
				origs[l.Path] = orig
				data, backup := l.rewritten, l.Path+BackupSuffix
				written = append(written, backup)
				if err := writeFile(o.path(backup), orig.data, orig.mode, orig.uid, orig.gid); err != nil {
					return fmt.Errorf("back up %s: %w", l.Path, err)
				}
				written = append(written, l.Path)
				if err := writeFile(o.path(l.Path), data, orig.mode, orig.uid, orig.gid); err != nil {
					return fmt.Errorf("rewrite %s: %w", l.Path, err)
				}
				if l.Kind == KindUnit {
					rs.kubeletUnits = true
				}
				state.Files = append(state.Files, StateFile{Path: l.Path, Kind: l.Kind, Backup: backup, SHA256: sum(data)})
			}
			var err error
			if stateDirs, err = mkdirAll(o.path(StateDir), 0o755); err != nil {
				return err
			}
			for _, d := range append(*created, stateDirs...) {
				state.CreatedDirs = append(state.CreatedDirs, o.hostRel(d))
			}
			js, err := json.MarshalIndent(state, "", "  ")
			if err != nil {
				return err
			}
			written = append(written, StatePath)
			return writeFile(o.path(StatePath), append(js, '\n'), 0o644, -1, -1)
		},
		undo: func(context.Context) error {
			var errs []error
			for i := len(written) - 1; i >= 0; i-- {
				p := written[i]
				if orig, ok := origs[p]; ok {
					errs = append(errs, orig.restore(o.path(p)))
				} else if err := os.Remove(o.path(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, err)
				}
			}
			errs = append(errs, removeDirs(stateDirs))
			return errors.Join(errs...)
		},
	}
}

// Uninstall points kubelet back at its original runtime (restoring its files
// byte for byte), restarts it, waits for Ready, then stops and removes
// smr-cri. On a node without smr-cri it does nothing.
func Uninstall(ctx context.Context, o Options) error {
	if err := o.check("uninstall"); err != nil {
		return err
	}
	state, err := o.readState()
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	_, unitErr := os.Stat(o.path(UnitPath))
	_, binErr := os.Stat(o.path(BinaryPath))
	if state == nil && unitErr != nil && binErr != nil {
		fmt.Fprintln(o.Log, "uninstall: smr-cri is not installed, nothing to do")
		return nil
	}
	if state == nil {
		state = &State{}
		fmt.Fprintf(o.Log, "uninstall: no install state at %s: kubelet's files are left alone, removing smr-cri itself\n", StatePath)
	}
	if !o.Force {
		if err := o.checkUnchanged(state); err != nil {
			return fmt.Errorf("uninstall: %w; rerun with --force to restore the original anyway", err)
		}
	}
	rs := &restarts{o: &o, smrExists: unitErr == nil}
	var steps []step
	if len(state.Files) > 0 {
		current := map[string]fileState{}
		steps = append(steps, step{
			name: "restore kubelet's original files",
			do: func(context.Context) error {
				for _, f := range state.Files {
					cur, err := readState(o.path(f.Path))
					if err != nil {
						return err
					}
					orig, err := readState(o.path(f.Backup))
					if err != nil {
						return err
					}
					if !orig.exists {
						return fmt.Errorf("%w: backup %s of %s is missing", ErrBadInput, f.Backup, f.Path)
					}
					current[f.Path] = cur
					if err := orig.restore(o.path(f.Path)); err != nil {
						return fmt.Errorf("restore %s: %w", f.Path, err)
					}
					if f.Kind == KindUnit {
						rs.kubeletUnits = true
					}
				}
				return nil
			},
			undo: func(context.Context) error {
				var errs []error
				for p, cur := range current {
					errs = append(errs, cur.restore(o.path(p)))
				}
				return errors.Join(errs...)
			},
		}, rs.kubeletRestartStep(), step{name: "wait until the node is Ready", do: o.waitReady})
	}
	var unit, bin fileState
	steps = append(steps,
		step{
			name: "stop " + UnitName,
			do: func(ctx context.Context) error {
				if !rs.smrExists {
					return nil
				}
				return o.systemctl(ctx, "disable", "--now", UnitName)
			},
			undo: func(ctx context.Context) error {
				if !rs.smrExists {
					return nil
				}
				return o.systemctl(ctx, "enable", "--now", UnitName)
			},
		},
		step{
			name: "remove the systemd unit " + UnitPath,
			do: func(ctx context.Context) (err error) {
				if unit, err = readState(o.path(UnitPath)); err != nil || !unit.exists {
					return err
				}
				if err := os.Remove(o.path(UnitPath)); err != nil {
					return err
				}
				rs.reload = true
				return o.systemctl(ctx, "daemon-reload")
			},
			undo: func(context.Context) error { return unit.restore(o.path(UnitPath)) },
		},
		step{
			name: "remove the binary " + BinaryPath,
			do: func(context.Context) (err error) {
				if bin, err = readState(o.path(BinaryPath)); err != nil || !bin.exists {
					return err
				}
				return os.Remove(o.path(BinaryPath))
			},
			undo: func(context.Context) error { return bin.restore(o.path(BinaryPath)) },
		},
		step{
			name: "remove backups, logs and install state",
			do: func(context.Context) error {
				var errs []error
				for _, f := range state.Files {
					errs = append(errs, os.Remove(o.path(f.Backup)))
				}
				errs = append(errs, os.RemoveAll(o.path(LogDir)), os.RemoveAll(o.path(CredentialsDir)))
				// serve's socket directory, once serve has removed its socket;
				// best effort (it may be in use as a hostPath volume).
				_ = os.Remove(o.path(filepath.Dir(SocketPath)))
				if err := os.Remove(o.path(StatePath)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, err)
				}
				// Directories install created, deepest first (they are empty now).
				var dirs []string
				for _, d := range state.CreatedDirs {
					dirs = append(dirs, o.path(d))
				}
				slices.SortFunc(dirs, func(a, b string) int { return len(b) - len(a) })
				errs = append(errs, removeDirs(dirs))
				return errors.Join(errs...)
			},
		},
	)
	if err := runSteps(ctx, "uninstall", o.Log, steps, rs.after); err != nil {
		return err
	}
	fmt.Fprintf(o.Log, "uninstall: done; kubelet talks to %s again\n", orDefault(state.RuntimeEndpoint, "its original runtime"))
	return nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
