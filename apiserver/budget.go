package apiserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/codebox/codebox/api"
)

// DefaultHeldBytes is the daemon-wide budget of bytes held for callers' requests when
// ServerConfig says none.
const DefaultHeldBytes = 256 << 20

// budget bounds the bytes the server holds at once for what callers send: JSON bodies as
// they are read (an execute's code stays held until its answer is written) and the code of
// websocket calls queued or running. Each connection and socket has its own bound; without
// one over all of them, a few hundred callers each sending the most they may would hold
// gigabytes.
type budget struct {
	max  int64
	used atomic.Int64
}

func (b *budget) take(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.max {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *budget) give(n int64) { b.used.Add(-n) }

// errOverBudget: the daemon holds as much of callers' requests as it may.
var errOverBudget = errors.New("codeboxd holds as many request bytes as it may")

func overBudget() *api.Error {
	return &api.Error{Status: http.StatusServiceUnavailable, RetryAfter: 2 * time.Second,
		Detail: "codeboxd holds as much of callers' requests as it may: retry shortly"}
}

// charge is what one request holds of the budget; wrap gives it back when the request ends.
type charge struct {
	b *budget
	n atomic.Int64
}

func (c *charge) take(n int64) bool {
	if !c.b.take(n) {
		return false
	}
	c.n.Add(n)
	return true
}

func (c *charge) release() { c.b.give(c.n.Swap(0)) }

type chargeKey struct{}

func withCharge(ctx context.Context, c *charge) context.Context {
	return context.WithValue(ctx, chargeKey{}, c)
}

// chargedBody reads r's body, taking from the request's charge what it reads.
type chargedBody struct {
	r io.Reader
	c *charge
}

// Read charges twice what it reads: what is read is held, and so is what is made of it (a
// decoded body's strings; a buffer growing by doubling).
func (b chargedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 && b.c != nil && !b.c.take(2*int64(n)) {
		return 0, errOverBudget
	}
	return n, err
}

func chargeOf(r *http.Request) *charge {
	c, _ := r.Context().Value(chargeKey{}).(*charge)
	return c
}

// chargedReadCloser is a request body read through chargedBody.
type chargedReadCloser struct {
	chargedBody
	io.Closer
}
