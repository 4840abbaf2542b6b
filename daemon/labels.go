package daemon

import (
	"net"
	"strconv"

	"github.com/codebox/codebox/environments"
)

// Labels are what a worker's container says of it, so that a later codeboxd finds its
// resources from containerd alone: its network namespace, its address, its host uid range,
// its environment.
// This type alone writes (Encode) and reads (ParseLabels) them; runtime adds
// managed-by=codeboxd.
type Labels struct {
	NetNS string
	IP    net.IP
	// UIDBase starts the worker's host uid range (0: a worker made before user namespaces).
	UIDBase uint32
	// Environment is the pool it was made for ("": a worker made before environments, the
	// default's); Fingerprint what that environment was then (pool.fingerprint): an idle
	// worker rejoins its pool after a restart only if the environment is still the same.
	Environment, Fingerprint string
}

const (
	labelNetNS   = "io.codebox.netns"
	labelIP      = "io.codebox.ip"
	labelUIDBase = "io.codebox.uidbase"
	labelEnv     = "io.codebox.environment"
	labelPrint   = "io.codebox.fingerprint"
)

// Encode is l as container labels.
func (l Labels) Encode() map[string]string {
	return map[string]string{
		labelNetNS:   l.NetNS,
		labelIP:      l.IP.String(),
		labelUIDBase: strconv.FormatUint(uint64(l.UIDBase), 10),
		labelEnv:     l.Environment,
		labelPrint:   l.Fingerprint,
	}
}

// ParseLabels reads a container's labels; what is missing or malformed stays zero (a
// worker without network labels cannot be adopted, and says so).
func ParseLabels(m map[string]string) Labels {
	base, _ := strconv.ParseUint(m[labelUIDBase], 10, 32)
	env := m[labelEnv]
	if env == "" {
		env = environments.Default
	}
	return Labels{NetNS: m[labelNetNS], IP: net.ParseIP(m[labelIP]), UIDBase: uint32(base), Environment: env, Fingerprint: m[labelPrint]}
}
