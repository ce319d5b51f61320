package appstate

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
)

// httpApp snapshots an HTTP app through its opt-in state endpoint
// (smr.io/snapshot-path, replication/CONTRACT.md): GET answers the whole
// state as bytes, PUT replaces the whole state with the request body. The
// bytes are the app's own; for Digest they must be canonical (equal states
// answer equal bytes, e.g. keys sorted). The management connection is a
// fresh app connection of smr-cri's own, never a replicated session, and
// the path is refused to clients on the replicated port.
type httpApp struct {
	cfg    Config
	client *http.Client
	url    string
}

// blobChunk is how much of an HTTP state one record carries.
const blobChunk = 256 << 10

func newHTTPApp(cfg Config) *httpApp {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
			defer cancel()
			return cfg.Dialer.DialApp(dctx, cfg.Port)
		},
		DisableKeepAlives:  true,
		DisableCompression: true,
		Proxy:              nil,
	}
	return &httpApp{cfg: cfg, client: &http.Client{Transport: tr},
		url: "http://127.0.0.1:" + strconv.Itoa(cfg.Port) + cfg.SnapshotPath}
}

func (a *httpApp) request(ctx context.Context, method string, body io.Reader) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	req, err := http.NewRequestWithContext(ctx, method, a.url, body)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("snapshot request: %w", err)
	}
	if c := a.cfg.Credentials; c.Password != "" {
		req.SetBasicAuth(c.Username, c.Password)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s %s on the app: %w", method, a.cfg.SnapshotPath, err)
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s on the app: %s: %q", method, a.cfg.SnapshotPath, resp.Status, msg)
	}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

func (a *httpApp) Capture(ctx context.Context, w io.Writer) (Stats, error) {
	var st Stats
	resp, err := a.request(ctx, http.MethodGet, nil)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	sw, err := newStreamWriter(w, ProtoHTTP)
	if err != nil {
		return st, err
	}
	buf := make([]byte, blobChunk)
	for {
		n, rerr := io.ReadFull(resp.Body, buf)
		if n > 0 {
			if err := sw.record(kindBlob, buf[:n]); err != nil {
				return st, err
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return st, fmt.Errorf("read the app's state: %w", rerr)
		}
	}
	if err := sw.end(); err != nil {
		return st, err
	}
	st.Bytes = sw.bytes
	return st, nil
}

func (a *httpApp) Restore(ctx context.Context, r io.Reader) (Stats, error) {
	var st Stats
	sr, err := newStreamReader(r, ProtoHTTP)
	if err != nil {
		return st, err
	}
	// The body streams from the records; a damaged stream aborts the PUT
	// (the app sees a broken chunked body, not a truncated state).
	pr, pw := io.Pipe()
	go func() {
		for {
			kind, body, err := sr.next()
			if errors.Is(err, io.EOF) {
				pw.Close()
				return
			}
			if err == nil && kind != kindBlob {
				err = fmt.Errorf("%w: record kind %q in an HTTP state", ErrBadStream, kind)
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := pw.Write(body); err != nil {
				return
			}
		}
	}()
	resp, err := a.request(ctx, http.MethodPut, pr)
	pr.Close()
	if err != nil {
		return st, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	st.Bytes = sr.bytes
	return st, nil
}

func (a *httpApp) Digest(ctx context.Context, opt DigestOptions) (Digest, error) {
	var d Digest
	resp, err := a.request(ctx, http.MethodGet, nil)
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()
	h := sha256.New()
	h.Write([]byte("smr-appstate-digest/http/1\n"))
	body := io.Reader(resp.Body)
	if opt.MaxBytes > 0 {
		body = io.LimitReader(resp.Body, opt.MaxBytes+1)
	}
	n, err := io.Copy(h, body)
	if err != nil {
		return d, fmt.Errorf("read the app's state: %w", err)
	}
	if opt.MaxBytes > 0 && n > opt.MaxBytes {
		return d, fmt.Errorf("%w: the state body passed %d bytes", ErrTooLarge, opt.MaxBytes)
	}
	copy(d.Sum[:], h.Sum(nil))
	return d, nil
}
