package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
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

// WithTLS makes the client verify the daemon's certificate with cfg (a private CA's roots,
// say) and returns it.
func (c *Client) WithTLS(cfg *tls.Config) *Client {
	c.http.Transport.(*http.Transport).TLSClientConfig = cfg
	return c
}

// Execute runs Python code in userUUID's session. Code that raised is not an error: the
// response has Error set. Any other failure is an *Error with the daemon's status and detail.
func (c *Client) Execute(ctx context.Context, userUUID, code string, timeout time.Duration) (*ExecuteResponse, error) {
	req := ExecuteRequest{Code: code}
	if timeout > 0 {
		secs := timeout.Seconds()
		req.Timeout = &secs
	}
	return c.Run(ctx, userUUID, req)
}

// Run is Execute with every field of the request (its language, say).
func (c *Client) Run(ctx context.Context, userUUID string, req ExecuteRequest) (*ExecuteResponse, error) {
	var resp ExecuteResponse
	err := c.do(ctx, http.MethodPost, "/api/v1/execute", userQuery(userUUID), req, &resp, http.StatusOK, http.StatusBadRequest)
	if err != nil {
		return nil, err
	}
	// A 400 without an error object refused the request (an unknown language) before it ran.
	if resp.Error == nil && resp.Detail != "" && resp.WorkerID == "" {
		return nil, &Error{Status: http.StatusBadRequest, Detail: resp.Detail}
	}
	return &resp, nil
}

// Release destroys userUUID's session.
func (c *Client) Release(ctx context.Context, userUUID string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/release", userQuery(userUUID), nil, nil, http.StatusNoContent)
}

// Status returns the pool's counts.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	if err := c.do(ctx, http.MethodGet, "/api/v1/status", nil, nil, &st, http.StatusOK); err != nil {
		return nil, err
	}
	return &st, nil
}

// do sends one request. Statuses in ok decode into out (when the body is JSON); others
// become an *Error. For a 400 from execute the body is an ExecuteResponse, so 400 may be ok.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any, ok ...int) error {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
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
	if !slices.Contains(ok, resp.StatusCode) {
		return errorFrom(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return nil
}

// ImportFiles downloads files into userUUID's session. A partial failure is not
// an error: the response has Success false and lists Errors.
func (c *Client) ImportFiles(ctx context.Context, userUUID string, files []FileImport) (*FilesResponse, error) {
	var resp FilesResponse
	err := c.do(ctx, http.MethodPost, "/api/v1/files", userQuery(userUUID), FilesRequest[FileImport]{Files: files}, &resp,
		http.StatusCreated, http.StatusMultiStatus)
	return &resp, err
}

// ExportFiles uploads files of userUUID's session to their URLs.
func (c *Client) ExportFiles(ctx context.Context, userUUID string, files []FileExport) (*FilesResponse, error) {
	var resp FilesResponse
	err := c.do(ctx, http.MethodPost, "/api/v1/files/export", userQuery(userUUID), FilesRequest[FileExport]{Files: files}, &resp,
		http.StatusOK, http.StatusMultiStatus)
	return &resp, err
}

// DeleteFiles deletes files of userUUID's session.
func (c *Client) DeleteFiles(ctx context.Context, userUUID string, files []FileRef) (*FilesResponse, error) {
	resp := FilesResponse{Success: true}
	err := c.do(ctx, http.MethodDelete, "/api/v1/files", userQuery(userUUID), FilesRequest[FileRef]{Files: files}, &resp,
		http.StatusNoContent, http.StatusMultiStatus)
	return &resp, err
}

// ListFiles lists a directory of userUUID's session: the page of at most limit entries
// (0: the most a page holds) after offset; Truncated and NextOffset say whether more
// follow.
func (c *Client) ListFiles(ctx context.Context, userUUID, path string, offset, limit int) (*ListResponse, error) {
	q := url.Values{"user_uuid": {userUUID}, "path": {path}}
	if offset > 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var resp ListResponse
	err := c.do(ctx, http.MethodGet, "/api/v1/files/list", q, nil, &resp, http.StatusOK)
	return &resp, err
}

// PutFile uploads body as the file at path (e.g. /sandbox/data.csv) of userUUID's session.
func (c *Client) PutFile(ctx context.Context, userUUID, path string, body io.Reader) (*FileResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.fileURL(userUUID, path), body)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return nil, errorFrom(resp)
	}
	var res FileResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	return &res, nil
}

// GetFile downloads the file at path of userUUID's session into w.
func (c *Client) GetFile(ctx context.Context, userUUID, path string, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.fileURL(userUUID, path), nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.send(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, errorFrom(resp)
	}
	return io.Copy(w, resp.Body)
}

func (c *Client) fileURL(userUUID, path string) string {
	return c.base + "/api/v1/files/content?user_uuid=" + url.QueryEscape(userUUID) + "&path=" + url.QueryEscape(path)
}

func (c *Client) send(req *http.Request) (*http.Response, error) {
	req.Header.Set("X-Auth-Token", c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	return resp, nil
}

// errorFrom turns a non-success answer into an *Error.
func errorFrom(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	e := &Error{Status: resp.StatusCode}
	body := ErrorBody{Aftermath: &Aftermath{}, PreviousSession: &PreviousSession{}}
	if json.Unmarshal(data, &body) == nil {
		e.Detail, e.Field = body.Detail, body.Field
		if *body.Aftermath != (Aftermath{}) {
			e.After = body.Aftermath
		}
		if body.PreviousSession.EndedReason != "" {
			e.Ended = body.PreviousSession
		}
	} else {
		e.Detail = strings.TrimSpace(string(data))
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(ra) * time.Second
	}
	return e
}

func userQuery(userUUID string) url.Values { return url.Values{"user_uuid": {userUUID}} }
