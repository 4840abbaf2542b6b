package api

import (
	"context"
	"time"
)

// Sessions as resources (docs/API.md#sessions): made with a shape of their own, listed by
// their metadata, with a lifetime, limits changed while they run, and a reason when they
// end.

// Limits are a session's resources. In a request a zero field means the environment's
// default; in an answer every field is what is in force.
type Limits struct {
	// CPU is cores (a CFS quota); more than 0.
	CPU float64 `json:"cpu,omitempty"`
	// MemoryMB is the memory limit, swap not allowed beyond it.
	MemoryMB int `json:"memory_mb,omitempty"`
	// DiskMB is the size of the session's disk at /sandbox.
	DiskMB int `json:"disk_mb,omitempty"`
	// Pids bounds the session's processes and threads.
	Pids int `json:"pids,omitempty"`
}

// CreateSessionRequest is the body of POST /api/v1/sessions; every field is optional.
type CreateSessionRequest struct {
	// SessionID names the session (the user_uuid of the other calls); absent: one is made.
	SessionID   string  `json:"session_id,omitempty"`
	Environment string  `json:"environment,omitempty"`
	Limits      *Limits `json:"limits,omitempty"`
	// Timeout is the session's whole lifetime in seconds from now; absent or 0: the
	// operator's --session-ttl (none by default).
	Timeout *float64 `json:"timeout,omitempty"`
	// IdleTimeout replaces --idle-timeout for this session, in seconds.
	IdleTimeout *float64          `json:"idle_timeout,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	// Env is set for every interpreter and process of the session before its first code
	// runs. Its values are never logged nor returned.
	Env map[string]string `json:"env,omitempty"`
	// Network opens what it names to the session's worker (SPEC 3.12); absent: nothing.
	Network *NetworkPolicy `json:"network,omitempty"`
	// FromSnapshot starts the session on a copy of a snapshot's disk, with the snapshot's
	// environment, limits, network policy, variables and metadata where the request does
	// not name its own (SPEC 3.14).
	FromSnapshot string `json:"from_snapshot,omitempty"`
	// Volumes are mounted into the session, each at a directory under /sandbox.
	Volumes []VolumeMount `json:"volumes,omitempty"`
}

// UpdateSessionRequest is the body of PATCH /api/v1/sessions/{id}: what it names changes,
// the rest stays.
type UpdateSessionRequest struct {
	// Timeout restarts the lifetime from now (0: none).
	Timeout     *float64 `json:"timeout,omitempty"`
	IdleTimeout *float64 `json:"idle_timeout,omitempty"`
	// Metadata replaces the session's metadata ({} clears it).
	Metadata *map[string]string `json:"metadata,omitempty"`
	// Limits changes what it names: CPU, memory and pids up or down, the disk only up.
	Limits *Limits `json:"limits,omitempty"`
	// Network replaces the session's policy: new connections follow within a second, open
	// ones it no longer allows are cut.
	Network *NetworkPolicy `json:"network,omitempty"`
}

// Session states.
const (
	SessionRunning = "running"
	SessionEnded   = "ended"
)

// Why a session ended.
const (
	EndReleased        = "released"          // its owner released or deleted it
	EndIdleTimeout     = "idle_timeout"      // unused for its idle timeout
	EndTTLExpired      = "ttl_expired"       // its lifetime (timeout) ran out
	EndWorkerLost      = "worker_lost"       // its container or kernel died and could not be kept
	EndHostRestart     = "host_restart"      // codeboxd found its worker gone at start
	EndEvicted         = "evicted"           // an administrator ended it
	EndDestroyedOnStop = "destroyed_on_stop" // codeboxd stopped with --destroy-on-stop
)

// Session is a session as the API shows it.
type Session struct {
	SessionID string `json:"session_id"`
	// Tenant is the name of the key that owns the session (shown to admin keys).
	Tenant         string            `json:"tenant,omitempty"`
	WorkerID       string            `json:"worker_id,omitempty"`
	Environment    string            `json:"environment"`
	State          string            `json:"state"`
	Limits         Limits            `json:"limits"`
	Metadata       map[string]string `json:"metadata"`
	EnvNames       []string          `json:"env_names"`
	CreatedAt      time.Time         `json:"created_at"`
	LastActivityAt time.Time         `json:"last_activity_at"`
	ExpiresAt      *time.Time        `json:"expires_at"`
	// IdleTimeout is seconds.
	IdleTimeout float64 `json:"idle_timeout"`
	// Network is what its worker may reach.
	Network NetworkPolicy `json:"network"`
	// Volumes are the volumes mounted in it.
	Volumes []VolumeMount `json:"volumes,omitempty"`
	// AccessToken reaches this session alone; only in the answer that created it.
	AccessToken string `json:"access_token,omitempty"`
	// Usage is in the answer of GET of one running session.
	Usage       *Usage     `json:"usage,omitempty"`
	EndedAt     *time.Time `json:"ended_at,omitempty"`
	EndedReason string     `json:"ended_reason,omitempty"`
}

// Usage is what a session's worker uses now.
type Usage struct {
	CPUSeconds      float64 `json:"cpu_seconds"`
	MemoryBytes     int64   `json:"memory_bytes"`
	MemoryPeakBytes int64   `json:"memory_peak_bytes"`
	DiskUsedBytes   int64   `json:"disk_used_bytes"`
	DiskTotalBytes  int64   `json:"disk_total_bytes"`
	Processes       int     `json:"processes"`
}

// SessionQuery selects sessions for GET /api/v1/sessions.
type SessionQuery struct {
	// Metadata pairs must all match.
	Metadata    map[string]string
	Environment string
	// State is running (the default), ended or all.
	State string
	// Limit is at most MaxSessionsPage; 0: DefaultSessionsPage.
	Limit     int
	PageToken string
	// Tenant, for an admin key, lists one tenant's sessions; empty: every tenant's.
	Tenant string
}

// Pages of GET /api/v1/sessions.
const (
	DefaultSessionsPage = 100
	MaxSessionsPage     = 1000
)

// SessionList is the body of GET /api/v1/sessions.
type SessionList struct {
	Sessions      []Session `json:"sessions"`
	NextPageToken *string   `json:"next_page_token"`
}

// Bounds of a session's metadata and environment.
const (
	MaxMetadataPairs  = 32
	MaxMetadataKey    = 64
	MaxMetadataValue  = 512
	MaxEnvVars        = 64
	MaxEnvValueBytes  = 32 << 10
	MaxEnvTotalBytes  = 256 << 10
	SessionIDPrefix   = "s-"
	AccessTokenPrefix = "cbs_"
)

// PreviousSession says why the earlier session of an id ended, in the answer of the call that
// made a new one in its place.
type PreviousSession struct {
	EndedReason string    `json:"ended_reason"`
	EndedAt     time.Time `json:"ended_at"`
}

// Caller is who makes a call: a key (a tenant, maybe an admin), or a session's access
// token, which reaches that session alone.
type Caller struct {
	Tenant string
	Admin  bool
	// Session is the one session an access token reaches ("": a key).
	Session string
	// Operator: an admin acting on another tenant's sessions (?tenant=); a session it ends
	// is evicted.
	Operator bool
}

// DefaultTenant is the tenant of AUTH_TOKEN (or the token file), and of callers in the
// daemon's own process that name none.
const DefaultTenant = "default"

type callerKey struct{}

// WithCaller is ctx carrying who makes the call.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerOf is who makes the call of ctx: the default tenant when nobody says.
func CallerOf(ctx context.Context) Caller {
	if c, ok := ctx.Value(callerKey{}).(Caller); ok {
		return c
	}
	return Caller{Tenant: DefaultTenant, Admin: true}
}

type noCreateKey struct{}

// WithoutCreate is ctx for a call that must not create its session (?create=false): an
// unknown or ended session is a 404 saying why.
func WithoutCreate(ctx context.Context) context.Context {
	return context.WithValue(ctx, noCreateKey{}, true)
}

// MayCreate reports whether the call of ctx may create its session.
func MayCreate(ctx context.Context) bool {
	no, _ := ctx.Value(noCreateKey{}).(bool)
	return !no
}
