package framing

import (
	"errors"
	"fmt"
	"math"
	"testing"
)

// Lengths near the int64 limits once overflowed the framers' bounds
// arithmetic (int64(len(raw))+size+2 wrapped negative and passed the check),
// and a RESP bulk length near 2^63 panicked `serve` with a slice out of range.
// Every such length must be a typed error, never a panic.
func TestFramerLengthOverflow(t *testing.T) {
	huge := []int64{math.MaxInt64, math.MaxInt64 - 1, math.MaxInt64 - 2, math.MaxInt64 / 2, 1 << 62, math.MaxInt32, math.MaxInt32 + 1}
	type tc struct {
		name string
		f    func() Framer
		in   string
		resp bool // frame as a response instead of a request
	}
	var tests []tc
	for _, n := range huge {
		tests = append(tests,
			tc{fmt.Sprintf("RESP request bulk $%d", n), func() Framer { return NewRESP(Options{}) },
				fmt.Sprintf("*2\r\n$3\r\nGET\r\n$%d\r\nk\r\n", n), false},
			tc{fmt.Sprintf("RESP request first bulk $%d", n), func() Framer { return NewRESP(Options{}) },
				fmt.Sprintf("*1\r\n$%d\r\n", n), false},
			tc{fmt.Sprintf("RESP request *%d", n), func() Framer { return NewRESP(Options{}) },
				fmt.Sprintf("*%d\r\n$3\r\nGET\r\n", n), false},
			tc{fmt.Sprintf("RESP response bulk $%d", n), func() Framer { return NewRESP(Options{}) },
				fmt.Sprintf("$%d\r\nabc\r\n", n), true},
			tc{fmt.Sprintf("RESP response verbatim =%d", n), func() Framer { return NewRESP(Options{}) },
				fmt.Sprintf("=%d\r\ntxt:abc\r\n", n), true},
			tc{fmt.Sprintf("RESP response array *%d", n), func() Framer { return NewRESP(Options{}) },
				fmt.Sprintf("*%d\r\n:1\r\n", n), true},
			tc{fmt.Sprintf("RESP response map %%%d", n), func() Framer { return NewRESP(Options{}) },
				fmt.Sprintf("%%%d\r\n+a\r\n", n), true},
			tc{fmt.Sprintf("RESP response attribute |%d", n), func() Framer { return NewRESP(Options{}) },
				fmt.Sprintf("|%d\r\n+a\r\n", n), true},
			tc{fmt.Sprintf("HTTP request chunk %x", n), func() Framer { return NewHTTP(Options{}) },
				fmt.Sprintf("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\nabc\r\n", n), false},
			tc{fmt.Sprintf("HTTP response chunk %x", n), func() Framer { return NewHTTP(Options{}) },
				fmt.Sprintf("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\nabc\r\n", n), true},
		)
	}
	tests = append(tests,
		tc{"HTTP request Content-Length 18 nines", func() Framer { return NewHTTP(Options{}) },
			"POST / HTTP/1.1\r\nContent-Length: 999999999999999999\r\n\r\nabc", false},
		tc{"HTTP request Content-Length beyond int64", func() Framer { return NewHTTP(Options{}) },
			"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\nabc", false},
		tc{"HTTP response Content-Length 18 nines", func() Framer { return NewHTTP(Options{}) },
			"HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999\r\n\r\nabc", true},
		tc{"RESP request bulk length beyond int64", func() Framer { return NewRESP(Options{}) },
			"*2\r\n$3\r\nGET\r\n$99999999999999999999\r\nk\r\n", false},
		tc{"RESP request negative bulk length", func() Framer { return NewRESP(Options{}) },
			"*2\r\n$3\r\nGET\r\n$-9223372036854775808\r\nk\r\n", false},
		tc{"RESP response most negative bulk", func() Framer { return NewRESP(Options{}) },
			"$-9223372036854775808\r\n", true},
	)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.f()
			var err error
			if tt.resp {
				_, err = f.ReadResponse(reader(tt.in), Request{Op: "GET /"})
			} else {
				_, err = f.NextRequest(reader(tt.in))
			}
			if !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want too large or malformed", err)
			}
			if reply, _ := f.ErrorReply(err); len(reply) == 0 {
				t.Fatal("empty error reply")
			}
		})
	}
}

func TestFits(t *testing.T) {
	tests := []struct {
		used     int
		n, extra int64
		max      int
		want     bool
	}{
		{0, 10, 2, 12, true},
		{0, 11, 2, 12, false},
		{5, 5, 2, 12, true},
		{20, 0, 0, 12, false},
		{0, math.MaxInt64, 2, 1 << 20, false},
		{100, math.MaxInt64 - 99, 2, 1 << 20, false},
		{0, -1, 0, 12, false},
		{0, math.MinInt64, 2, 12, false},
	}
	for _, tt := range tests {
		if got := fits(tt.used, tt.n, tt.extra, tt.max); got != tt.want {
			t.Errorf("fits(%d, %d, %d, %d) = %v, want %v", tt.used, tt.n, tt.extra, tt.max, got, tt.want)
		}
	}
}
