package framing

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func reader(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 16) }

// frameAll reads every request of the stream with one framer (a connection).
func frameAll(t *testing.T, f Framer, in string) ([]Request, error) {
	t.Helper()
	r := reader(in)
	var out []Request
	for {
		req, err := f.NextRequest(r)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, req)
	}
}

func TestRESPRequests(t *testing.T) {
	type want struct {
		raw, op string
		ro      bool
	}
	set := "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
	get := "*2\r\n$3\r\nget\r\n$1\r\nk\r\n"
	tests := []struct {
		name string
		in   string
		want []want
	}{
		{"one array", set, []want{{set, "SET", false}}},
		{"pipelined in one read", set + get + set, []want{{set, "SET", false}, {get, "GET", true}, {set, "SET", false}}},
		{"inline", "PING\r\nget k\n", []want{{"PING\r\n", "PING", true}, {"get k\n", "GET", true}}},
		{"empty inline lines and *0 are skipped", "\r\n\n*0\r\nPING\r\n", []want{{"PING\r\n", "PING", true}}},
		{"binary-safe bulk", "*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n", []want{{"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n", "ECHO", true}}},
		{"empty bulk", "*2\r\n$3\r\nGET\r\n$0\r\n\r\n", []want{{"*2\r\n$3\r\nGET\r\n$0\r\n\r\n", "GET", true}}},
		{"MULTI makes reads not read-only until EXEC",
			"MULTI\r\nGET a\r\nEXEC\r\nGET a\r\n",
			[]want{{"MULTI\r\n", "MULTI", false}, {"GET a\r\n", "GET", false}, {"EXEC\r\n", "EXEC", false}, {"GET a\r\n", "GET", true}}},
		{"DISCARD ends MULTI", "MULTI\r\nDISCARD\r\nEXISTS a\r\n",
			[]want{{"MULTI\r\n", "MULTI", false}, {"DISCARD\r\n", "DISCARD", false}, {"EXISTS a\r\n", "EXISTS", true}}},
		{"SELECT changes connection state", "SELECT 2\r\n", []want{{"SELECT 2\r\n", "SELECT", false}}},
		{"RESET ends MULTI", "MULTI\r\nRESET\r\nGET a\r\n",
			[]want{{"MULTI\r\n", "MULTI", false}, {"RESET\r\n", "RESET", false}, {"GET a\r\n", "GET", true}}},
		{"subcommands are named", "CLIENT setname x\r\nCONFIG GET maxmemory\r\n",
			[]want{{"CLIENT setname x\r\n", "CLIENT SETNAME", false}, {"CONFIG GET maxmemory\r\n", "CONFIG GET", true}}},
		{"XREAD without BLOCK is a read", "XREAD STREAMS s 0\r\n", []want{{"XREAD STREAMS s 0\r\n", "XREAD", true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := frameAll(t, NewRESP(Options{}), tt.in)
			if err != nil {
				t.Fatalf("frame: %v", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d requests %+v, want %d", len(got), got, len(tt.want))
			}
			for i, w := range tt.want {
				if string(got[i].Raw) != w.raw || got[i].Op != w.op || got[i].ReadOnly != w.ro {
					t.Errorf("request %d = {%q %q %v}, want {%q %q %v}", i, got[i].Raw, got[i].Op, got[i].ReadOnly, w.raw, w.op, w.ro)
				}
			}
		})
	}
}

func TestRESPBadRequests(t *testing.T) {
	small := Options{Limits: Limits{MaxRequestBytes: 64, MaxArgs: 4}}
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"bad array count", "*x\r\n", ErrMalformed},
		{"leading zero count", "*01\r\n$1\r\na\r\n", ErrMalformed},
		{"array of integers", "*1\r\n:1\r\n", ErrMalformed},
		{"negative bulk length", "*1\r\n$-1\r\n", ErrMalformed},
		{"bulk without CRLF", "*1\r\n$1\r\naXY", ErrMalformed},
		{"header without CR", "*1\n$1\r\na\r\n", ErrMalformed},
		{"too many arguments", "*5\r\n", ErrTooLarge},
		{"bulk larger than the limit", "*1\r\n$100\r\n", ErrTooLarge},
		{"inline line larger than the limit", strings.Repeat("A", 100) + "\r\n", ErrTooLarge},
		{"truncated array", "*2\r\n$3\r\nGET\r\n", io.ErrUnexpectedEOF},
		{"truncated bulk", "*1\r\n$3\r\nGE", io.ErrUnexpectedEOF},
		{"truncated inline", "GET k", io.ErrUnexpectedEOF},
		{"inline NUL", "GET \x00\r\n", ErrMalformed},
		{"SUBSCRIBE", "SUBSCRIBE ch\r\n", ErrUnsupported},
		{"MONITOR", "*1\r\n$7\r\nmonitor\r\n", ErrUnsupported},
		{"WAIT", "WAIT 1 0\r\n", ErrUnsupported},
		{"PSUBSCRIBE", "PSUBSCRIBE *\r\n", ErrUnsupported},
		{"blocking pop", "BLPOP l 0\r\n", ErrUnsupported},
		{"SPOP", "SPOP s\r\n", ErrUnsupported},
		{"CLIENT REPLY", "CLIENT reply off\r\n", ErrUnsupported},
		{"XREAD BLOCK", "XREAD BLOCK 0 STREAMS s $\r\n", ErrUnsupported},
		{"unknown command", "FOO.BAR x\r\n", ErrUnsupported},
		{"unknown subcommand", "CLIENT FROB\r\n", ErrUnsupported},
		{"unbalanced inline quotes in an argument-checked command", "SET k \"v EX 1\r\n", ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := frameAll(t, NewRESP(small), tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

// An unsupported command is consumed whole, so the next request still frames.
func TestRESPUnsupportedKeepsStream(t *testing.T) {
	f := NewRESP(Options{})
	r := reader("SUBSCRIBE ch\r\nPING\r\n")
	if _, err := f.NextRequest(r); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("first: %v", err)
	}
	reply, closeConn := f.ErrorReply(errorf(ErrUnsupported, "x"))
	if closeConn || !strings.HasPrefix(string(reply), "-ERR smr-cri: ") {
		t.Fatalf("reply %q close=%v", reply, closeConn)
	}
	req, err := f.NextRequest(r)
	if err != nil || req.Op != "PING" {
		t.Fatalf("second: %+v %v", req, err)
	}
}

func TestRESPResponses(t *testing.T) {
	tests := []struct {
		name string
		in   string // one response, followed by a marker that must stay unread
	}{
		{"simple", "+OK\r\n"},
		{"queued", "+QUEUED\r\n"},
		{"error", "-ERR wrong\r\n"},
		{"integer", ":42\r\n"},
		{"bulk", "$5\r\nhello\r\n"},
		{"bulk with CRLF inside", "$4\r\na\r\nb\r\n"},
		{"null bulk", "$-1\r\n"},
		{"null array", "*-1\r\n"},
		{"empty array", "*0\r\n"},
		{"EXEC array", "*3\r\n+OK\r\n:2\r\n$1\r\nx\r\n"},
		{"nested", "*2\r\n*2\r\n:1\r\n$-1\r\n*1\r\n*0\r\n"},
		{"RESP3 map", "%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n_\r\n#t\r\n"},
		{"RESP3 set, double, bignum", "~3\r\n,1.5\r\n(12345678901234567890\r\n_\r\n"},
		{"RESP3 verbatim and blob error", "*2\r\n=8\r\ntxt:abcd\r\n!3\r\nERR\r\n"},
		{"RESP3 attribute before value", "|1\r\n+key\r\n+val\r\n:7\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := reader(tt.in + "+NEXT\r\n")
			f := NewRESP(Options{})
			got, err := f.ReadResponse(r, Request{})
			if err != nil || string(got) != tt.in {
				t.Fatalf("got %q, %v; want %q", got, err, tt.in)
			}
			next, err := f.ReadResponse(r, Request{})
			if err != nil || string(next) != "+NEXT\r\n" {
				t.Fatalf("following response %q, %v", next, err)
			}
		})
	}
}

func TestRESPBadResponses(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"unknown type", "?x\r\n", ErrMalformed},
		{"no CR", "+OK\n", ErrMalformed},
		{"bad bulk length", "$x\r\n", ErrMalformed},
		{"negative map", "%-1\r\n", ErrMalformed},
		{"bulk without CRLF", "$1\r\nabc", ErrMalformed},
		{"push", ">2\r\n+message\r\n+x\r\n", ErrUnsupported},
		{"too large bulk", "$100\r\n", ErrTooLarge},
		{"too large array", "*1000000\r\n", ErrTooLarge},
		{"truncated", "*2\r\n:1\r\n", io.ErrUnexpectedEOF},
		{"clean EOF", "", io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewRESP(Options{Limits: Limits{MaxResponseBytes: 64}})
			_, err := f.ReadResponse(reader(tt.in), Request{})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNew(t *testing.T) {
	for _, p := range []string{ProtoRESP, ProtoHTTP} {
		f, err := New(p, Options{})
		if err != nil || f.Protocol() != p {
			t.Fatalf("New(%q) = %v, %v", p, f, err)
		}
	}
	if _, err := New("grpc", Options{}); err == nil || !strings.Contains(err.Error(), `"grpc"`) {
		t.Fatalf("New(grpc) err = %v", err)
	}
}
