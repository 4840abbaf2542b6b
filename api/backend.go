package api

import (
	"context"
	_ "embed"
	"io"
	"time"
)

// OpenAPI is the API's OpenAPI 3 document, checked against Routes by a test.
//
//go:embed openapi.json
var OpenAPI []byte

// Backend is what the handlers serve: the daemon, or a fake in tests.
type Backend interface {
	// Execute runs req.Code in userUUID's session and hands the outcome to out.Reply while
	// the session is still held, so a caller that reads its answer slowly holds up its own
	// session, never the daemon's memory: a session has at most one answer in flight. A
	// *ExecuteResponse with Error set is a 400 (the code raised); an *Error is any other
	// non-200 answer. Execute returns Reply's error (the caller went away).
	Execute(ctx context.Context, userUUID string, req ExecuteRequest, out Output) error
	// Release destroys the session's worker; no session is not an error.
	Release(ctx context.Context, userUUID string) error
	Status() Status
	// Ping reports whether the daemon can reach containerd.
	Ping(ctx context.Context) error

	// The file calls. Batch calls answer per file (see FilesResponse).
	ImportFiles(ctx context.Context, userUUID string, files []FileImport) (*FilesResponse, error)
	ExportFiles(ctx context.Context, userUUID string, files []FileExport) (*FilesResponse, error)
	DeleteFiles(ctx context.Context, userUUID string, files []FileRef) (*FilesResponse, error)
	// PutFile stores body as the file at path (e.g. /sandbox/a.csv).
	PutFile(ctx context.Context, userUUID, path string, body io.Reader) (*FileResult, error)
	// GetFile hands the file at path to send while the session is held; send's context
	// ends when the call must (released session, file timeout).
	GetFile(ctx context.Context, userUUID, path string, send func(ctx context.Context, name string, modTime time.Time, content io.ReadSeeker) error) error
	// ListFiles returns one page: at most limit entries after offset.
	ListFiles(ctx context.Context, userUUID, path string, offset, limit int) (*ListResponse, error)

	// Sessions as resources: the caller (CallerOf) is a tenant, whose sessions alone it
	// sees, or a session's access token, which reaches its session alone.
	CreateSession(ctx context.Context, req CreateSessionRequest) (*Session, error)
	ListSessions(ctx context.Context, q SessionQuery) (*SessionList, error)
	GetSession(ctx context.Context, id string) (*Session, error)
	UpdateSession(ctx context.Context, id string, req UpdateSessionRequest) (*Session, error)
	DeleteSession(ctx context.Context, id string) error

	// Environments lists the environments; pool counts for admin callers.
	Environments(ctx context.Context) ([]Environment, error)

	// SetNetwork replaces a running session's network policy (PUT …/network).
	SetNetwork(ctx context.Context, id string, p NetworkPolicy) (*Session, error)
	// NetworkEvents returns a session's network decisions from seq since on, at most limit.
	NetworkEvents(ctx context.Context, id string, since uint64, limit int) (*NetworkEvents, error)

	// Snapshots of a session's disk (SPEC 3.14), the caller's own.
	CreateSnapshot(ctx context.Context, sessionID string, req CreateSnapshotRequest) (*Snapshot, error)
	ListSnapshots(ctx context.Context) (*SnapshotList, error)
	GetSnapshot(ctx context.Context, id string) (*Snapshot, error)
	DeleteSnapshot(ctx context.Context, id string) error
	// Fork makes new sessions, each with a copy of the session's disk as it is now.
	Fork(ctx context.Context, sessionID string, req ForkRequest) (*ForkResponse, error)

	// Named volumes (SPEC 3.14), the caller's own.
	CreateVolume(ctx context.Context, req CreateVolumeRequest) (*Volume, error)
	ListVolumes(ctx context.Context) (*VolumeList, error)
	GetVolume(ctx context.Context, name string) (*Volume, error)
	DeleteVolume(ctx context.Context, name string) error
}

// Output receives what an execute produces.
type Output interface {
	// Reply is the call's answer: resp, or an error (an *Error for a non-200 answer). It is
	// called once, with the session held; ctx ends when the session is released.
	Reply(ctx context.Context, resp *ExecuteResponse, err error) error
}

// ReplyFunc is an Output that only takes the answer.
type ReplyFunc func(ctx context.Context, resp *ExecuteResponse, err error) error

// Reply implements Output.
func (f ReplyFunc) Reply(ctx context.Context, resp *ExecuteResponse, err error) error {
	return f(ctx, resp, err)
}

// Collect runs an execute on b and returns its answer: for callers in the same process.
func Collect(ctx context.Context, b Backend, userUUID string, req ExecuteRequest) (*ExecuteResponse, error) {
	var resp *ExecuteResponse
	var rerr error
	err := b.Execute(ctx, userUUID, req, ReplyFunc(func(_ context.Context, r *ExecuteResponse, err error) error {
		resp, rerr = r, err
		return nil
	}))
	if rerr != nil {
		return nil, rerr
	}
	return resp, err
}

// SessionHeader names, on an answer that reached a session (2xx, 400 from code that
// raised, a websocket's 101), the session's user_uuid. A load balancer keeps where sessions
// live from these answers (HAProxy's stick store-response), never from requests, which
// anyone may send.
const SessionHeader = "X-Codebox-Session"

// MaxJSONBody bounds a JSON request body; larger ones get 413.
const MaxJSONBody = 8 << 20
