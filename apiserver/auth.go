package apiserver

import (
	"context"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strings"

	"github.com/codebox/codebox/api"
)

// Authenticator says whose a credential is: an API key's (its tenant, maybe an admin), or a
// session's access token (its one session).
type Authenticator interface {
	Authenticate(credential string) (api.Caller, bool)
}

// tokenAuth is an Authenticator of a single key: an admin of the default tenant (the
// ServerConfig.Token of tests and single-key set-ups).
type tokenAuth []byte

func (t tokenAuth) Authenticate(c string) (api.Caller, bool) {
	if c == "" || subtle.ConstantTimeCompare([]byte(c), t) != 1 {
		return api.Caller{}, false
	}
	return api.Caller{Tenant: api.DefaultTenant, Admin: true}, true
}

// access is who may call a route.
type access int

const (
	public  access = iota // anyone (/healthz, the console's page)
	keyed                 // a key or a session's access token
	admin                 // an admin key (the pool's state)
	selfish               // the route authenticates itself (the stream's auth message)
)

// credential is what a request presents: X-Auth-Token, or an Authorization bearer.
func credential(r *http.Request) string {
	if got := r.Header.Get("X-Auth-Token"); got != "" {
		return got
	}
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return a[7:]
	}
	return ""
}

// callerOf authenticates cred for request r: who calls, in whose name (?tenant= lets an
// admin act for another tenant), and whether the call may create its session
// (?create=false says it may not). A failure is counted and sampled in the log, never one
// line each.
func (s *server) callerOf(r *http.Request, cred string) (context.Context, error) {
	c, ok := s.auth.Authenticate(cred)
	if !ok {
		reason := "missing"
		if cred != "" {
			reason = "invalid"
		}
		if s.cfg.AuthFailed != nil {
			s.cfg.AuthFailed(reason)
		}
		s.failures.record(r.Context(), slog.LevelWarn, http.StatusUnauthorized, "authentication failed",
			"reason", reason, "source", s.clientIP(r), "path", r.URL.Path)
		return nil, api.Errorf(http.StatusUnauthorized, "missing or invalid token")
	}
	q := r.URL.Query()
	if t := q.Get("tenant"); t != "" {
		switch {
		case !c.Admin:
			return nil, api.Errorf(http.StatusForbidden, "only an admin key acts for another tenant")
		case len(t) > 64 || strings.ContainsAny(t, " /\\\x00"):
			return nil, api.Errorf(http.StatusUnprocessableEntity, "tenant %q is not a tenant's name", api.Echo(t))
		}
		c.Operator, c.Tenant = t != c.Tenant, t
	}
	ctx := api.WithCaller(r.Context(), c)
	switch q.Get("create") {
	case "", "true":
	case "false":
		ctx = api.WithoutCreate(ctx)
	default:
		return nil, api.Errorf(http.StatusUnprocessableEntity, "create must be true or false")
	}
	return ctx, nil
}
