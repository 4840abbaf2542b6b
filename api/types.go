// Package api is the contract of codeboxd's REST API (docs/API.md): its JSON types, the
// domain's failures (Problem and its kinds), the Backend and Output interfaces the daemon
// implements, the OpenAPI document, and a Go client for the same API. It links nothing of
// HTTP serving (package apiserver) and knows nothing of containers or kernels.
package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ExecuteRequest is the body of POST /api/v1/execute.
type ExecuteRequest struct {
	Code string `json:"code"`
	// Timeout in seconds, more than 0 and at most the daemon's --max-exec-timeout; absent
	// means its --exec-timeout.
	Timeout *float64 `json:"timeout,omitempty"`
	// Language is the interpreter: python (the default), javascript, typescript or bash.
	Language string `json:"language,omitempty"`
	// UserUUID may come in the body for clients of the older form.
	UserUUID string `json:"user_uuid,omitempty"`
}

// Languages are the values ExecuteRequest.Language may have ("" is python).
var Languages = []string{"python", "javascript", "typescript", "bash"}

// Validate checks what the API can check of a request before it reaches a session;
// maxTimeout (when not 0) is the daemon's --max-exec-timeout.
func (r *ExecuteRequest) Validate(maxTimeout time.Duration) error {
	if strings.TrimSpace(r.Code) == "" {
		return Errorf(http.StatusUnprocessableEntity, "code must not be empty")
	}
	if r.Timeout != nil && !(*r.Timeout > 0) {
		return Errorf(http.StatusUnprocessableEntity, "timeout must be a positive number of seconds")
	}
	if r.Timeout != nil && maxTimeout > 0 && *r.Timeout > maxTimeout.Seconds() {
		return Errorf(http.StatusUnprocessableEntity, "timeout must be at most %g seconds", maxTimeout.Seconds())
	}
	if r.Language != "" && !slices.Contains(Languages, r.Language) {
		return Errorf(http.StatusBadRequest, "unknown language %q: it must be one of %s", Echo(r.Language), strings.Join(Languages, ", "))
	}
	return nil
}

// ExecuteResponse is the body of an execute answer: 200 when the code ran to completion,
// 400 when it raised (Error set, Detail "Ename: evalue").
type ExecuteResponse struct {
	WorkerID       string                       `json:"worker_id"`
	ResultText     *string                      `json:"result_text"`
	ResultBase64   *string                      `json:"result_base64"`
	Stdout         string                       `json:"stdout"`
	Stderr         string                       `json:"stderr"`
	Results        []map[string]json.RawMessage `json:"results"`
	ExecutionCount int                          `json:"execution_count"`
	DurationMS     float64                      `json:"duration_ms"`
	// NewSession is set when this call created the session: its first call, or the first
	// after the session was released, recycled or lost.
	NewSession bool `json:"new_session"`
	// PreviousSession, when this call made the session in place of an earlier one of the
	// same id that ended, says why that one ended.
	PreviousSession *PreviousSession `json:"previous_session,omitempty"`
	Truncated       bool             `json:"truncated,omitempty"`
	Detail          string           `json:"detail,omitempty"`
	Error           *ExecError       `json:"error,omitempty"`
	// StatePreserved is false (and only then present) when the call's language
	// interpreter ended or was killed during it: its state is lost, the others' are not.
	StatePreserved *bool `json:"state_preserved,omitempty"`
	// NetworkDenials are the first MaxNetworkDenials connections and names the session's
	// network policy denied while the call ran; NetworkDenialsTotal counts them all.
	NetworkDenials      []NetworkEvent `json:"network_denials,omitempty"`
	NetworkDenialsTotal int            `json:"network_denials_total,omitempty"`

	// For a streamed call's done event: the caller's interrupt stopped the code (Error is
	// its KeyboardInterrupt), and what the output cap dropped.
	Interrupted  bool  `json:"-"`
	DroppedBytes int64 `json:"-"`
}

// ExecError is the exception user code raised.
type ExecError struct {
	Ename     string   `json:"ename"`
	Evalue    string   `json:"evalue"`
	Traceback []string `json:"traceback"`
	// ExitCode is a bash call's exit status when it was not 0 (Ename "ExitStatus").
	ExitCode *int `json:"exit_code,omitempty"`
}

// Status is the body of GET /api/v1/status.
type Status struct {
	TotalWorkers      int  `json:"total_workers"`
	BusyWorkers       int  `json:"busy_workers"`
	IdleWorkers       int  `json:"idle_workers"`
	CreatingWorkers   int  `json:"creating_workers"`
	MinIdleWorkers    int  `json:"min_idle_workers"`
	MaxTotalWorkers   int  `json:"max_total_workers"`
	IsInitializing    bool `json:"is_initializing"`
	IdleWorkersInPool int  `json:"idle_workers_in_pool"`
}

