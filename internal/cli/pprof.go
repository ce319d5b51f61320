package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"
)

// checkPprofAddr accepts "" (profiling off) or host:port with a literal
// loopback IP: profiles show what the process holds and cost CPU, so they
// are never reachable from another host.
func checkPprofAddr(addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: --pprof-addr %q: %w", ErrBadConfig, addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: --pprof-addr %q: the host must be a loopback IP such as 127.0.0.1 or ::1", ErrBadConfig, addr)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("%w: --pprof-addr %q: port: %w", ErrBadConfig, addr, err)
	}
	return nil
}

// servePprof serves Go's net/http/pprof handlers at /debug/pprof/ on addr
// (checked by checkPprofAddr) until the returned stop is called. Its own
// mux: nothing else registered on http.DefaultServeMux is exposed.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pprof listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // also every runtime/pprof profile by name (heap, goroutine, ...)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof server stopped", "error", err)
		}
	}()
	log.Warn("serving Go profiles (--pprof-addr): for debugging, costs CPU while a profile is taken", "addr", lis.Addr().String())
	return func() { _ = srv.Close() }, nil
}
