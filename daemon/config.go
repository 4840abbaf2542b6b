package daemon

import (
	"time"

	"github.com/codebox/codebox/environments"
)

// Config is what the daemon is told of codeboxd's flags.
type Config struct {
	MinIdleWorkers  int
	MaxTotalWorkers int
	WorkerCPU       float64
	WorkerRAMMB     int
	WorkerDiskMB    int
	WorkerPids      int
	ExecTimeout     time.Duration
	MaxExecTimeout  time.Duration
	IdleTimeout     time.Duration
	RecycleInterval time.Duration
	StateDir        string
	DestroyOnStop   bool
	MaxFileMB       int
	FileTimeout     time.Duration
	FileAllowlist   []string // CIDRs, IPs or host names transfers may reach although private

	// Sessions' shapes: the most a session may ask for, its lifetime by default and at
	// most (0: none), and how long an ended session is remembered.
	MaxSessionCPU    float64
	MaxSessionRAMMB  int
	MaxSessionDiskMB int
	MaxSessionPids   int
	SessionTTL       time.Duration
	MaxSessionTTL    time.Duration
	EndedRetention   time.Duration
	// MaxSessionsPerTenant bounds the sessions one key runs at once (0: none), so that no
	// tenant takes every worker.
	MaxSessionsPerTenant int

	// Environments are the pools, resolved (environments.Resolve), the default first; nil:
	// the default alone, of MinIdleWorkers.
	Environments []environments.Environment
	// AgentDir is the host directory of the kernel agent mounted into every worker.
	AgentDir string
	// ResolvConf is the host file mounted at every worker's /etc/resolv.conf: its one
	// nameserver is the egress resolver ("": the image's own).
	ResolvConf string
	// SessionEnv is set in every session's agent, beneath the session's own env: where
	// pip and npm install (the session's disk) and the package cache to ask.
	SessionEnv map[string]string
	// Packages: the host serves a package cache, which the network policy's preset
	// "packages" opens; PackagesDefault opens it to every session.
	Packages, PackagesDefault bool
	// MaxSnapshots bounds a tenant's snapshots; MaxSnapshotMB what all snapshots take on
	// the host.
	MaxSnapshots, MaxSnapshotMB int
	// MaxVolumes bounds a tenant's volumes; MaxVolumeMB the sizes of all volumes.
	MaxVolumes, MaxVolumeMB int
}

// timings are the daemon's waits that tests shorten.
type timings struct {
	// interruptGrace is how long a kernel has, after SIGINT, to become idle again before
	// its worker is given up.
	interruptGrace time.Duration
	// interruptEvery is how often a kernel that has not stopped is sent SIGINT again.
	interruptEvery time.Duration
	// exitGrace is how long a call whose connection dropped waits to learn whether the task
	// exited (the kernel died) or not (the worker is unreachable).
	exitGrace time.Duration
	// busyAfter is how long an adopted worker's kernel has to answer before it is taken to be
	// busy with a call the earlier codeboxd left (its main thread runs user code, so it does
	// not answer): it is interrupted, and has the rest of adoptTimeout.
	busyAfter time.Duration
}

var defaultTimings = timings{interruptGrace: 3 * time.Second, interruptEvery: 250 * time.Millisecond,
	exitGrace: 3 * time.Second, busyAfter: 2 * time.Second}

// MaxWorkers is the most workers a host can have: each gets its own range of host uids
// (see worker.go), with some left for workers being destroyed.
const MaxWorkers = maxUIDRanges - 64
