package apiserver

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

const (
	// failureLogInterval and failureLogBurst: at most failureLogBurst lines of failed
	// requests every failureLogInterval, then one line counting the rest.
	failureLogInterval = 10 * time.Second
	failureLogBurst    = 5
)

// sampler logs events one line each up to burst per interval, and counts the rest by
// status, summarised in one line when the interval ends: under overload (every request
// answered 503) the log stays a few lines, not one per request.
type sampler struct {
	out      *slog.Logger
	interval time.Duration
	burst    int

	mu         sync.Mutex
	start      time.Time
	logged     int
	suppressed map[int]int // status → requests not logged this interval
	flushing   bool
}

func newSampler(log *slog.Logger, interval time.Duration, burst int) *sampler {
	return &sampler{out: log, interval: interval, burst: burst, suppressed: map[int]int{}}
}

func (s *sampler) record(ctx context.Context, level slog.Level, status int, msg string, args ...any) {
	s.mu.Lock()
	now := time.Now()
	if now.Sub(s.start) >= s.interval && !s.flushing {
		s.start, s.logged = now, 0
	}
	if s.logged < s.burst {
		s.logged++
		s.mu.Unlock()
		s.out.Log(ctx, level, msg, args...)
		return
	}
	s.suppressed[status]++
	if !s.flushing {
		s.flushing = true
		time.AfterFunc(s.start.Add(s.interval).Sub(now), s.flush)
	}
	s.mu.Unlock()
}

// flush writes the summary of the interval that ended and starts the next.
func (s *sampler) flush() {
	s.mu.Lock()
	counts := s.suppressed
	s.suppressed = map[int]int{}
	s.flushing = false
	s.start, s.logged = time.Now(), 0
	s.mu.Unlock()
	total := 0
	args := []any{}
	for status, n := range counts {
		total += n
		args = append(args, slog.Int("status_"+strconv.Itoa(status), n))
	}
	s.out.Warn("failed requests not logged one by one", append([]any{"requests", total, "interval", s.interval.String()}, args...)...)
}
