package api

import (
	"context"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// The session calls of the Go client (docs/API.md#sessions).

// CreateSession makes a session with the shape asked for; its AccessToken reaches it alone.
func (c *Client) CreateSession(ctx context.Context, req CreateSessionRequest) (*Session, error) {
	var s Session
	if err := c.do(ctx, http.MethodPost, "/api/v1/sessions", nil, req, &s, http.StatusCreated); err != nil {
		return nil, err
	}
	return &s, nil
}

// Sessions lists one page of sessions.
func (c *Client) Sessions(ctx context.Context, q SessionQuery) (*SessionList, error) {
	v := url.Values{}
	if len(q.Metadata) > 0 {
		keys := make([]string, 0, len(q.Metadata))
		for k := range q.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v.Set("metadata."+k, q.Metadata[k]) // the form a value with a comma needs too
		}
	}
	for name, val := range map[string]string{"environment": q.Environment, "state": q.State, "page_token": q.PageToken, "tenant": q.Tenant} {
		if val != "" {
			v.Set(name, val)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var list SessionList
	if err := c.do(ctx, http.MethodGet, "/api/v1/sessions", v, nil, &list, http.StatusOK); err != nil {
		return nil, err
	}
	return &list, nil
}

// Session reads a session: a running one with its usage, or an ended one with why.
func (c *Client) Session(ctx context.Context, id string) (*Session, error) {
	var s Session
	if err := c.do(ctx, http.MethodGet, sessionPath(id), nil, nil, &s, http.StatusOK); err != nil {
		return nil, err
	}
	return &s, nil
}

// UpdateSession changes a running session (PATCH).
func (c *Client) UpdateSession(ctx context.Context, id string, req UpdateSessionRequest) (*Session, error) {
	var s Session
	if err := c.do(ctx, http.MethodPatch, sessionPath(id), nil, req, &s, http.StatusOK); err != nil {
		return nil, err
	}
	return &s, nil
}

// DeleteSession ends a session.
func (c *Client) DeleteSession(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, sessionPath(id), nil, nil, nil, http.StatusNoContent)
}

func sessionPath(id string) string {
	return "/api/v1/sessions/" + url.PathEscape(strings.TrimSpace(id))
}

// Environments lists the environments (pool counts for an admin key).
func (c *Client) Environments(ctx context.Context) ([]Environment, error) {
	var envs []Environment
	if err := c.do(ctx, http.MethodGet, "/api/v1/environments", nil, nil, &envs, http.StatusOK); err != nil {
		return nil, err
	}
	return envs, nil
}

// SetNetwork replaces a running session's network policy (PUT …/network).
func (c *Client) SetNetwork(ctx context.Context, id string, p NetworkPolicy) (*Session, error) {
	var s Session
	if err := c.do(ctx, http.MethodPut, sessionPath(id)+"/network", nil, p, &s, http.StatusOK); err != nil {
		return nil, err
	}
	return &s, nil
}

// NetworkEvents returns a session's network decisions from seq since on, at most limit.
func (c *Client) NetworkEvents(ctx context.Context, id string, since uint64, limit int) (*NetworkEvents, error) {
	q := url.Values{"since": {strconv.FormatUint(since, 10)}, "limit": {strconv.Itoa(limit)}}
	var ev NetworkEvents
	if err := c.do(ctx, http.MethodGet, sessionPath(id)+"/network/events", q, nil, &ev, http.StatusOK); err != nil {
		return nil, err
	}
	return &ev, nil
}

// CreateSnapshot takes a snapshot of session id's disk (POST /api/v1/sessions/{id}/snapshots).
func (c *Client) CreateSnapshot(ctx context.Context, id string, req CreateSnapshotRequest) (*Snapshot, error) {
	var s Snapshot
	if err := c.do(ctx, http.MethodPost, sessionPath(id)+"/snapshots", nil, req, &s, http.StatusCreated); err != nil {
		return nil, err
	}
	return &s, nil
}

// Snapshots lists the caller's snapshots.
func (c *Client) Snapshots(ctx context.Context) (*SnapshotList, error) {
	var l SnapshotList
	if err := c.do(ctx, http.MethodGet, "/api/v1/snapshots", nil, nil, &l, http.StatusOK); err != nil {
		return nil, err
	}
	return &l, nil
}

// Snapshot returns one of the caller's snapshots.
func (c *Client) Snapshot(ctx context.Context, id string) (*Snapshot, error) {
	var s Snapshot
	if err := c.do(ctx, http.MethodGet, "/api/v1/snapshots/"+url.PathEscape(id), nil, nil, &s, http.StatusOK); err != nil {
		return nil, err
	}
	return &s, nil
}

// DeleteSnapshot deletes one of the caller's snapshots.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/snapshots/"+url.PathEscape(id), nil, nil, nil, http.StatusNoContent)
}

// Fork makes new sessions from session id's disk as it is now.
func (c *Client) Fork(ctx context.Context, id string, ids ...string) (*ForkResponse, error) {
	var f ForkResponse
	if err := c.do(ctx, http.MethodPost, sessionPath(id)+"/fork", nil, ForkRequest{SessionIDs: ids}, &f, http.StatusCreated); err != nil {
		return nil, err
	}
	return &f, nil
}

// CreateVolume makes a named volume.
func (c *Client) CreateVolume(ctx context.Context, req CreateVolumeRequest) (*Volume, error) {
	var v Volume
	if err := c.do(ctx, http.MethodPost, "/api/v1/volumes", nil, req, &v, http.StatusCreated); err != nil {
		return nil, err
	}
	return &v, nil
}

// Volumes lists the caller's volumes.
func (c *Client) Volumes(ctx context.Context) (*VolumeList, error) {
	var l VolumeList
	if err := c.do(ctx, http.MethodGet, "/api/v1/volumes", nil, nil, &l, http.StatusOK); err != nil {
		return nil, err
	}
	return &l, nil
}

// Volume returns one of the caller's volumes.
func (c *Client) Volume(ctx context.Context, name string) (*Volume, error) {
	var v Volume
	if err := c.do(ctx, http.MethodGet, "/api/v1/volumes/"+url.PathEscape(name), nil, nil, &v, http.StatusOK); err != nil {
		return nil, err
	}
	return &v, nil
}

// DeleteVolume deletes one of the caller's volumes (409 while a session has it).
func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/volumes/"+url.PathEscape(name), nil, nil, nil, http.StatusNoContent)
}
