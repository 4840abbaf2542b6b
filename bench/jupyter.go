package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// JupyterKernel is a kernel of a Jupyter Server, driven as the seed drives its kernels: a
// REST call starts it, its channels websocket carries Jupyter's messages (JSON).
type JupyterKernel struct {
	base, token, id, session string
	conn                     *websocket.Conn
}

// StartJupyterKernel starts an ipykernel in the Jupyter Server at base (http://host:port).
func StartJupyterKernel(ctx context.Context, base, token string) (*JupyterKernel, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/kernels", strings.NewReader(`{"name": "python3"}`))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "token "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var k struct {
		ID string `json:"id"`
	}
	if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&k) != nil || k.ID == "" {
		return nil, fmt.Errorf("start kernel: %s", resp.Status)
	}
	jk := &JupyterKernel{base: base, token: token, id: k.ID, session: randomID()}
	ws := "ws" + strings.TrimPrefix(base, "http") + "/api/kernels/" + k.ID + "/channels?session_id=" + jk.session
	h := http.Header{"Authorization": {"token " + token}}
	dialer := websocket.Dialer{HandshakeTimeout: 2 * time.Minute}
	jk.conn, _, err = dialer.DialContext(ctx, ws, h)
	if err != nil {
		return nil, fmt.Errorf("kernel channels: %w", err)
	}
	return jk, nil
}

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

type jupyterMsg struct {
	Header       map[string]any  `json:"header"`
	ParentHeader map[string]any  `json:"parent_header"`
	Metadata     map[string]any  `json:"metadata"`
	Content      json.RawMessage `json:"content"`
	Channel      string          `json:"channel"`
	Buffers      []any           `json:"buffers"`
}

// Execute runs code and returns its stdout and the reply's status, once the reply and the
// kernel's return to idle have both come (as a Jupyter client waits).
func (k *JupyterKernel) Execute(ctx context.Context, code string) (stdout, status string, err error) {
	id := randomID()
	content, _ := json.Marshal(map[string]any{"code": code, "silent": false, "store_history": true,
		"user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true})
	msg := jupyterMsg{
		Header: map[string]any{"msg_id": id, "msg_type": "execute_request", "username": "bench", "session": k.session,
			"date": time.Now().UTC().Format(time.RFC3339Nano), "version": "5.3"},
		ParentHeader: map[string]any{}, Metadata: map[string]any{}, Content: content, Channel: "shell", Buffers: []any{},
	}
	if dl, ok := ctx.Deadline(); ok {
		k.conn.SetWriteDeadline(dl)
		k.conn.SetReadDeadline(dl)
	}
	if err := k.conn.WriteJSON(msg); err != nil {
		return "", "", err
	}
	var out bytes.Buffer
	replied, idle := false, false
	for !replied || !idle {
		var m jupyterMsg
		if err := k.conn.ReadJSON(&m); err != nil {
			return out.String(), status, err
		}
		if m.ParentHeader["msg_id"] != id {
			continue
		}
		switch m.Header["msg_type"] {
		case "stream":
			var c struct{ Name, Text string }
			json.Unmarshal(m.Content, &c)
			if c.Name == "stdout" {
				out.WriteString(c.Text)
			}
		case "execute_reply":
			var c struct{ Status string }
			json.Unmarshal(m.Content, &c)
			status, replied = c.Status, true
		case "status":
			var c struct {
				State string `json:"execution_state"`
			}
			json.Unmarshal(m.Content, &c)
			idle = c.State == "idle"
		}
	}
	return out.String(), status, nil
}

// Close ends the connection and shuts the kernel down.
func (k *JupyterKernel) Close() {
	k.conn.Close()
	req, _ := http.NewRequest(http.MethodDelete, k.base+"/api/kernels/"+k.id, nil)
	req.Header.Set("Authorization", "token "+k.token)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// JupyterSeed runs the seed scenario against a Jupyter Server, what the seed itself runs
// behind its gateway: one kernel per user, started first (not timed), then the same
// verified stateful calls as Seed and Direct, over Jupyter's own websocket protocol.
func JupyterSeed(ctx context.Context, base, token string, users, requests int) *Result {
	kernels := make([]*JupyterKernel, users)
	errs := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	// A few at a time: each kernel's start costs a second of CPU, and 25 at once on two
	// cores outlast the websocket handshake.
	slots := make(chan struct{}, 4)
	for u := range kernels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			k, err := StartJupyterKernel(ctx, base, token)
			if err == nil {
				_, _, err = k.Execute(ctx, "counter = 0")
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs["start: "+err.Error()]++
				if k != nil {
					k.Close()
				}
				return
			}
			kernels[u] = k
		}()
	}
	wg.Wait()
	defer func() {
		for _, k := range kernels {
			if k != nil {
				k.Close()
			}
		}
	}()
	accs := make([]userCalls, users)
	start := time.Now()
	for u, k := range kernels {
		if k == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := &accs[u]
			a.errs = map[string]int{}
			for i := 1; i <= requests && ctx.Err() == nil; i++ {
				t := time.Now()
				stdout, status, err := k.Execute(ctx, counterStep)
				d := time.Since(t)
				if err != nil || status != "ok" {
					a.errs[fmt.Sprint("error ", err, status)]++
					if err != nil {
						return // the connection is gone
					}
					continue
				}
				a.ok++
				a.lat = append(a.lat, d)
				if stdout == strconv.Itoa(i)+"\n" {
					a.good++
				}
			}
		}()
	}
	wg.Wait()
	return merged("seed scenario, Jupyter Server + ipykernel (the seed's engine)", accs, users*requests, time.Since(start), errs)
}
