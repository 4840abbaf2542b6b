package api

// Environment is one entry of GET /api/v1/environments: a named image with its own warm
// pool (SPEC 3.15).
type Environment struct {
	Name  string `json:"name"`
	Image string `json:"image"`
	// Languages are what its image runs (python always; javascript and typescript where it
	// has node with acorn, and typescript; bash where it has bash).
	Languages []string `json:"languages"`
	// Limits are its sessions' defaults.
	Limits Limits `json:"limits"`
	// Seed is whether its workers run seed cells before they join its pool.
	Seed bool `json:"seed"`
	// Available is false when it serves no session, with the reason: its image cannot run
	// the agent, or its seed fails. Its sessions' creations are 503s saying the same.
	Available         bool   `json:"available"`
	UnavailableReason string `json:"unavailable_reason,omitempty"`
	// Pool is its pool's state, for admin callers (the others' load is not a tenant's
	// business).
	Pool *EnvironmentPool `json:"pool,omitempty"`
}

// EnvironmentPool is an environment's pool: its workers by state and its bounds.
type EnvironmentPool struct {
	Idle     int `json:"idle"`
	Busy     int `json:"busy"`
	Creating int `json:"creating"`
	MinIdle  int `json:"min_idle"`
	// TargetIdle is how many idle workers it holds now: min_idle, or more after a burst
	// of new sessions (it decays back when quiet), within max_total.
	TargetIdle int `json:"target_idle"`
	MaxIdle    int `json:"max_idle"`
	MaxTotal   int `json:"max_total"`
}
