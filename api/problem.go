package api

import (
	"fmt"
	"time"
)

// Kind is what went wrong in a Backend call, in the domain's words; the HTTP server alone
// decides which status says it (apiserver's statusOf; docs/API.md lists them).
type Kind int

const (
	// Internal: a failure of the daemon's own. Its detail is logged, not sent.
	Internal Kind = iota
	// Invalid: a value the call may not have (a timeout out of range).
	Invalid
	// BadRequest: a request that cannot be carried out as asked (a path outside /sandbox, a
	// URL that is not http).
	BadRequest
	// NotFound: no such session or file.
	NotFound
	// Forbidden: refused by a rule (a symbolic link is not followed).
	Forbidden
	// Conflict: the target is not what the call needs (not a regular file; leased).
	Conflict
	// TooLarge: over a size limit.
	TooLarge
	// Busy: nothing can serve the call now (no worker, containerd away, shutting down);
	// RetryAfter says when to come back.
	Busy
	// Lost: what the call relied on went away (the worker died, the session was released);
	// the fields say what was kept.
	Lost
	// Timeout: the call ran past its limit.
	Timeout
	// Upstream: another server (an object store) failed a transfer.
	Upstream
)

// Problem is a Backend's failure: its kind, what the caller is told (Detail, and After in
// the body), when to retry, and the Cause, which is logged and never sent.
type Problem struct {
	Kind   Kind
	Detail string
	// Field is the request's field a refusal (422) is about, e.g. "limits.memory_mb".
	Field string
	After *Aftermath
	// Ended says why the session a call named ended (a 404 of ?create=false).
	Ended      *PreviousSession
	RetryAfter time.Duration
	Cause      error
}

// Refuse is an Invalid problem about a request's field.
func Refuse(field, format string, args ...any) *Problem {
	return &Problem{Kind: Invalid, Field: field, Detail: fmt.Sprintf(format, args...)}
}

// Aftermath is what a call that failed left behind: the worker it ran on, what of the
// session was kept, and what its code printed before it failed. Its fields go into the
// error's body beside detail.
type Aftermath struct {
	WorkerID string `json:"worker_id,omitempty"`
	// StatePreserved: the session kept its variables (a timeout; a released session).
	StatePreserved *bool `json:"state_preserved,omitempty"`
	// FilesKept: the files under /sandbox were kept.
	FilesKept *bool `json:"files_kept,omitempty"`
	// KernelRestarted: the kernel died and was restarted in the same worker (false: it
	// could not be).
	KernelRestarted *bool   `json:"kernel_restarted,omitempty"`
	Stdout          *string `json:"stdout,omitempty"`
	Stderr          *string `json:"stderr,omitempty"`
}

// Flag is a *bool of b, for Aftermath's fields.
func Flag(b bool) *bool { return &b }

// Fail makes a Problem of kind with a formatted detail.
func Fail(kind Kind, format string, args ...any) *Problem {
	return &Problem{Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

func (p *Problem) Error() string {
	if p.Cause != nil {
		return fmt.Sprintf("%s: %v", p.Detail, p.Cause)
	}
	return p.Detail
}

func (p *Problem) Unwrap() error { return p.Cause }
