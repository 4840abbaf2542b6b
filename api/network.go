package api

import (
	"strconv"
	"time"
)

// NetworkPolicy is what a session's worker may reach (SPEC 3.12): nothing when empty.
type NetworkPolicy struct {
	// Allow lists host names (exact, or "*.suffix": any name below it), addresses and
	// CIDRs, each with an optional ":port"; at most 64.
	Allow []string `json:"allow"`
	// Presets open what the host provides: "packages", its package cache (SPEC 3.13).
	Presets []string `json:"presets,omitempty"`
}

// NetworkEvent is one decision of a session's network policy: a DNS question, a TCP
// connection, a UDP datagram.
type NetworkEvent struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Name     string    `json:"name,omitempty"`
	IP       string    `json:"ip,omitempty"`
	Port     uint16    `json:"port,omitempty"`
	Decision string    `json:"decision"`
	Reason   string    `json:"reason,omitempty"`
	Rule     string    `json:"rule,omitempty"`
	BytesOut int64     `json:"bytes_out,omitempty"`
	BytesIn  int64     `json:"bytes_in,omitempty"`
}

// NetworkEvents is the body of GET /api/v1/sessions/{id}/network/events.
type NetworkEvents struct {
	Events  []NetworkEvent `json:"events"`
	NextSeq uint64         `json:"next_seq"`
	// Dropped counts the events the session's ring no longer holds.
	Dropped uint64 `json:"dropped"`
}

// MaxNetworkDenials is how many of a call's denials its answer lists.
const MaxNetworkDenials = 10

// NetworkDenialText is a denial in a line a person (or a model) reads.
func NetworkDenialText(e NetworkEvent) string {
	what := e.Name
	if e.Kind == "package" {
		if what == "" {
			what = "the package cache"
		}
	} else if what == "" {
		what = e.IP
	}
	if e.Port != 0 && e.Kind != "package" {
		what += ":" + strconv.Itoa(int(e.Port))
	}
	why := map[string]string{
		"not_in_allowlist": "not in this session's allowlist", "dns_denied": "not in this session's allowlist (its name was not resolved)",
		"ip_literal": "an address no allowed name resolved to", "port_not_allowed": "a port the allowlist does not name",
		"private_address": "an address no session may reach", "sni_mismatch": "the name it carried (TLS SNI or HTTP Host) is not allowed there",
		"udp_blocked": "UDP other than DNS is blocked", "connection_limit": "too many connections at once",
		"name_missing":         "allowed by a name, it carried none to check (TLS without SNI, HTTP without a Host name, another protocol on a port its rule does not name)",
		"rate_limited":         "too many DNS questions",
		"packages_not_enabled": "the package cache is not open to this session (its network policy needs the preset \"packages\")",
		"package_not_allowed":  "not in this host's package allowlist", "hash_mismatch": "the upstream's file does not have the hash its index gives",
		"upstream_failed": "the package index upstream failed",
	}[e.Reason]
	if why == "" {
		why = e.Reason
	}
	return "network: denied " + e.Kind + " " + what + " — " + why
}
