package install

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criServer answers Version and Status like a runtime would.
type criServer struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	networkReady bool
}

func (criServer) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "containerd", RuntimeVersion: "v2.1.4"}, nil
}

func (s criServer) Status(context.Context, *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: s.networkReady, Reason: "NetworkPluginNotReady"},
	}}}, nil
}

func startCRI(t *testing.T, s criServer) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, s)
	go srv.Serve(lis) //nolint:errcheck // stopped below
	t.Cleanup(srv.Stop)
	return sock
}

func TestGRPCChecker(t *testing.T) {
	sock := startCRI(t, criServer{})
	v, err := GRPCChecker{}.Version(context.Background(), sock)
	if err != nil || v != "containerd v2.1.4" {
		t.Errorf("Version: %q, %v", v, err)
	}
	if _, err := (GRPCChecker{}).Version(context.Background(), filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Error("Version on a missing socket succeeded")
	}
}

func TestKubeletReady(t *testing.T) {
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) }))
	defer healthy.Close()
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "[-]syncloop failed", http.StatusInternalServerError)
	}))
	defer sick.Close()
	ready, noNet := startCRI(t, criServer{networkReady: true}), startCRI(t, criServer{})
	for _, c := range []struct {
		name, url, sock, want string
	}{
		{"ready", healthy.URL, ready, ""},
		{"kubelet unhealthy", sick.URL, ready, "syncloop failed"},
		{"kubelet down", "http://127.0.0.1:1/healthz", ready, "kubelet healthz"},
		{"network not ready", healthy.URL, noNet, "NetworkReady is not true"},
		{"smr-cri down", healthy.URL, filepath.Join(t.TempDir(), "none.sock"), "CRI Status"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := KubeletReady{HealthzURL: c.url, Socket: c.sock}.Ready(context.Background())
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Errorf("got %v, want %q", err, c.want)
			}
		})
	}
}

// TestHostRunnerDirect runs a command on "this node" (root /).
func TestHostRunnerDirect(t *testing.T) {
	out, err := HostRunner{Root: "/"}.Run(context.Background(), "echo", "hello")
	if err != nil || string(out) != "hello\n" {
		t.Errorf("got %q, %v", out, err)
	}
	if _, err := (HostRunner{Root: "/"}).Run(context.Background(), "false"); err == nil || !strings.Contains(err.Error(), "run false") {
		t.Errorf("failing command: %v", err)
	}
}

func TestFindNsenter(t *testing.T) {
	root := t.TempDir()
	if _, err := findNsenter(root); err == nil || !strings.Contains(err.Error(), "nsenter (util-linux) not found") {
		t.Errorf("empty root: %v", err)
	}
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.WriteFile(filepath.Join(root, "bin/nsenter"), nil, 0o755)
	if p, err := findNsenter(root); p != "/bin/nsenter" || err != nil {
		t.Errorf("got %q, %v", p, err)
	}
	if _, err := (HostRunner{Root: t.TempDir()}).Run(context.Background(), "systemctl", "daemon-reload"); err == nil {
		t.Error("a host root without nsenter ran a command")
	}
}
