package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/codebox/codebox/api"
)

// UsefulCell is the first cell of a data session: what a seed saves is its imports.
const UsefulCell = "import pandas as pd\npd.DataFrame({'x': range(1000), 'y': range(1000)}).describe()"

// FirstUsefulCell measures n new sessions of environment env (POST /api/v1/sessions) and
// their first useful cell (UsefulCell), waiting before each until the environment's pool
// holds idle workers again. The second result is the cell alone. Each session is deleted.
func FirstUsefulCell(ctx context.Context, c *api.Client, env, prefix string, n, idle int) (whole, cell *Result) {
	var lw, lc []time.Duration
	errs := map[string]int{}
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if err := WaitPool(ctx, c, env, func(p PoolState) bool { return p.Idle >= idle && p.Creating == 0 }); err != nil {
			errs[err.Error()]++
			break
		}
		id := fmt.Sprintf("%s-%d", prefix, i)
		t := time.Now()
		_, err := c.CreateSession(ctx, api.CreateSessionRequest{SessionID: id, Environment: env})
		var made time.Time
		if err == nil {
			made = time.Now()
			var r *api.ExecuteResponse
			r, err = c.Execute(ctx, id, UsefulCell, 0)
			if err == nil && (r.Error != nil || !strings.Contains(derefText(r.ResultText), "mean")) {
				err = fmt.Errorf("unexpected answer: %+v", r)
			}
		}
		if err != nil {
			errs[errKey(err)]++
		} else {
			lw, lc = append(lw, time.Since(t)), append(lc, time.Since(made))
		}
		c.DeleteSession(ctx, id)
	}
	took := time.Since(start)
	return summarize("first useful cell, "+env+": create + pandas describe", lw, n, len(lw), len(lw), took, errs),
		summarize("first useful cell, "+env+": the cell alone", lc, n, len(lc), len(lc), took, errs)
}

func derefText(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// Burst makes n sessions of environment env at once, each with a first execute, and deletes
// them; the result's Seconds is the burst's whole time.
func Burst(ctx context.Context, c *api.Client, name, env, prefix string, n int) *Result {
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("%s-%d", prefix, i)
			t := time.Now()
			_, err := c.CreateSession(ctx, api.CreateSessionRequest{SessionID: id, Environment: env})
			if err == nil {
				_, err = c.Execute(ctx, id, "1", 0)
			}
			lat[i], errs[i] = time.Since(t), err
		}()
	}
	wg.Wait()
	took := time.Since(start)
	var ok []time.Duration
	bad := map[string]int{}
	for i, err := range errs {
		if err != nil {
			bad[errKey(err)]++
		} else {
			ok = append(ok, lat[i])
		}
		c.DeleteSession(ctx, fmt.Sprintf("%s-%d", prefix, i))
	}
	return summarize(name, ok, n, len(ok), len(ok), took, bad)
}

// WaitPool waits until environment env's pool satisfies ok (at most 3 minutes).
func WaitPool(ctx context.Context, c *api.Client, env string, ok func(PoolState) bool) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		envs, err := c.Environments(ctx)
		if err == nil {
			for _, e := range envs {
				if e.Name == env && e.Pool != nil && ok(*e.Pool) {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pool of %s: not reached: %v", env, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PoolState is an environment's pool as GET /api/v1/environments shows it to an admin.
type PoolState = api.EnvironmentPool

// Pool is environment env's pool now.
func Pool(ctx context.Context, c *api.Client, env string) (api.EnvironmentPool, error) {
	envs, err := c.Environments(ctx)
	if err != nil {
		return api.EnvironmentPool{}, err
	}
	for _, e := range envs {
		if e.Name == env && e.Pool != nil {
			return *e.Pool, nil
		}
	}
	return api.EnvironmentPool{}, fmt.Errorf("no environment %s", env)
}
