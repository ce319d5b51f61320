package netintercept

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// Benchmarks against the real kernel (SMR_INTEGRATION=1, root):
//
//	SMR_INTEGRATION=1 go test -run '^$' -bench . -benchtime 200x ./netintercept/
//
// Targets: apply+cleanup median <= 50 ms; the redirect through a forwarding listener adds
// <= 100 us p50 over reaching the app directly, both measured in the same run.

func median(d []time.Duration) time.Duration { return percentile(d, 50) }

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// BenchmarkApplyCleanup installs and removes one pod's rules in a real namespace per iteration.
func BenchmarkApplyCleanup(b *testing.B) {
	requireIntegration(b)
	ctx := context.Background()
	pn := newPodNet(b)
	ic := &Interceptor{}
	spec := Spec{
		ServicePorts: []uint16{svcPort, 8080},
		ListenerPort: listenerPort,
		ExcludePorts: []uint16{raftPort},
		ProbeSources: []netip.Addr{pn.node},
		Mark:         0x4000,
	}
	// Baseline, same run: one iptables-nft-save in the namespace, the cheapest iptables command.
	var saveD []time.Duration
	for range 20 {
		t0 := time.Now()
		if _, err := (NetnsRunner{}).Run(ctx, Cmd{Netns: pn.path, Name: BackendNFT.saveCmd()}); err != nil {
			b.Fatalf("baseline save: %v", err)
		}
		saveD = append(saveD, time.Since(t0))
	}
	var applyD, cleanupD, total []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if _, err := ic.Apply(ctx, pn.path, spec); err != nil {
			b.Fatalf("Apply: %v", err)
		}
		t1 := time.Now()
		if _, err := ic.Cleanup(ctx, pn.path); err != nil {
			b.Fatalf("Cleanup: %v", err)
		}
		t2 := time.Now()
		applyD, cleanupD, total = append(applyD, t1.Sub(t0)), append(cleanupD, t2.Sub(t1)), append(total, t2.Sub(t0))
	}
	b.ReportMetric(ms(median(total)), "median-ms")
	b.ReportMetric(ms(median(applyD)), "apply-median-ms")
	b.ReportMetric(ms(median(cleanupD)), "cleanup-median-ms")
	b.ReportMetric(ms(median(saveD)), "one-save-median-ms")
	b.ReportMetric(float64(median(total))/float64(median(saveD)), "ratio-to-one-save")
}

// forward is a minimal smr-style listener: every accepted connection is piped to the app at
// 127.0.0.1:port inside the namespace.
func forward(b *testing.B, pn *podNet, l net.Listener, port uint16) {
	acceptLoop(b, l, func(c *net.TCPConn) {
		if _, err := OriginalDst(c); err != nil {
			return
		}
		app, err := DialInNetns(context.Background(), pn.path, "tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return
		}
		defer app.Close()
		go io.Copy(app, c)
		io.Copy(c, app)
	})
}

// echo answers every request with the same bytes.
func echo(b *testing.B, l net.Listener) {
	acceptLoop(b, l, func(c *net.TCPConn) { io.Copy(c, c) })
}

const msgSize = 64

func roundTrip(b *testing.B, c net.Conn, buf []byte) time.Duration {
	t0 := time.Now()
	if _, err := c.Write(buf); err != nil {
		b.Fatalf("write: %v", err)
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		b.Fatalf("read: %v", err)
	}
	return time.Since(t0)
}

// BenchmarkRedirectOverhead compares request/response latency from the host over a veth to the
// app directly (from the node address, which bypasses the redirect) with the same through the
// redirect and a forwarding listener (from another host address), alternating in one run.
func BenchmarkRedirectOverhead(b *testing.B) {
	requireIntegration(b)
	pn := newPodNet(b)
	appL, err := ListenInNetns(pn.path, "tcp4", fmt.Sprintf("0.0.0.0:%d", svcPort))
	if err != nil {
		b.Fatal(err)
	}
	echo(b, appL)
	fwdL, err := ListenInNetns(pn.path, "tcp4", fmt.Sprintf("0.0.0.0:%d", listenerPort))
	if err != nil {
		b.Fatal(err)
	}
	forward(b, pn, fwdL, svcPort)
	if _, err := (&Interceptor{}).Apply(context.Background(), pn.path, Spec{
		ServicePorts: []uint16{svcPort}, ListenerPort: listenerPort, ProbeSources: []netip.Addr{pn.node},
	}); err != nil {
		b.Fatalf("Apply: %v", err)
	}
	svc := netip.AddrPortFrom(pn.pod, svcPort)
	direct, redirected := dialFrom(b, pn.node, svc), dialFrom(b, pn.client, svc)
	buf := make([]byte, msgSize)
	for range 200 { // warm up both paths
		roundTrip(b, direct, buf)
		roundTrip(b, redirected, buf)
	}
	var dd, rd []time.Duration
	b.ResetTimer()
	for b.Loop() {
		dd = append(dd, roundTrip(b, direct, buf))
		rd = append(rd, roundTrip(b, redirected, buf))
	}
	b.ReportMetric(us(median(dd)), "direct-p50-us")
	b.ReportMetric(us(median(rd)), "redirect-p50-us")
	b.ReportMetric(us(median(rd)-median(dd)), "added-p50-us")
	b.ReportMetric(float64(median(rd))/float64(median(dd)), "ratio-p50")
	b.ReportMetric(us(percentile(rd, 99)-percentile(dd, 99)), "added-p99-us")
}
