package api

import "encoding/json"

// Event is one message of a streamed execute: the websocket of GET /api/v1/stream, or the
// server-sent events of POST /api/v1/execute with Accept: text/event-stream. A call's
// events come in order, each with its id: stdout and stderr (Text), display (Data), result
// (Data, ExecutionCount), error (Ename, Evalue, Traceback), then exactly one done. An
// error event with Ename "ProtocolError" answers a message the stream could not take.
type Event struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`

	Text           string                     `json:"text,omitempty"`
	Data           map[string]json.RawMessage `json:"data,omitempty"`
	ExecutionCount int                        `json:"execution_count,omitempty"`
	Ename          string                     `json:"ename,omitempty"`
	Evalue         string                     `json:"evalue,omitempty"`
	Traceback      []string                   `json:"traceback,omitempty"`
	// ExitCode is a bash call's exit status when it was not 0 (error, Ename "ExitStatus").
	ExitCode *int `json:"exit_code,omitempty"`

	// done: how the call ended (Done*), whether the session kept its state, how much
	// output did not reach the caller, whether the call created the session; Detail says
	// more when it did not end well.
	Status         string  `json:"status,omitempty"`
	StatePreserved bool    `json:"state_preserved,omitempty"`
	DurationMS     float64 `json:"duration_ms,omitempty"`
	DroppedBytes   int64   `json:"dropped_bytes,omitempty"`
	NewSession     bool    `json:"new_session,omitempty"`
	// PreviousSession: see ExecuteResponse.
	PreviousSession *PreviousSession `json:"previous_session,omitempty"`
	WorkerID        string           `json:"worker_id,omitempty"`
	Detail          string           `json:"detail,omitempty"`

	// network: a decision of the session's network policy while the call ran (a denial);
	// done: the call's denials, as in ExecuteResponse.
	Network             *NetworkEvent  `json:"network,omitempty"`
	NetworkDenials      []NetworkEvent `json:"network_denials,omitempty"`
	NetworkDenialsTotal int            `json:"network_denials_total,omitempty"`
}

// Event types.
const (
	EventStdout  = "stdout"
	EventStderr  = "stderr"
	EventDisplay = "display"
	EventResult  = "result"
	EventError   = "error"
	EventDone    = "done"
	EventNetwork = "network"
)

// Statuses of a done event.
const (
	DoneOK          = "ok"
	DoneError       = "error"
	DoneTimeout     = "timeout"
	DoneInterrupted = "interrupted"
	DoneDied        = "died"
	DoneBusy        = "busy"
)

// ProtocolError is the Ename of an error event that answers a message the stream could not
// take (not JSON, an unknown type, a missing or repeated id).
const ProtocolError = "ProtocolError"

// MarshalJSON writes a done event with all its fields, and others without empty ones.
func (e Event) MarshalJSON() ([]byte, error) {
	type plain Event
	if e.Type != EventDone {
		return json.Marshal(plain(e))
	}
	return json.Marshal(struct {
		Type           string           `json:"type"`
		ID             string           `json:"id,omitempty"`
		Status         string           `json:"status"`
		StatePreserved bool             `json:"state_preserved"`
		ExecutionCount int              `json:"execution_count"`
		DurationMS     float64          `json:"duration_ms"`
		DroppedBytes   int64            `json:"dropped_bytes"`
		NewSession     bool             `json:"new_session"`
		WorkerID       string           `json:"worker_id,omitempty"`
		Detail         string           `json:"detail,omitempty"`
		Previous       *PreviousSession `json:"previous_session,omitempty"`
		Denials        []NetworkEvent   `json:"network_denials,omitempty"`
		DenialsTotal   int              `json:"network_denials_total,omitempty"`
	}{e.Type, e.ID, e.Status, e.StatePreserved, e.ExecutionCount, e.DurationMS, e.DroppedBytes, e.NewSession, e.WorkerID, e.Detail,
		e.PreviousSession, e.NetworkDenials, e.NetworkDenialsTotal})
}

// Streamer is an Output that also takes what a call produces as it happens.
type Streamer interface {
	Output
	// Stream receives the call's output as it arrives, in order. It must not block: a
	// caller that reads slowly has its output dropped (and counted), never waited for.
	Stream(Event)
	// Started hands over the call's interrupt (SIGINT to its kernel) once the code was
	// sent; the interrupt does nothing after the call ended.
	Started(interrupt func())
}
