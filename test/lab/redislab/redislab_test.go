package redislab

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// command sends one inline Redis command and returns the first reply line.
func command(t *testing.T, c net.Conn, r *bufio.Reader, cmd string) string {
	t.Helper()
	if _, err := fmt.Fprintf(c, "%s\r\n", cmd); err != nil {
		t.Fatal(err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return strings.TrimSpace(line)
}

func TestStart(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		steps [][2]string // command, reply prefix
	}{
		{"defaults", nil, [][2]string{{"PING", "+PONG"}, {"CONFIG GET appendonly", "*2"}}},
		{"extra arguments reach redis", []string{"--requirepass", "s3cret"},
			[][2]string{{"PING", "-NOAUTH"}, {"AUTH s3cret", "+OK"}, {"PING", "+PONG"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Start(t, tt.args...)
			if s.Addr != fmt.Sprintf("127.0.0.1:%d", s.Port) {
				t.Fatalf("Addr %q does not match Port %d", s.Addr, s.Port)
			}
			c, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			for _, st := range tt.steps {
				if got := command(t, c, r, st[0]); !strings.HasPrefix(got, st[1]) {
					t.Fatalf("%s = %q, want %s...", st[0], got, st[1])
				}
			}
		})
	}
}

// fatalTB records the first Fatal of a helper and ends its goroutine, as a
// real testing.T would, without failing the test that drives it.
type fatalTB struct {
	testing.TB
	msg chan string
}

func (f fatalTB) Fatalf(format string, args ...any) {
	f.msg <- fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f fatalTB) Fatal(args ...any) {
	f.msg <- fmt.Sprint(args...)
	runtime.Goexit()
}

func TestStartBadArgumentFailsFast(t *testing.T) {
	testcheck.SkipUnlessIntegration(t, "redis-server installed") // here: Start's skip would end only its goroutine
	tb := fatalTB{TB: t, msg: make(chan string, 1)}
	start := time.Now()
	go func() {
		Start(tb, "--no-such-directive", "x")
		tb.msg <- "" // no failure
	}()
	msg := <-tb.msg
	if msg == "" {
		t.Fatal("Start with an unknown directive succeeded, want a failure")
	}
	for _, want := range []string{"exited before accepting connections", "no-such-directive"} {
		if !strings.Contains(msg, want) {
			t.Errorf("failure %q does not mention %q", msg, want)
		}
	}
	if d := time.Since(start); d >= startTimeout {
		t.Errorf("failure took %v: the exit was not noticed before the start timeout", d)
	}
}

func TestWaitAccepting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closedLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closedLn.Addr().String()
	closedLn.Close()
	exited := make(chan struct{})
	close(exited)
	tests := []struct {
		name    string
		addr    string
		done    chan struct{}
		wantErr string
		exited  bool
	}{
		{"accepting", ln.Addr().String(), make(chan struct{}), "", false},
		{"process gone", closedAddr, exited, "exited before accepting", true},
		{"never accepts", closedAddr, make(chan struct{}), "accepts no connection after", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := waitAccepting(tt.addr, 200*time.Millisecond, tt.done)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("waitAccepting = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("waitAccepting = %v, want an error containing %q", err, tt.wantErr)
			}
			if errors.Is(err, errExited) != tt.exited {
				t.Fatalf("errors.Is(%v, errExited) = %v, want %v", err, !tt.exited, tt.exited)
			}
		})
	}
}
