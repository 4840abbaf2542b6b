package daemon

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/api"
)

// maxDetail bounds the detail of an error answer.
const maxDetail = 4096

// toResponse maps a kernel result to the answer of an execute (docs/API.md).
func toResponse(workerID string, r *agent.Result, took time.Duration) *api.ExecuteResponse {
	resp := &api.ExecuteResponse{
		WorkerID:       workerID,
		Stdout:         r.Stdout,
		Stderr:         r.Stderr,
		Results:        make([]map[string]json.RawMessage, 0, len(r.Outputs)),
		ExecutionCount: r.ExecutionCount,
		DurationMS:     float64(took.Microseconds()) / 1000,
		Truncated:      r.Truncated,
	}
	var lastValue string
	haveValue := false
	for _, o := range r.Outputs {
		resp.Results = append(resp.Results, o.Data)
		if png, ok := o.Text("image/png"); ok {
			resp.ResultBase64 = &png
		}
		if o.Type == "execute_result" {
			lastValue, haveValue = o.Text("text/plain")
		}
	}
	// result_text is what a person would have seen: the printed output, then the value
	// of the last expression.
	if text := r.Stdout + lastValue; r.Stdout != "" || haveValue {
		resp.ResultText = &text
	}
	if r.Error != nil {
		resp.Error = &api.ExecError{Ename: r.Error.Ename, Evalue: r.Error.Evalue, Traceback: r.Error.Traceback, ExitCode: r.Error.ExitCode}
		resp.Detail = r.Error.Ename
		if r.Error.Evalue != "" {
			resp.Detail += ": " + r.Error.Evalue
		}
		// The summary a person reads; the whole value is in error.evalue.
		if len(resp.Detail) > maxDetail {
			resp.Detail = strings.ToValidUTF8(resp.Detail[:maxDetail], "") + "…"
		}
	} else if r.Status == "error" {
		resp.Error = &api.ExecError{Ename: "Error", Traceback: []string{}}
		resp.Detail = "the kernel reported an error"
	}
	if r.StateLost {
		lost := false
		resp.StatePreserved = &lost
	}
	return resp
}

// aftermath is a, with the failed call's worker and the output it produced first.
func aftermath(workerID string, r *agent.Result, a api.Aftermath) *api.Aftermath {
	a.WorkerID = workerID
	if r != nil {
		a.Stdout, a.Stderr = &r.Stdout, &r.Stderr
	}
	return &a
}
