package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Config file identification (checked strictly, as kind does).
const (
	ConfigAPIVersion = "smr.io/v1alpha1"
	ConfigKind       = "ServeConfig"
)

// ServeConfig is the optional YAML configuration of `smr-cri serve`. Command
// line flags override the values in the file. Example:
//
//	apiVersion: smr.io/v1alpha1
//	kind: ServeConfig
//	listen: /run/smr-cri/smr-cri.sock
//	runtimeEndpoint: unix:///run/containerd/containerd.sock
//	logLevel: info
//	metricsAddr: 127.0.0.1:9810
//	shutdownTimeout: 10s
//	dataDir: /var/lib/smr-cri
//	kubeconfig: /var/lib/smr-cri/kube/kubeconfig
//	nodeName: node1
//	traceFile: "-"
//	probeSources: [auto]
//	pkiDir: /var/lib/smr-cri/pki
//	insecureRaft: false
//	statusSocket: /run/smr-cri/smr-cri-status.sock
type ServeConfig struct {
	APIVersion      string `json:"apiVersion"`
	Kind            string `json:"kind"`
	Listen          string `json:"listen,omitempty"`
	RuntimeEndpoint string `json:"runtimeEndpoint,omitempty"`
	LogLevel        string `json:"logLevel,omitempty"`
	MetricsAddr     string `json:"metricsAddr,omitempty"`
	ShutdownTimeout string `json:"shutdownTimeout,omitempty"`
	DataDir         string `json:"dataDir,omitempty"`
	Kubeconfig      string `json:"kubeconfig,omitempty"`
	NodeName        string `json:"nodeName,omitempty"`
	TraceFile       string `json:"traceFile,omitempty"`
	// ProbeSources are --probe-source values (IPv4 addresses, auto, none).
	ProbeSources []string `json:"probeSources,omitempty"`
	// PKIDir is --pki-dir, InsecureRaft --insecure-raft (nil: not set).
	PKIDir       string `json:"pkiDir,omitempty"`
	InsecureRaft *bool  `json:"insecureRaft,omitempty"`
	// StatusSocket is --status-socket.
	StatusSocket string `json:"statusSocket,omitempty"`
	// ClientMemoryMiB is --client-memory-mib.
	ClientMemoryMiB int `json:"clientMemoryMiB,omitempty"`
	// AuditInterval is --audit-interval ("0" turns the audit off).
	AuditInterval string `json:"auditInterval,omitempty"`
}

// ErrBadConfig marks an invalid configuration file or value.
var ErrBadConfig = errors.New("bad configuration")

// loadConfig reads and strictly decodes a config file: unknown fields,
// duplicate keys and a wrong apiVersion/kind are errors.
func loadConfig(path string) (ServeConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return ServeConfig{}, fmt.Errorf("read config file: %w", err)
	}
	return parseConfig(path, data)
}

func parseConfig(path string, data []byte) (ServeConfig, error) {
	var c ServeConfig
	if strings.TrimSpace(string(data)) == "" {
		return c, fmt.Errorf("%w: config file %s is empty", ErrBadConfig, path)
	}
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return c, fmt.Errorf("%w: config file %s: %w", ErrBadConfig, path, err)
	}
	if c.APIVersion != ConfigAPIVersion || c.Kind != ConfigKind {
		return c, fmt.Errorf("%w: config file %s: want apiVersion %q and kind %q, got %q and %q",
			ErrBadConfig, path, ConfigAPIVersion, ConfigKind, c.APIVersion, c.Kind)
	}
	return c, nil
}

// parseLogLevel accepts debug, info, warn and error.
func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%w: log level %q: want debug, info, warn or error", ErrBadConfig, s)
}

// parseAuditInterval reads --audit-interval: a duration of at least a
// second, or 0 (the audit is off).
func parseAuditInterval(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w: --audit-interval %q: %w", ErrBadConfig, s, err)
	}
	if d != 0 && d < time.Second {
		return 0, fmt.Errorf("%w: --audit-interval %q must be 0 (off) or at least 1s", ErrBadConfig, s)
	}
	return d, nil
}

func parseTimeout(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w: shutdown timeout %q: %w", ErrBadConfig, s, err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%w: shutdown timeout %q must be positive", ErrBadConfig, s)
	}
	return d, nil
}
