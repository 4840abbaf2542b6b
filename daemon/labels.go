package daemon

import (
	"net"
	"strconv"
)

// Labels are what a worker's container says of it, so that a later codeboxd finds its
// resources from containerd alone: its network namespace, its address, its host uid range.
// This type alone writes (Encode) and reads (ParseLabels) them; runtime adds
// managed-by=codeboxd.
type Labels struct {
	NetNS string
	IP    net.IP
	// UIDBase starts the worker's host uid range (0: a worker made before user namespaces).
	UIDBase uint32
}

const (
	labelNetNS   = "io.codebox.netns"
	labelIP      = "io.codebox.ip"
	labelUIDBase = "io.codebox.uidbase"
)

// Encode is l as container labels.
func (l Labels) Encode() map[string]string {
	return map[string]string{
		labelNetNS:   l.NetNS,
		labelIP:      l.IP.String(),
		labelUIDBase: strconv.FormatUint(uint64(l.UIDBase), 10),
	}
}

// ParseLabels reads a container's labels; what is missing or malformed stays zero (a
// worker without network labels cannot be adopted, and says so).
func ParseLabels(m map[string]string) Labels {
	base, _ := strconv.ParseUint(m[labelUIDBase], 10, 32)
	return Labels{NetNS: m[labelNetNS], IP: net.ParseIP(m[labelIP]), UIDBase: uint32(base)}
}
