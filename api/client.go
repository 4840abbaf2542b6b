package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client is a Go client of the API.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient returns a client of the daemon at base (e.g. http://127.0.0.1:3874).
func NewClient(base, token string) *Client {
	return &Client{
		base:  strings.TrimRight(base, "/"),
		token: token,
		http:  &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}},
	}
}

// Execute runs code in userUUID's session. Code that raised is not an error: the response
// has Error set. Any other failure is an *Error with the daemon's status and detail.
func (c *Client) Execute(ctx context.Context, userUUID, code string, timeout time.Duration) (*ExecuteResponse, error) {
	req := ExecuteRequest{Code: code, Timeout: timeout.Seconds()}
	var resp ExecuteResponse
	err := c.do(ctx, http.MethodPost, "/api/v1/execute", userUUID, req, &resp, http.StatusOK, http.StatusBadRequest)
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// Release destroys userUUID's session.
func (c *Client) Release(ctx context.Context, userUUID string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/release", userUUID, nil, nil, http.StatusNoContent)
}

// Status returns the pool's counts.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	if err := c.do(ctx, http.MethodGet, "/api/v1/status", "", nil, &st, http.StatusOK); err != nil {
		return nil, err
	}
	return &st, nil
}

// do sends one request. Statuses in ok decode into out (when the body is JSON); others
// become an *Error. For a 400 from execute the body is an ExecuteResponse, so 400 may be ok.
func (c *Client) do(ctx context.Context, method, path, userUUID string, in, out any, ok ...int) error {
	u := c.base + path
	if userUUID != "" {
		u += "?user_uuid=" + url.QueryEscape(userUUID)
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-Auth-Token", c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	for _, s := range ok {
		if resp.StatusCode != s {
			continue
		}
		if out != nil && len(data) > 0 {
			if err := json.Unmarshal(data, out); err != nil {
				return fmt.Errorf("%s %s: decode: %w", method, path, err)
			}
		}
		return nil
	}
	e := &Error{Status: resp.StatusCode, Fields: map[string]any{}}
	if json.Unmarshal(data, &e.Fields) == nil {
		if d, ok := e.Fields["detail"].(string); ok {
			e.Detail = d
		}
		delete(e.Fields, "detail")
	} else {
		e.Detail = strings.TrimSpace(string(data))
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(ra) * time.Second
	}
	return e
}
