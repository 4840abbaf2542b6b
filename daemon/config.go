package daemon

import "time"

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
}

// MaxWorkers is the most workers a host can have: each gets its own range of host uids
// (see worker.go), with some left for workers being destroyed.
const MaxWorkers = maxUIDRanges - 64
