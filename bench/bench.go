// Package bench measures codebox: the seed scenario (users × stateful requests, each result
// verified) through the REST API and, as a baseline, straight against the workers' kernel
// agents; single-session latency; a new session's first execute from a warm pool; cold
// starts; idle worker memory; how soon a streamed print reaches its client. Every loop is
// bounded in count and in time.
package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codebox/codebox/agent"
	"github.com/codebox/codebox/api"
)

// Result is one scenario's figures.
type Result struct {
	Name        string         `json:"name"`
	Requests    int            `json:"requests"`
	Seconds     float64        `json:"seconds"`
	PerSecond   float64        `json:"requests_per_second"`
	SuccessPct  float64        `json:"success_pct"`
	VerifiedPct float64        `json:"verified_pct"`
	P50ms       float64        `json:"p50_ms"`
	P95ms       float64        `json:"p95_ms"`
	P99ms       float64        `json:"p99_ms"`
	MaxMs       float64        `json:"max_ms"`
	Errors      map[string]int `json:"errors,omitempty"`
	Note        string         `json:"note,omitempty"`
	// Latencies are kept for the charts, not written to JSON.
	Latencies []time.Duration `json:"-"`
}

// summarize fills the figures from the latencies of the successful requests.
func summarize(name string, lat []time.Duration, total, ok, verified int, took time.Duration, errs map[string]int) *Result {
	slices.Sort(lat)
	r := &Result{Name: name, Requests: total, Seconds: took.Seconds(), Errors: errs, Latencies: lat}
	if took > 0 {
		r.PerSecond = float64(ok) / took.Seconds()
	}
	if total > 0 {
		r.SuccessPct = 100 * float64(ok) / float64(total)
		r.VerifiedPct = 100 * float64(verified) / float64(total)
	}
	if len(lat) == 0 { // JSON has no NaN: the success rate says there is nothing to show
		r.Note = "no request succeeded"
		return r
	}
	r.P50ms, r.P95ms, r.P99ms = pct(lat, 50), pct(lat, 95), pct(lat, 99)
	r.MaxMs = ms(lat[len(lat)-1])
	return r
}

func pct(sorted []time.Duration, p float64) float64 {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return ms(sorted[max(i, 0)])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// counterStep is the seed's stateful request: it changes the session's state and prints it,
// so a wrong session, lost state or a reordered call shows in the printed value.
const counterStep = "counter += 1\nprint(counter)"

// Seed runs users sessions of requests stateful calls each through the API, all sessions in
// parallel, and verifies every printed counter. The sessions are set up first (their
// workers taken from the pool or created, the pool then refilled); the timed part is the
// stateful calls, and
// timed (when not nil) is called as it begins. It returns the result and how long the
// set-up took.
func Seed(ctx context.Context, c *api.Client, prefix string, users, requests int, timed func()) (*Result, time.Duration) {
	type outcome struct {
		lat      time.Duration
		ok, good bool
		err      string
	}
	results := make([][]outcome, users)
	setupErr := make([]error, users)
	var wg sync.WaitGroup
	setupStart := time.Now()
	for u := 0; u < users; u++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, setupErr[u] = c.Execute(ctx, fmt.Sprintf("%s-%d", prefix, u), "counter = 0", 0)
		}()
	}
	wg.Wait()
	setup := time.Since(setupStart)
	// The pool refills behind the set-up: new workers' kernels starting would be counted
	// in the calls' time and CPU. The calls are timed once it is whole again.
	waitStatus(ctx, c, func(s api.Status) bool { return s.CreatingWorkers == 0 && s.IdleWorkers >= s.MinIdleWorkers })
	if timed != nil {
		timed()
	}
	start := time.Now()
	for u := 0; u < users; u++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("%s-%d", prefix, u)
			if err := setupErr[u]; err != nil {
				results[u] = append(results[u], outcome{err: "set-up: " + errKey(err)})
				return
			}
			for i := 1; i <= requests && ctx.Err() == nil; i++ {
				t := time.Now()
				resp, err := c.Execute(ctx, user, counterStep, 0)
				o := outcome{lat: time.Since(t)}
				switch {
				case err != nil:
					o.err = errKey(err)
				case resp.Error != nil:
					o.err = "400 " + resp.Error.Ename
				default:
					o.ok = true
					o.good = resp.Stdout == strconv.Itoa(i)+"\n"
				}
				results[u] = append(results[u], o)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	var lat []time.Duration
	ok, good := 0, 0
	errs := map[string]int{}
	for _, rs := range results {
		for _, o := range rs {
			if o.ok {
				ok++
				lat = append(lat, o.lat)
				if o.good {
					good++
				}
			} else {
				errs[o.err]++
			}
		}
	}
	return summarize("seed scenario via API", lat, users*requests, ok, good, took, errs), setup
}

