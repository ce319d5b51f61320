package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/internal/daemon"
	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/nodestatus"
	"github.com/smr-io/smr-cri/replication"
)

func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = Run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestRunHelp(t *testing.T) {
	tests := []struct {
		args []string
		want []string // all must appear on stdout
	}{
		{[]string{"serve", "--help"}, []string{"Usage: smr-cri serve", "--listen", "--runtime-endpoint", "--config", "--log-level",
			"--metrics-addr", "--pprof-addr", "--shutdown-timeout", DefaultListen, DefaultRuntimeEndpoint, "0660", "smr.io/replicate=true"}},
		{[]string{"serve", "-h"}, []string{"Usage: smr-cri serve"}},
		{[]string{"help"}, []string{"Usage: smr-cri <subcommand>", "serve", "version"}},
		{[]string{"--help"}, []string{"Usage: smr-cri <subcommand>"}},
		{[]string{"version"}, []string{"smr-cri ", "runtime.v1"}},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, err := run(t, tc.args...)
			if code := exitcode.Of(err); code != 0 {
				t.Fatalf("exit code %d (%v), stderr %q", code, err, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout does not contain %q:\n%s", w, stdout)
				}
			}
		})
	}
}

func TestRunUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want []string // all must appear on stderr
	}{
		{nil, []string{"no subcommand given", "Usage: smr-cri <subcommand>"}},
		{[]string{"frobnicate"}, []string{`unknown subcommand "frobnicate"`, "Usage: smr-cri <subcommand>", "serve"}},
		{[]string{"serve", "--bogus"}, []string{"flag provided but not defined: -bogus", "Usage: smr-cri serve"}},
		{[]string{"serve", "extra"}, []string{`unexpected arguments ["extra"]`, "Usage: smr-cri serve"}},
		{[]string{"version", "x"}, []string{"version takes no arguments"}},
		{[]string{"help", "serve"}, []string{"smr-cri serve --help"}},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, stderr, err := run(t, tc.args...)
			if code := exitcode.Of(err); code != 2 {
				t.Fatalf("exit code %d (%v), want 2", code, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not contain %q:\n%s", w, stderr)
				}
			}
		})
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "serve.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const header = "apiVersion: smr.io/v1alpha1\nkind: ServeConfig\n"

