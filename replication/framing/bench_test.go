package framing

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

// benchStream repeats a pipelined request mix so one pass frames many requests.
func benchStream(proto string) ([]byte, int) {
	var one string
	switch proto {
	case ProtoRESP:
		one = "*3\r\n$3\r\nSET\r\n$8\r\nkey:0001\r\n$16\r\nvalue-0123456789\r\n*2\r\n$3\r\nGET\r\n$8\r\nkey:0001\r\n"
	default:
		one = "PUT /kv/key0001 HTTP/1.1\r\nHost: kv\r\nContent-Length: 16\r\n\r\nvalue-0123456789" +
			"GET /kv/key0001 HTTP/1.1\r\nHost: kv\r\n\r\n"
	}
	const reps = 1000
	return []byte(strings.Repeat(one, reps)), 2 * reps
}

// frameStream frames the whole stream and returns the request count.
func frameStream(b *testing.B, proto string, data []byte) int {
	f, _ := New(proto, Options{})
	r := bufio.NewReader(bytes.NewReader(data))
	n := 0
	for {
		_, err := f.NextRequest(r)
		if err == io.EOF {
			return n
		}
		if err != nil {
			b.Fatal(err)
		}
		n++
	}
}

// scanLines is the baseline: find every line end through a bufio.Reader,
// the least work any line-oriented parser of these bytes must do.
func scanLines(data []byte) int {
	r := bufio.NewReader(bytes.NewReader(data))
	n := 0
	for {
		if _, err := r.ReadSlice('\n'); err != nil {
			return n
		}
		n++
	}
}

// BenchmarkFraming reports framed requests per second and the ratio of
// framing throughput to the line-scan baseline over the same bytes, both
// measured in this run (ratio 1 would mean framing is free).
func BenchmarkFraming(b *testing.B) {
	for _, proto := range []string{ProtoRESP, ProtoHTTP} {
		b.Run(proto, func(b *testing.B) {
			data, perPass := benchStream(proto)
			const basePasses = 200
			start := time.Now()
			for range basePasses {
				scanLines(data)
			}
			baseline := time.Since(start).Seconds() / basePasses

			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			start = time.Now()
			for range b.N {
				if got := frameStream(b, proto, data); got != perPass {
					b.Fatalf("framed %d requests, want %d", got, perPass)
				}
			}
			elapsed := time.Since(start).Seconds() / float64(b.N)
			b.ReportMetric(float64(perPass)/elapsed, "req/s")
			b.ReportMetric(baseline/elapsed, "ratio_vs_linescan")
		})
	}
}