// userCalls is what one user's calls of a throughput scenario came to.
type userCalls struct {
	lat      []time.Duration
	ok, good int
	errs     map[string]int
}

// merged sums the users' calls (and errors before them, errs) into the scenario's result.
func merged(name string, accs []userCalls, total int, took time.Duration, errs map[string]int) *Result {
	if errs == nil {
		errs = map[string]int{}
	}
	var lat []time.Duration
	ok, good := 0, 0
	for _, a := range accs {
		lat = append(lat, a.lat...)
		ok += a.ok
		good += a.good
		for k, v := range a.errs {
			errs[k] += v
		}
	}
	return summarize(name, lat, total, ok, good, took, errs)
}

// Direct runs the seed scenario straight against agents, one connection per session, to
// measure what the daemon adds.
func Direct(ctx context.Context, conns []*agent.Client, requests int) *Result {
	accs := make([]userCalls, len(conns))
	var wg sync.WaitGroup
	start := time.Now()
	for k, kc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := &accs[k]
			a.errs = map[string]int{}
			if _, err := kc.Execute(ctx, "counter = 0"); err != nil {
				a.errs[err.Error()]++
				return
			}
			for i := 1; i <= requests && ctx.Err() == nil; i++ {
				t := time.Now()
				res, err := kc.Execute(ctx, counterStep)
				d := time.Since(t)
				if err != nil || res.Status != "ok" {
					a.errs[fmt.Sprint("error ", err)]++
					continue
				}
				a.ok++
				a.lat = append(a.lat, d)
				if res.Stdout == strconv.Itoa(i)+"\n" {
					a.good++
				}
			}
		}()
	}
	wg.Wait()
	return merged("seed scenario direct to agents (baseline)", accs, len(conns)*requests, time.Since(start), nil)
}

// trivial is, per language, a cell that sets a counter and one that steps it.
var trivial = map[string][2]string{
	"python":     {"x = 0", "x += 1; x"},
	"javascript": {"let x = 0", "x += 1; x"},
	"typescript": {"let x: number = 0", "x += 1; x"},
	"bash":       {"x=0", "x=$((x + 1)); echo $x"},
}

// Single measures n trivial executes in language, one after another in one session.
func Single(ctx context.Context, c *api.Client, user, language string, n int) *Result {
	var lat []time.Duration
	errs := map[string]int{}
	cells := trivial[language]
	run := func(code string) error {
		req := api.ExecuteRequest{Code: code}
		if language != "python" {
			req.Language = language
		}
		resp, err := c.Run(ctx, user, req)
		if err == nil && resp.Error != nil {
			err = fmt.Errorf("%s: %s", resp.Error.Ename, resp.Error.Evalue)
		}
		return err
	}
	run(cells[0])
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		t := time.Now()
		if err := run(cells[1]); err != nil {
			errs[errKey(err)]++
			continue
		}
		lat = append(lat, time.Since(t))
	}
	name := "single session, trivial execute"
	if language != "python" {
		name += ", " + language
	}
	return summarize(name, lat, n, len(lat), len(lat), time.Since(start), errs)
}

// FirstUse measures a language's first call in n new sessions: its interpreter's start
// and a trivial call. Each session runs Python first (untimed), so the worker is there.
func FirstUse(ctx context.Context, c *api.Client, prefix, language string, n int) *Result {
	var lat []time.Duration
	errs := map[string]int{}
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		user := fmt.Sprintf("%s-%s-%d", prefix, language, i)
		if _, err := c.Execute(ctx, user, "1", 0); err != nil {
			errs[errKey(err)]++
			continue
		}
		t := time.Now()
		resp, err := c.Run(ctx, user, api.ExecuteRequest{Code: trivial[language][0], Language: language})
		d := time.Since(t)
		switch {
		case err != nil:
			errs[errKey(err)]++
		case resp.Error != nil:
			errs[resp.Error.Ename]++
		default:
			lat = append(lat, d)
		}
		c.Release(ctx, user)
	}
	return summarize("first call in a session, "+language+" (interpreter start)", lat, n, len(lat), len(lat), time.Since(start), errs)
}

