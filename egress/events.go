package egress

import (
	"sync"
	"time"
)

// Event is one decision of the policy: a DNS question, a TCP connection or a UDP datagram
// of a session's worker.
type Event struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"` // "dns", "tcp" or "udp"
	Name     string    `json:"name,omitempty"`
	IP       string    `json:"ip,omitempty"`
	Port     uint16    `json:"port,omitempty"`
	Decision string    `json:"decision"` // "allowed" or "denied"
	Reason   string    `json:"reason,omitempty"`
	Rule     string    `json:"rule,omitempty"`
	BytesOut int64     `json:"bytes_out,omitempty"`
	BytesIn  int64     `json:"bytes_in,omitempty"`
}

// Denial reasons.
const (
	ReasonNotAllowed   = "not_in_allowlist"
	ReasonDNSDenied    = "dns_denied"
	ReasonIPLiteral    = "ip_literal"
	ReasonPort         = "port_not_allowed"
	ReasonPrivate      = "private_address"
	ReasonSNIMismatch  = "sni_mismatch"
	ReasonUDP          = "udp_blocked"
	ReasonConnLimit    = "connection_limit"
	ReasonNoName       = "name_missing"
	ReasonRateLimited  = "rate_limited"
	DecisionAllowed    = "allowed"
	DecisionDenied     = "denied"
	ringSize           = 1024
	maxWatchersPerRing = 16
)

// ring is a session's last ringSize events; dropped counts those it lost. Watchers get
// each event as it is recorded (they must not block).
type ring struct {
	mu       sync.Mutex
	events   []*Event // oldest first, at most ringSize
	next     uint64   // the next event's seq
	dropped  uint64
	watchers map[int]func(Event)
	nextW    int
}

func (r *ring) add(e *Event) {
	r.mu.Lock()
	e.Seq = r.next
	r.next++
	if len(r.events) == ringSize {
		copy(r.events, r.events[1:])
		r.events = r.events[:ringSize-1]
		r.dropped++
	}
	r.events = append(r.events, e)
	ws := make([]func(Event), 0, len(r.watchers))
	for _, w := range r.watchers {
		ws = append(ws, w)
	}
	v := *e
	r.mu.Unlock()
	for _, w := range ws {
		w(v)
	}
}

// update changes an event still in the ring (an allowed connection's bytes, when it
// closes).
func (r *ring) update(e *Event, out, in int64) {
	r.mu.Lock()
	e.BytesOut, e.BytesIn = out, in
	r.mu.Unlock()
}

// since returns at most limit events from seq on, the seq to ask from next, and how many
// the ring has dropped in all.
func (r *ring) since(seq uint64, limit int) ([]Event, uint64, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	for _, e := range r.events {
		if e.Seq >= seq && len(out) < limit {
			out = append(out, *e)
		}
	}
	next := r.next
	if len(out) > 0 && len(out) == limit {
		next = out[len(out)-1].Seq + 1
	}
	return out, next, r.dropped
}

// mark is the seq the next event will have.
func (r *ring) mark() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next
}

// denials returns the first n denials from seq on, and how many there are.
func (r *ring) denials(seq uint64, n int) ([]Event, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	total := 0
	for _, e := range r.events {
		if e.Seq >= seq && e.Decision == DecisionDenied {
			total++
			if len(out) < n {
				out = append(out, *e)
			}
		}
	}
	// Denials the ring already dropped still count.
	if first := r.next - uint64(len(r.events)); seq < first {
		total += int(first - seq) // an upper bound: the dropped ones may have been allowed
	}
	return out, total
}

// watch calls fn with every event from now on until the returned func is called; false
// when the ring has as many watchers as it takes.
func (r *ring) watch(fn func(Event)) (func(), bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.watchers) >= maxWatchersPerRing {
		return func() {}, false
	}
	if r.watchers == nil {
		r.watchers = map[int]func(Event){}
	}
	id := r.nextW
	r.nextW++
	r.watchers[id] = fn
	return func() {
		r.mu.Lock()
		delete(r.watchers, id)
		r.mu.Unlock()
	}, true
}