func TestParseServe(t *testing.T) {
	tests := []struct {
		name    string
		config  string // file content; "" = no --config
		args    []string
		want    serveOptions
		wantErr string
	}{
		{"defaults", "", nil, serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second}, ""},
		{"flags", "", []string{"--listen", "/tmp/x.sock", "--runtime-endpoint", "/run/c.sock", "--log-level", "debug", "--metrics-addr", "127.0.0.1:0", "--shutdown-timeout", "3s"},
			serveOptions{Listen: "/tmp/x.sock", RuntimeEndpoint: "/run/c.sock", LogLevel: -4, MetricsAddr: "127.0.0.1:0", ShutdownTimeout: 3 * time.Second}, ""},
		{"file", header + "listen: /tmp/f.sock\nruntimeEndpoint: unix:///f/c.sock\nlogLevel: warn\nmetricsAddr: 127.0.0.1:9810\nshutdownTimeout: 1m\n", nil,
			serveOptions{Listen: "/tmp/f.sock", RuntimeEndpoint: "unix:///f/c.sock", LogLevel: 4, MetricsAddr: "127.0.0.1:9810", ShutdownTimeout: time.Minute}, ""},
		{"flags override file", header + "listen: /tmp/f.sock\nlogLevel: warn\n", []string{"--listen", "/tmp/flag.sock"},
			serveOptions{Listen: "/tmp/flag.sock", RuntimeEndpoint: DefaultRuntimeEndpoint, LogLevel: 4, ShutdownTimeout: 10 * time.Second}, ""},
		{"unknown field", header + "listen: /tmp/f.sock\nlisten_addr: x\n", nil, serveOptions{}, `unknown field "listen_addr"`},
		{"duplicate field", header + "listen: /a\nlisten: /b\n", nil, serveOptions{}, `duplicate`},
		{"wrong kind", "apiVersion: smr.io/v1alpha1\nkind: Other\n", nil, serveOptions{}, `want apiVersion "smr.io/v1alpha1" and kind "ServeConfig"`},
		{"missing apiVersion", "kind: ServeConfig\n", nil, serveOptions{}, `want apiVersion`},
		{"empty file", "\n", nil, serveOptions{}, "is empty"},
		{"not YAML", header + "listen: [unclosed\n", nil, serveOptions{}, "config file"},
		{"wrong type", header + "listen: [1, 2]\n", nil, serveOptions{}, "cannot unmarshal"},
		{"bad log level", "", []string{"--log-level", "loud"}, serveOptions{}, `log level "loud"`},
		{"bad log level in file", header + "logLevel: loud\n", nil, serveOptions{}, `log level "loud"`},
		{"bad endpoint", "", []string{"--runtime-endpoint", "tcp://1.2.3.4:5"}, serveOptions{}, "only unix:// endpoints"},
		{"bad timeout", "", []string{"--shutdown-timeout", "soon"}, serveOptions{}, `shutdown timeout "soon"`},
		{"negative timeout", "", []string{"--shutdown-timeout", "-1s"}, serveOptions{}, "must be positive"},
		{"empty listen", "", []string{"--listen", ""}, serveOptions{}, "--listen must not be empty"},
		{"replication flags", "", []string{"--data-dir", "/d", "--kubeconfig", "/k", "--node-name", "n1", "--trace-file", "/t"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: "/d", Kubeconfig: "/k", NodeName: "n1", TraceFile: "/t", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"replication in file, flag wins", header + "dataDir: /fd\nkubeconfig: /fk\nnodeName: fn\ntraceFile: /ft\n", []string{"--node-name", "n1"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: "/fd", Kubeconfig: "/fk", NodeName: "n1", TraceFile: "/ft", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"replication off", "", []string{"--replication=false", "--data-dir", "relative/is/unused"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{DataDir: "relative/is/unused", TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"relative data dir", "", []string{"--data-dir", "var/lib"}, serveOptions{}, `--data-dir "var/lib" must be an absolute path`},
		{"probe sources repeated and comma list", "", []string{"--probe-source", "198.19.1.1,auto", "--probe-source", "198.19.2.1"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "198.19.1.1,auto,198.19.2.1", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"probe sources in file, flag wins", header + "probeSources: [198.19.1.1, auto]\n", []string{"--probe-source", "none"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"probe sources in file", header + "probeSources: [198.19.1.1, auto]\n", nil,
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "198.19.1.1,auto", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"bad probe source", "", []string{"--probe-source", "node1"}, serveOptions{}, `--probe-source: probe source "node1": want an IPv4 address`},
		{"IPv6 probe source in file", header + "probeSources: [\"fd00::1\"]\n", nil, serveOptions{}, "probe source fd00::1 is not IPv4"},
		{"none with an address", "", []string{"--probe-source", "none,198.19.1.1"}, serveOptions{}, `"none" cannot be combined`},
		{"empty trace file", "", []string{"--trace-file", ""}, serveOptions{}, "--trace-file must not be empty"},
		// Raft mutual TLS is on by default (CA in DefaultPKIDir); --insecure-raft turns it off.
		{"pki dir flag", "", []string{"--pki-dir", "/etc/smr/pki"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: "/etc/smr/pki", ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"pki dir in file", header + "pkiDir: /f/pki\n", nil,
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: "/f/pki", ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"insecure raft", "", []string{"--insecure-raft"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", InsecureRaft: true, ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"insecure raft in file, flag wins", header + "insecureRaft: true\n", []string{"--insecure-raft=false"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second}, ""},
		{"insecure raft in file", header + "insecureRaft: true\n", nil,
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", InsecureRaft: true, ClientMemoryMiB: DefaultClientMemoryMiB}}, ""},
		{"relative pki dir", "", []string{"--pki-dir", "pki"}, serveOptions{}, `--pki-dir "pki" must be an absolute path`},
		{"client memory flag", "", []string{"--client-memory-mib", "64"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: 64}}, ""},
		{"client memory in file", header + "clientMemoryMiB: 32\n", nil,
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: 32}}, ""},
		{"client memory zero", "", []string{"--client-memory-mib", "0"}, serveOptions{}, `--client-memory-mib "0": want a whole number of MiB`},
		{"client memory not a number", "", []string{"--client-memory-mib", "1GiB"}, serveOptions{}, `--client-memory-mib "1GiB": want a whole number of MiB`},
		{"client memory too large", "", []string{"--client-memory-mib", "99999999999"}, serveOptions{}, `want a whole number of MiB in [1, 1048576]`},
		{"empty pki dir", "", []string{"--pki-dir", ""}, serveOptions{}, `--pki-dir "" must be an absolute path`},
		{"insecure raft with pki dir", "", []string{"--insecure-raft", "--pki-dir", "/p"}, serveOptions{}, "--insecure-raft and --pki-dir exclude each other"},
		{"insecure raft with pki dir in file", header + "pkiDir: /p\n", []string{"--insecure-raft"}, serveOptions{}, "--insecure-raft and --pki-dir exclude each other"},
		{"insecure raft not a bool in file", header + "insecureRaft: maybe\n", nil, serveOptions{}, "cannot unmarshal"},
		{"status socket flag", "", []string{"--status-socket", "/run/x/status.sock"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second, StatusSocket: "/run/x/status.sock"}, ""},
		{"status socket off", "", []string{"--status-socket", "-"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second, StatusSocket: "-"}, ""},
		{"status socket in file, flag wins", header + "statusSocket: /f/status.sock\n", []string{"--status-socket", "/g/status.sock"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second, StatusSocket: "/g/status.sock"}, ""},
		{"status socket in file", header + "statusSocket: /f/status.sock\n", nil,
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second, StatusSocket: "/f/status.sock"}, ""},
		{"relative status socket", "", []string{"--status-socket", "status.sock"}, serveOptions{}, `--status-socket "status.sock" must be an absolute path`},
		{"audit off", "", []string{"--audit-interval", "0"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB,
					Audit: replication.AuditConfig{Off: true, Every: replication.DefaultAuditEvery, MaxKeys: replication.DefaultAuditMaxKeys}}}, ""},
		{"audit flags", "", []string{"--audit-interval", "5m", "--audit-every", "500", "--audit-max-keys", "7"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB,
					Audit: replication.AuditConfig{Interval: 5 * time.Minute, Every: 500, MaxKeys: 7}}}, ""},
		{"audit without copy-on-write", "", []string{"--audit-copy-on-write=false"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB,
					Audit: replication.AuditConfig{Interval: replication.DefaultAuditInterval, Every: replication.DefaultAuditEvery, MaxKeys: replication.DefaultAuditMaxKeys, NoCopyOnWrite: true}}}, ""},
		{"audit interval in file", header + "auditInterval: 2m\n", nil,
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir, ClientMemoryMiB: DefaultClientMemoryMiB,
					Audit: replication.AuditConfig{Interval: 2 * time.Minute, Every: replication.DefaultAuditEvery, MaxKeys: replication.DefaultAuditMaxKeys}}}, ""},
		{"audit interval not a duration", "", []string{"--audit-interval", "often"}, serveOptions{}, `--audit-interval "often"`},
		{"audit interval too short", "", []string{"--audit-interval", "10ms"}, serveOptions{}, "must be 0 (off) or at least 1s"},
		{"audit every zero", "", []string{"--audit-every", "0"}, serveOptions{}, "must be positive"},
		{"audit max keys negative", "", []string{"--audit-max-keys", "-1"}, serveOptions{}, "must be positive"},
		{"container poll interval", "", []string{"--container-poll-interval", "500ms"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir,
					ClientMemoryMiB: DefaultClientMemoryMiB, ContainerPoll: 500 * time.Millisecond}}, ""},
		{"container poll off", "", []string{"--container-poll-interval", "0"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir,
					ClientMemoryMiB: DefaultClientMemoryMiB, ContainerPoll: -1}}, ""},
		{"app pipeline off", "", []string{"--app-pipeline=false"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second,
				Replication: replicationOptions{Enabled: true, DataDir: DefaultDataDir, TraceFile: "-", ProbeSource: "none", PKIDir: DefaultPKIDir,
					ClientMemoryMiB: DefaultClientMemoryMiB, ContainerPoll: daemon.DefaultExitPollInterval, SerialApply: true,
					Audit: replication.AuditConfig{Interval: replication.DefaultAuditInterval, Every: replication.DefaultAuditEvery, MaxKeys: replication.DefaultAuditMaxKeys}}}, ""},
		{"container poll too short", "", []string{"--container-poll-interval", "1ms"}, serveOptions{}, "must be 0 (off) or at least 100ms"},
		{"pprof on loopback", "", []string{"--pprof-addr", "127.0.0.1:6060"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second, PprofAddr: "127.0.0.1:6060"}, ""},
		{"pprof on IPv6 loopback", "", []string{"--pprof-addr", "[::1]:0"},
			serveOptions{Listen: DefaultListen, RuntimeEndpoint: DefaultRuntimeEndpoint, ShutdownTimeout: 10 * time.Second, PprofAddr: "[::1]:0"}, ""},
		{"pprof on all interfaces", "", []string{"--pprof-addr", ":6060"}, serveOptions{}, "the host must be a loopback IP"},
		{"pprof on a pod address", "", []string{"--pprof-addr", "198.18.0.5:6060"}, serveOptions{}, "the host must be a loopback IP"},
		{"pprof on a host name", "", []string{"--pprof-addr", "localhost:6060"}, serveOptions{}, "the host must be a loopback IP"},
		{"pprof without port", "", []string{"--pprof-addr", "127.0.0.1"}, serveOptions{}, "missing port"},
		{"pprof bad port", "", []string{"--pprof-addr", "127.0.0.1:99999"}, serveOptions{}, "port"},
		{"status socket is the CRI socket", "", []string{"--listen", "/run/a.sock", "--status-socket", "/run/a.sock"}, serveOptions{}, "must differ from --listen"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.config != "" {
				args = append([]string{"--config", writeFile(t, tc.config)}, args...)
			}
			got, err := parseServe(args, &bytes.Buffer{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				if !errors.Is(err, ErrBadConfig) {
					t.Errorf("error %v is not ErrBadConfig", err)
				}
				if code := exitcode.Of(err); code != 1 {
					t.Errorf("exit code %d, want 1", code)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseServe: %v", err)
			}
			if tc.want.Replication == (replicationOptions{}) {
				tc.want.Replication = defaultReplication // cases written before replication existed
			}
			if tc.want.Replication.Audit == (replication.AuditConfig{}) {
				tc.want.Replication.Audit = defaultAudit // cases written before the audit existed
			}
			if tc.want.Replication.ContainerPoll == 0 {
				tc.want.Replication.ContainerPoll = daemon.DefaultExitPollInterval // cases written before the poll existed
			}
			if tc.want.StatusSocket == "" {
				tc.want.StatusSocket = nodestatus.DefaultSocket(tc.want.Listen) // beside the CRI socket
			}
			if got != tc.want {
				t.Fatalf("options = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMissingConfigFile(t *testing.T) {
	_, stderr, err := run(t, "serve", "--config", filepath.Join(t.TempDir(), "nope.yaml"))
	if exitcode.Of(err) != 1 || !strings.Contains(stderr, "read config file") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, stderr %q; want exit 1 and a read error", err, stderr)
	}
}

// TestServeLifecycle runs `smr-cri serve` in-process: the socket appears with
// mode 0660, calls fail with Unavailable while the runtime is missing, a
// second instance refuses the live socket, and cancelling (as SIGTERM does)
// stops it and removes the socket.
func TestServeLifecycle(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "smr-cri.sock")
	runtimeSock := filepath.Join(dir, "no-containerd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	var stderr bytes.Buffer
	go func() {
		done <- Run(ctx, []string{"serve", "--listen", sock, "--runtime-endpoint", "unix://" + runtimeSock, "--shutdown-timeout", "5s"}, &bytes.Buffer{}, &lockedWriter{w: &stderr})
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Wait until serve answers; WaitForReady makes the call wait for the socket.
	callCtx, callCancel := context.WithTimeout(ctx, 60*time.Second)
	defer callCancel()
	_, err = runtimeapi.NewRuntimeServiceClient(conn).Version(callCtx, &runtimeapi.VersionRequest{}, grpc.WaitForReady(true))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "smr-cri: container runtime at unix://"+runtimeSock+" unavailable") {
		t.Fatalf("Version with no runtime: %v, want smr-cri Unavailable", err)
	}
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	// The status socket is beside it, root only, and `smr-cri status` reads it.
	statusSock := filepath.Join(dir, "run", nodestatus.SocketName)
	if fi, err := os.Lstat(statusSock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("status socket: %v %v, want socket 0600", fi, err)
	}
	out, errOut, err := run(t, "status", "--socket", statusSock)
	if err != nil || out != "no replicated members\n" {
		t.Errorf("status: %v %q %q, want no members", err, out, errOut)
	}
	out, _, err = run(t, "status", "--socket", statusSock, "-o", "json")
	if r, derr := nodestatus.Decode([]byte(out)); err != nil || derr != nil || len(r.Members) != 0 {
		t.Errorf("status -o json: %v %v %q", err, derr, out)
	}

	_, errOut, err = run(t, "serve", "--listen", sock, "--runtime-endpoint", "unix://"+runtimeSock)
	if exitcode.Of(err) != 1 || !strings.Contains(errOut, "another server answers on it") {
		t.Errorf("second serve on a live socket: %v %q, want refusal", err, errOut)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("refused second serve removed the live socket: %v", err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve returned %v after cancel, want nil", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still present after shutdown: %v", err)
	}
	if _, err := os.Lstat(statusSock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("status socket still present after shutdown: %v", err)
	}
	if _, errOut, err := run(t, "status", "--socket", statusSock); exitcode.Of(err) != 1 || !strings.Contains(errOut, "is smr-cri serve running here") {
		t.Errorf("status without serve: %v %q, want a clear error", err, errOut)
	}
}

func TestStatusUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "-o", "yaml"}, `-o "yaml": want table or json`},
		{[]string{"status", "--timeout", "0s"}, "--timeout must be positive"},
		{[]string{"status", "extra"}, "unexpected arguments"},
	} {
		_, errOut, err := run(t, tc.args...)
		if exitcode.Of(err) != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: %v %q, want usage error %q", tc.args, err, errOut, tc.want)
		}
	}
}
