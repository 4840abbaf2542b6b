package api

import "time"

// Snapshot is a session's disk at one instant, with what the session was (SPEC 3.14): its
// environment, limits, network policy, variables and metadata. Memory is always false: files
// and installed packages are kept, the kernel's variables are not.
type Snapshot struct {
	SnapshotID  string            `json:"snapshot_id"`
	SessionID   string            `json:"session_id"` // the session it was taken of
	CreatedAt   time.Time         `json:"created_at"`
	Environment string            `json:"environment"`
	Limits      Limits            `json:"limits"`
	Network     NetworkPolicy     `json:"network"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	// EnvNames are the names of its variables (their values are never returned).
	EnvNames []string `json:"env_names,omitempty"`
	Memory   bool     `json:"memory"`
	// StoredMB is what it takes on the host: a sparse copy holds only what the disk holds.
	StoredMB float64 `json:"stored_mb"`
	// FreezeMS is how long the source's disk was frozen for the copy (writes waited).
	FreezeMS float64 `json:"freeze_ms"`
}

// CreateSnapshotRequest is the body of POST /api/v1/sessions/{id}/snapshots.
type CreateSnapshotRequest struct {
	// SnapshotID names it (1-64 of a-z A-Z 0-9 . _ -); absent: one is made.
	SnapshotID string `json:"snapshot_id,omitempty"`
}

// SnapshotList is the body of GET /api/v1/snapshots.
type SnapshotList struct {
	Snapshots []Snapshot `json:"snapshots"`
}

// ForkRequest is the body of POST /api/v1/sessions/{id}/fork: 1 to MaxForks new sessions,
// each with a copy of the session's disk as it is now.
type ForkRequest struct {
	SessionIDs []string `json:"session_ids"`
}

// MaxForks bounds the sessions one fork makes.
const MaxForks = 10

// ForkResponse is the answer to a fork: the new sessions, and how long the source was frozen.
type ForkResponse struct {
	Sessions []Session `json:"sessions"`
	FreezeMS float64   `json:"freeze_ms"`
}