// Error is an answer other than success: its Status and a JSON body {"detail": ...} plus
// After's fields. Cause is logged, never sent.
type Error struct {
	Status     int
	Detail     string
	Field      string
	After      *Aftermath
	Ended      *PreviousSession
	RetryAfter time.Duration
	Cause      error
}

// ErrorBody is an Error's JSON body: detail beside the aftermath's fields.
type ErrorBody struct {
	Detail string `json:"detail"`
	Field  string `json:"field,omitempty"`
	*Aftermath
	*PreviousSession
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%d %s: %v", e.Status, e.Detail, e.Cause)
	}
	return fmt.Sprintf("%d %s", e.Status, e.Detail)
}

func (e *Error) Unwrap() error { return e.Cause }

// Errorf makes an Error with a formatted detail.
func Errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Detail: fmt.Sprintf(format, args...)}
}

// MaxUserUUIDLength is the longest user_uuid accepted.
const MaxUserUUIDLength = 128

// UserUUIDPattern is what a user_uuid matches, for schemas.
const UserUUIDPattern = `^[A-Za-z0-9._-]{1,128}$`

var userUUIDPattern = regexp.MustCompile(UserUUIDPattern)

// ValidateUserUUID checks a user_uuid: 1..128 characters of A-Z a-z 0-9 . _ -.
func ValidateUserUUID(u string) error {
	if u == "" {
		return Errorf(http.StatusUnprocessableEntity, "user_uuid is required")
	}
	if !userUUIDPattern.MatchString(u) {
		return Errorf(http.StatusUnprocessableEntity,
			"user_uuid must be 1..%d characters of A-Z a-z 0-9 . _ -", MaxUserUUIDLength)
	}
	return nil
}

// FileImport is one file of POST /api/v1/files: download DownloadURL into Path/Name.
type FileImport struct {
	DownloadURL string `json:"download_url"`
	Path        string `json:"path"` // a directory under /sandbox; default /sandbox/
	Name        string `json:"name"`
}

// FileExport is one file of POST /api/v1/files/export: PUT Path/Name to UploadURL.
type FileExport struct {
	Path      string `json:"path"`
	Name      string `json:"name"`
	UploadURL string `json:"upload_url"`
}

// FileRef names one file of DELETE /api/v1/files.
type FileRef struct {
	Path string `json:"path"`
	Name string `json:"name"`
}

// FilesRequest is the body of the batch file calls; Files holds FileImport, FileExport or
// FileRef items.
type FilesRequest[T any] struct {
	Files []T `json:"files"`
}

// FileResult is a file that was transferred.
type FileResult struct {
	FullPath string `json:"full_path,omitempty"`
	Path     string `json:"path,omitempty"`
	Name     string `json:"name,omitempty"`
	Size     int64  `json:"size"`
}

// FileFailure is a file that was not transferred, and why. Nothing of it was left behind.
type FileFailure struct {
	Path   string `json:"path"`
	Name   string `json:"name"`
	Detail string `json:"detail"`
}

// FilesResponse answers a batch file call: 201 (import) or 200 (export) when every file
// succeeded; 207 with Success false, the files that succeeded in Results and the others in
// Errors, when some did not.
type FilesResponse struct {
	Success bool          `json:"success"`
	Results []FileResult  `json:"results"`
	Errors  []FileFailure `json:"errors,omitempty"`
}

// FileEntry is one item of GET /api/v1/files/list.
type FileEntry struct {
	Name  string    `json:"name"`
	Size  int64     `json:"size"`
	Type  string    `json:"type"` // file, directory, symlink or other
	Mtime time.Time `json:"mtime"`
}

// ListResponse is the body of GET /api/v1/files/list: one page of a directory.
type ListResponse struct {
	Path    string      `json:"path"`
	Entries []FileEntry `json:"entries"`
	// Truncated says there are more entries; NextOffset is the offset of the next page.
	Truncated  bool `json:"truncated"`
	NextOffset int  `json:"next_offset,omitempty"`
}

// MaxListEntries bounds the entries of one page of GET /api/v1/files/list.
const MaxListEntries = 10_000

// MaxFilesPerCall bounds the files of one batch call.
const MaxFilesPerCall = 100

// TokenFile is the name of the API token's file under the daemon's state directory, and
// TokenEnv the environment variable that gives the token instead (to codeboxd and clients).
const (
	TokenFile = "auth_token"
	TokenEnv  = "AUTH_TOKEN"
)

// maxEcho bounds what an answer repeats of a caller's value.
const maxEcho = 64

// Echo is what an answer repeats of a caller's string: a prefix, never the whole of
// what may be megabytes.
func Echo(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	return strings.ToValidUTF8(s[:maxEcho], "") + "…"
}
