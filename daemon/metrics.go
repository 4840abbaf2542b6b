package daemon

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the daemon's Prometheus collectors, served by cmd/codeboxd on
// --metrics-listen.
type metrics struct {
	executions      *prometheus.CounterVec
	executeDuration prometheus.Histogram
	creates         *prometheus.CounterVec
	createDuration  prometheus.Histogram
	destroys        prometheus.Counter
	destroyDuration prometheus.Histogram
	kernelRestarts  prometheus.Counter
	fileBytes       *prometheus.CounterVec
	sessionsCreated prometheus.Counter
	sessionsEnded   *prometheus.CounterVec
	fitDuration     prometheus.Histogram
	snapshotFreeze  prometheus.Histogram
	// startPhases split a worker's start (network, container, kernel, seed) and its fitting
	// to a session (disk, limits, agent) by part, for the bench's profile of the start path.
	startPhases *prometheus.HistogramVec
}

// Execution outcomes, the label of codebox_executions_total.
const (
	outcomeOK          = "ok"          // ran to completion
	outcomeError       = "error"       // the code raised
	outcomeTimeout     = "timeout"     // past its limit
	outcomeKernelDied  = "kernel_died" // the kernel died in the call
	outcomeUnavailable = "unavailable" // no worker could be had, or it was lost
	outcomeCancelled   = "cancelled"   // the caller went away while waiting
)

func newMetrics() *metrics {
	latency := []float64{.001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}
	return &metrics{
		executions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codebox_executions_total", Help: "Execute calls by outcome.",
		}, []string{"outcome"}),
		executeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "codebox_execute_duration_seconds", Help: "Time of execute calls, waiting for a worker included.", Buckets: latency,
		}),
		creates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codebox_worker_creates_total", Help: "Worker creations by result.",
		}, []string{"result"}),
		createDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "codebox_worker_create_duration_seconds", Help: "Time from worker create to a healthy kernel.", Buckets: latency,
		}),
		destroys: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codebox_worker_destroys_total", Help: "Workers destroyed.",
		}),
		destroyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "codebox_worker_destroy_duration_seconds", Help: "Time to tear a worker down.", Buckets: latency,
		}),
		kernelRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codebox_kernel_restarts_total", Help: "Kernels restarted in place after dying in a call.",
		}),
		fileBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codebox_file_transfer_bytes_total", Help: "Bytes moved by the file calls, by direction (in: into workers, out: out of them).",
		}, []string{"direction"}),
		sessionsCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codebox_sessions_created_total", Help: "Sessions made by POST /api/v1/sessions (implicit ones are not counted here).",
		}),
		sessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codebox_sessions_ended_total", Help: "Sessions that ended, by reason.",
		}, []string{"reason"}),
		fitDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "codebox_worker_fit_duration_seconds", Help: "Time to fit a pool worker to a new session: its disk, limits and env.", Buckets: latency,
		}),
		snapshotFreeze: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "codebox_snapshot_freeze_seconds", Help: "How long a snapshot kept its session's disk frozen (the copy).", Buckets: latency,
		}),
		startPhases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "codebox_worker_phase_duration_seconds", Help: "Parts of a worker's start (network, container, kernel, seed) and of its fitting to a session (disk, limits, agent).", Buckets: latency,
		}, []string{"phase"}),
	}
}

// Register adds the daemon's metrics, pool gauges included, to reg.
func (d *Daemon) Register(reg prometheus.Registerer) error {
	m := d.metrics
	cs := []prometheus.Collector{m.executions, m.executeDuration, m.creates, m.createDuration,
		m.destroys, m.destroyDuration, m.kernelRestarts, m.fileBytes, m.sessionsCreated, m.sessionsEnded, m.fitDuration, m.snapshotFreeze, m.startPhases}
	gauge := func(name, help string, f func() int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(f()) })
	}
	cs = append(cs,
		gauge("codebox_workers_idle", "Idle workers ready for new sessions.", func() int { return d.Status().IdleWorkers }),
		gauge("codebox_workers_busy", "Workers serving a session.", func() int { return d.Status().BusyWorkers }),
		gauge("codebox_workers_creating", "Workers being created.", func() int { return d.Status().CreatingWorkers }),
		gauge("codebox_workers_max", "The cap on workers.", func() int { return d.cfg.MaxTotalWorkers }),
		gauge("codebox_sessions", "Sessions known to the daemon.", func() int {
			d.mu.Lock()
			defer d.mu.Unlock()
			return len(d.sessions)
		}),
		poolCollector{d},
	)
	if c, ok := d.egress.(interface{ Collectors() []prometheus.Collector }); ok {
		cs = append(cs, c.Collectors()...)
	}
	cs = append(cs, d.collectors...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *metrics) observeExecute(outcome string, start time.Time) {
	m.executions.WithLabelValues(outcome).Inc()
	m.executeDuration.Observe(time.Since(start).Seconds())
}
