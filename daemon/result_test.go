package daemon

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/codebox/codebox/agent"
)

func raw(s string) json.RawMessage { b, _ := json.Marshal(s); return b }

func TestToResponse(t *testing.T) {
	r := &agent.Result{
		Status: "ok", ExecutionCount: 4, Stdout: "hello\n",
		Outputs: []agent.Output{
			{Type: "display_data", Data: map[string]json.RawMessage{"image/png": raw("AAA"), "text/plain": raw("<Figure>")}},
			{Type: "display_data", Data: map[string]json.RawMessage{"image/png": raw("BBB")}},
			{Type: "execute_result", Data: map[string]json.RawMessage{"text/plain": raw("42")}},
		},
	}
	resp := toResponse("w-1", r, 1500*time.Microsecond)
	if resp.ResultText == nil || *resp.ResultText != "hello\n42" {
		t.Fatalf("result_text = %v", resp.ResultText)
	}
	if resp.ResultBase64 == nil || *resp.ResultBase64 != "BBB" {
		t.Fatalf("result_base64 = %v (want the last PNG)", resp.ResultBase64)
	}
	if len(resp.Results) != 3 || resp.ExecutionCount != 4 || resp.DurationMS != 1.5 || resp.Error != nil {
		t.Fatalf("resp = %+v", resp)
	}

	empty := toResponse("w-1", &agent.Result{Status: "ok"}, 0)
	if empty.ResultText != nil || empty.ResultBase64 != nil || empty.Results == nil {
		t.Fatalf("nothing printed: %+v", empty)
	}

	failed := toResponse("w-1", &agent.Result{Status: "error", Stdout: "x\n",
		Error: &agent.Error{Ename: "ZeroDivisionError", Evalue: "division by zero", Traceback: []string{"tb"}}}, 0)
	if failed.Error == nil || failed.Detail != "ZeroDivisionError: division by zero" || failed.Stdout != "x\n" {
		t.Fatalf("error: %+v", failed)
	}
}