// FirstExecute measures n new sessions' first execute, waiting before each until ready()
// says the pool is as it should be (warm: idle workers ready; cold: none). Each session is
// released afterwards.
func FirstExecute(ctx context.Context, c *api.Client, name, prefix string, n int, ready func(api.Status) bool) *Result {
	var lat []time.Duration
	errs := map[string]int{}
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if err := waitStatus(ctx, c, ready); err != nil {
			errs[err.Error()]++
			break
		}
		user := fmt.Sprintf("%s-%d", prefix, i)
		t := time.Now()
		_, err := c.Execute(ctx, user, "1", 0)
		d := time.Since(t)
		if err != nil {
			errs[errKey(err)]++
		} else {
			lat = append(lat, d)
		}
		c.Release(ctx, user)
	}
	return summarize(name, lat, n, len(lat), len(lat), time.Since(start), errs)
}

// ShapedCreate measures n sessions made with limits of their own from a warm pool (POST
// /api/v1/sessions: a pool worker fitted with its disk, cgroup limits and env), waiting
// before each until ready() says the pool is whole; the second result is each one's create
// and first execute together. Each session is deleted afterwards.
func ShapedCreate(ctx context.Context, c *api.Client, prefix string, n int, ready func(api.Status) bool) (create, first *Result) {
	var lc, lf []time.Duration
	errs := map[string]int{}
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if err := waitStatus(ctx, c, ready); err != nil {
			errs[err.Error()]++
			break
		}
		id := fmt.Sprintf("%s-%d", prefix, i)
		t := time.Now()
		_, err := c.CreateSession(ctx, api.CreateSessionRequest{SessionID: id,
			Limits: &api.Limits{CPU: 1.5, MemoryMB: 2048, DiskMB: 1000, Pids: 1024}, Env: map[string]string{"BENCH": "1"}})
		made := time.Since(t)
		if err == nil {
			_, err = c.Execute(ctx, id, "1", 0)
		}
		if err != nil {
			errs[errKey(err)]++
		} else {
			lc, lf = append(lc, made), append(lf, time.Since(t))
		}
		c.DeleteSession(ctx, id)
	}
	took := time.Since(start)
	return summarize("create with limits: POST /sessions, warm pool", lc, n, len(lc), len(lc), took, errs),
		summarize("create with limits, then its first execute", lf, n, len(lf), len(lf), took, errs)
}

// Resize measures n PATCHes of a running session's limits (memory and CPU, up and down in
// turn: each an Update of the worker's cgroups through containerd).
func Resize(ctx context.Context, c *api.Client, id string, n int) *Result {
	var lat []time.Duration
	errs := map[string]int{}
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		mem, cpu := 1024, 1.0
		if i%2 == 0 {
			mem, cpu = 1536, 1.5
		}
		t := time.Now()
		_, err := c.UpdateSession(ctx, id, api.UpdateSessionRequest{Limits: &api.Limits{MemoryMB: mem, CPU: cpu}})
		if err != nil {
			errs[errKey(err)]++
			continue
		}
		lat = append(lat, time.Since(t))
	}
	return summarize("PATCH of a session's limits (cgroups, live)", lat, n, len(lat), len(lat), time.Since(start), errs)
}

// WaitIdle waits until the pool has idle workers and none being created.
func WaitIdle(ctx context.Context, c *api.Client, idle int) (time.Duration, error) {
	start := time.Now()
	err := waitStatus(ctx, c, func(s api.Status) bool { return s.IdleWorkers >= idle && s.CreatingWorkers == 0 })
	return time.Since(start), err
}

