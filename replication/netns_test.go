package replication

import (
	"context"
	"net"
	"strings"
	"testing"
)

func TestNetnsDialerBadPath(t *testing.T) {
	_, err := NetnsDialer{Path: "/nonexistent/netns"}.DialApp(context.Background(), 6379)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/netns") {
		t.Fatalf("err = %v, want one naming the netns path", err)
	}
}

func TestOriginalPortNeedsTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := OriginalPort(a); err == nil || !strings.Contains(err.Error(), "not a TCP connection") {
		t.Fatalf("err = %v", err)
	}
}
