package raftnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
)

// Client talks to one raftnode's HTTP API; it implements kvtest.Target.
type Client struct {
	Base string // http://host:port
	HTTP *http.Client
}

// Propose implements kvtest.Target. Errors map back to raftcore's typed
// errors: "none" outcome -> ErrNoLeader, otherwise ErrLeaderLost.
func (c *Client) Propose(ctx context.Context, p raftcore.Proposal) (raftcore.Result, error) {
	u := fmt.Sprintf("%s/propose?session=%d&seq=%d", c.Base, p.Session, p.Seq)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(string(p.Data)))
	if err != nil {
		return raftcore.Result{}, err
	}
	resp, err := c.HTTP.Do(req)
	if errors.Is(err, syscall.ECONNREFUSED) {
		// Nothing listens there: the request certainly was not proposed.
		return raftcore.Result{}, fmt.Errorf("%w: %w", raftcore.ErrNoLeader, err)
	}
	if err != nil {
		// The request may have reached the node: outcome unknown.
		return raftcore.Result{}, fmt.Errorf("%w: %w", raftcore.ErrLeaderLost, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return raftcore.Result{}, fmt.Errorf("%w: %w", raftcore.ErrLeaderLost, err)
	}
	if resp.StatusCode != http.StatusOK {
		return raftcore.Result{}, respErr(resp, body)
	}
	idx, _ := strconv.ParseUint(resp.Header.Get("X-Raft-Index"), 10, 64)
	return raftcore.Result{Index: idx, Value: body}, nil
}

// Read implements kvtest.Target.
func (c *Client) Read(ctx context.Context, key string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+"/read?key="+url.QueryEscape(key), nil)
	if err != nil {
		return "", err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", respErr(resp, body)
	}
	return string(body), nil
}

func respErr(resp *http.Response, body []byte) error {
	msg := strings.TrimSpace(string(body))
	switch resp.Header.Get("X-Raft-Outcome") {
	case outcomeNone:
		return fmt.Errorf("%w: %s", raftcore.ErrNoLeader, msg)
	case outcomeApplied:
		return &raftcore.ApplyError{Msg: msg}
	default:
		return fmt.Errorf("%w: http %d: %s", raftcore.ErrLeaderLost, resp.StatusCode, msg)
	}
}

// Status returns the member's raft status (GET /status).
func (c *Client) Status(ctx context.Context) (raftcore.Status, error) {
	var st raftcore.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status: http %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	return st, nil
}

// Leader polls the members' status until one reports itself leader and
// returns its id; members that do not answer are skipped (they may be down).
func Leader(ctx context.Context, members map[uint64]*Client, poll time.Duration) (uint64, error) {
	for {
		for id, c := range members {
			if st, err := c.Status(ctx); err == nil && st.State == "StateLeader" {
				return id, nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no member reported itself leader: %w", ctx.Err())
		case <-time.After(poll):
		}
	}
}