func waitStatus(ctx context.Context, c *api.Client, ok func(api.Status) bool) error {
	for {
		st, err := c.Status(ctx)
		if err == nil && ok(*st) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pool not ready: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func errKey(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return fmt.Sprintf("%d %s", ae.Status, firstWords(ae.Detail))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "deadline"
	}
	return firstWords(err.Error())
}

func firstWords(s string) string {
	f := strings.Fields(s)
	return strings.Join(f[:min(len(f), 6)], " ")
}

// firstPrintCell prints the time it printed, then keeps running: the line must reach the
// client while the cell runs, not with its end.
const firstPrintCell = "import time\nprint(repr(time.time()), flush=True)\ntime.sleep(0.15)"

// FirstPrint measures, n times, how long a cell's first print takes to reach a streaming
// client: from the time the cell printed (its clock is the host's) to the event's arrival.
// via is "websocket" or "sse".
func FirstPrint(ctx context.Context, c *api.Client, url, token, user, via string, n int) *Result {
	name := "first print to client, " + via
	var lat []time.Duration
	errs := map[string]int{}
	c.Execute(ctx, user, "1", 0) // the session exists before the timing starts
	defer c.Release(ctx, user)
	start := time.Now()
	var ws *websocket.Conn
	if via == "websocket" {
		var err error
		ws, _, err = websocket.DefaultDialer.DialContext(ctx, "ws"+strings.TrimPrefix(url, "http")+"/api/v1/stream?user_uuid="+user,
			http.Header{"X-Auth-Token": {token}})
		if err != nil {
			errs[errKey(err)]++
			return summarize(name, nil, n, 0, 0, 0, errs)
		}
		defer ws.Close()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		var got time.Duration
		var err error
		if ws != nil {
			got, err = firstPrintWS(ws, strconv.Itoa(i))
		} else {
			got, err = firstPrintSSE(ctx, c, user)
		}
		if err != nil {
			errs[errKey(err)]++
			continue
		}
		lat = append(lat, got)
	}
	return summarize(name, lat, n, len(lat), len(lat), time.Since(start), errs)
}

// printedAgo is how long before now a line of firstPrintCell was printed.
func printedAgo(text string) (time.Duration, error) {
	now := time.Now()
	secs, err := strconv.ParseFloat(strings.TrimSpace(text), 64)
	if err != nil {
		return 0, fmt.Errorf("first line %q: %w", text, err)
	}
	return now.Sub(time.Unix(0, int64(secs*1e9))), nil
}

func firstPrintWS(ws *websocket.Conn, id string) (time.Duration, error) {
	if err := ws.WriteJSON(map[string]any{"type": "execute", "id": id, "code": firstPrintCell}); err != nil {
		return 0, err
	}
	ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	var took time.Duration
	seen := false
	for {
		var e api.Event
		if err := ws.ReadJSON(&e); err != nil {
			return 0, err
		}
		switch {
		case e.Type == api.EventStdout && !seen:
			seen = true
			var err error
			if took, err = printedAgo(e.Text); err != nil {
				return 0, err
			}
		case e.Type == api.EventDone && e.ID == id:
			if e.Status != api.DoneOK || !seen {
				return 0, fmt.Errorf("done %s, first line seen %v", e.Status, seen)
			}
			return took, nil
		}
	}
}

func firstPrintSSE(ctx context.Context, c *api.Client, user string) (time.Duration, error) {
	var took time.Duration
	seen := false
	for e, err := range c.Stream(ctx, user, api.ExecuteRequest{Code: firstPrintCell}) {
		if err != nil {
			return 0, err
		}
		switch {
		case e.Type == api.EventStdout && !seen:
			seen = true
			if took, err = printedAgo(e.Text); err != nil {
				return 0, err
			}
		case e.Type == api.EventDone:
			if e.Status != api.DoneOK || !seen {
				return 0, fmt.Errorf("done %s, first line seen %v", e.Status, seen)
			}
		}
	}
	return took, nil
}

// Density creates n sessions, conc at a time, each with a state of its own, and keeps them
// all; then checks every one still has its state. It returns the acquire latencies (a new
// session's first execute, while the pool refills behind it), how long reaching n took,
// and how many kept their state.
func Density(ctx context.Context, c *api.Client, prefix string, n, conc int) (acquire *Result, reached time.Duration, verified int) {
	var mu sync.Mutex
	var lat []time.Duration
	errs := map[string]int{}
	next := 0
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				t := time.Now()
				_, err := c.Execute(ctx, fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("mine = %d", i), 0)
				d := time.Since(t)
				mu.Lock()
				if err != nil {
					errs[errKey(err)]++
				} else {
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	reached = time.Since(start)
	acquire = summarize(fmt.Sprintf("density: %d sessions, a new one's first execute", n), lat, n, len(lat), len(lat), reached, errs)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		resp, err := c.Execute(ctx, fmt.Sprintf("%s-%d", prefix, i), "print(mine)", 0)
		if err == nil && resp.Stdout == strconv.Itoa(i)+"\n" && !resp.NewSession {
			verified++
		}
	}
	return acquire, reached, verified
}
