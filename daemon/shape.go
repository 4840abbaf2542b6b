package daemon

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/codebox/codebox/egress"
	"github.com/codebox/codebox/snapshots"

	"github.com/codebox/codebox/api"
)

// A session's shape: its environment, limits, lifetime, metadata and environment
// variables, as a caller asked for them within the operator's caps. Everything a caller
// sends is checked here, before anything is made; a refusal names the field.

// shape is what a session is made with; PATCH changes some of it.
type shape struct {
	environment string
	limits      api.Limits // what is in force, every field set
	metadata    map[string]string
	env         map[string]string // never logged, never returned
	created     time.Time
	expires     time.Time // zero: no lifetime
	idleTimeout time.Duration
	// token is the sha256 of the session's access token (zero: none; implicit sessions).
	token [sha256.Size]byte
	// network is what its worker may reach (nil: nothing).
	network *egress.Policy
	// from is the snapshot a new session's disk is copied from ("": a new disk); only while
	// the session is made, never recorded.
	from *snapshots.Meta
	// volumes are mounted into its worker when the session is made.
	volumes []api.VolumeMount
}

// Least values of a session's limits: what a kernel needs to start and run small code.
const (
	MinSessionCPU      = 0.05
	MinSessionMemoryMB = 128
	MinSessionDiskMB   = 16
	MinSessionPids     = 16
	// maxIdleTimeout bounds a session's idle_timeout.
	maxIdleTimeout = 30 * 24 * time.Hour
)

// defaultLimits are the limits of a session of the default environment that asks for
// none: the worker flags.
func (d *Daemon) defaultLimits() api.Limits {
	return api.Limits{CPU: d.cfg.WorkerCPU, MemoryMB: d.cfg.WorkerRAMMB, DiskMB: d.cfg.WorkerDiskMB, Pids: d.cfg.WorkerPids}
}

// resolveLimits is base with what req names, checked against the caps. field prefixes the
// names in a refusal.
func (d *Daemon) resolveLimits(req *api.Limits, base api.Limits) (api.Limits, error) {
	if req == nil {
		return base, nil
	}
	out := base
	c := d.cfg
	if req.CPU != 0 {
		switch {
		case math.IsNaN(req.CPU) || math.IsInf(req.CPU, 0) || req.CPU < MinSessionCPU:
			return out, api.Refuse("limits.cpu", "limits.cpu must be at least %g cores", MinSessionCPU)
		case req.CPU > c.MaxSessionCPU:
			return out, api.Refuse("limits.cpu", "limits.cpu must be at most %g cores (--max-session-cpu)", c.MaxSessionCPU)
		}
		out.CPU = req.CPU
	}
	for _, l := range []struct {
		field  string
		v, min int
		max    int
		flag   string
		dst    *int
		unit   string
	}{
		{"limits.memory_mb", req.MemoryMB, MinSessionMemoryMB, c.MaxSessionRAMMB, "--max-session-ram-mb", &out.MemoryMB, " MB"},
		{"limits.disk_mb", req.DiskMB, MinSessionDiskMB, c.MaxSessionDiskMB, "--max-session-disk-mb", &out.DiskMB, " MB"},
		{"limits.pids", req.Pids, MinSessionPids, c.MaxSessionPids, "--max-session-pids", &out.Pids, ""},
	} {
		switch {
		case l.v == 0:
			continue
		case l.v < l.min:
			return out, api.Refuse(l.field, "%s must be at least %d%s", l.field, l.min, l.unit)
		case l.v > l.max:
			return out, api.Refuse(l.field, "%s must be at most %d%s (%s)", l.field, l.max, l.unit, l.flag)
		}
		*l.dst = l.v
	}
	return out, nil
}

// minLifetime is the shortest timeout or idle timeout a session may have: a shorter one
// ends it before a caller could use it, and its timer would fire in a loop.
const minLifetime = time.Second

// seconds checks a duration given in seconds: a finite number of at least a second and at
// most max.
func seconds(field string, v float64, max time.Duration) (time.Duration, error) {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < minLifetime.Seconds() {
		return 0, api.Refuse(field, "%s must be a number of seconds, at least %g", field, minLifetime.Seconds())
	}
	if v > max.Seconds() {
		return 0, api.Refuse(field, "%s must be at most %g seconds", field, max.Seconds())
	}
	return max1us(time.Duration(v * float64(time.Second))), nil
}

func max1us(d time.Duration) time.Duration { return max(d, time.Microsecond) }

// lifetime is when a session given timeout (seconds; nil: --session-ttl; 0: none) at now
// ends. --max-session-ttl caps every session's, those that ask for none too.
func (d *Daemon) lifetime(timeout *float64, now time.Time) (time.Time, error) {
	ttl, cap := d.cfg.SessionTTL, d.cfg.MaxSessionTTL
	if timeout != nil {
		switch t := *timeout; {
		case t == 0:
			ttl = 0
		case math.IsNaN(t) || math.IsInf(t, 0) || t < minLifetime.Seconds():
			return time.Time{}, api.Refuse("timeout", "timeout must be 0 (none) or a number of seconds, at least %g", minLifetime.Seconds())
		case cap > 0 && t > cap.Seconds():
			return time.Time{}, api.Refuse("timeout", "timeout must be at most %g seconds (--max-session-ttl)", cap.Seconds())
		case t > maxLifetime.Seconds():
			return time.Time{}, api.Refuse("timeout", "timeout must be at most %g seconds", maxLifetime.Seconds())
		default:
			ttl = max1us(time.Duration(t * float64(time.Second)))
		}
	}
	if cap > 0 && (ttl == 0 || ttl > cap) {
		ttl = cap
	}
	if ttl == 0 {
		return time.Time{}, nil
	}
	return now.Add(ttl), nil
}

// maxLifetime bounds a timeout a duration can express, whatever the operator allows.
const maxLifetime = 10 * 365 * 24 * time.Hour

var (
	metadataKey = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,64}$`)
	envName     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// checkMetadata checks a session's metadata: at most MaxMetadataPairs pairs, keys of
// [A-Za-z0-9._/-] up to 64 bytes, values of valid UTF-8 up to 512 bytes.
func checkMetadata(m map[string]string) (map[string]string, error) {
	if len(m) > api.MaxMetadataPairs {
		return nil, api.Refuse("metadata", "metadata has %d pairs; at most %d", len(m), api.MaxMetadataPairs)
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		if !metadataKey.MatchString(k) {
			return nil, api.Refuse("metadata", "metadata key %q must be 1..%d characters of A-Z a-z 0-9 . _ / -", api.Echo(k), api.MaxMetadataKey)
		}
		if len(v) > api.MaxMetadataValue || !validUTF8(v) {
			return nil, api.Refuse("metadata", "metadata %q: the value must be valid UTF-8 of at most %d bytes", k, api.MaxMetadataValue)
		}
		out[k] = v
	}
	return out, nil
}

// checkEnv checks a session's environment variables: at most MaxEnvVars, names that are
// identifiers and not codebox's own (CODEBOX_*), values without NUL, bounded each and in
// all. The error names the variable, never its value.
func checkEnv(env map[string]string) (map[string]string, error) {
	if len(env) > api.MaxEnvVars {
		return nil, api.Refuse("env", "env has %d variables; at most %d", len(env), api.MaxEnvVars)
	}
	total := 0
	out := make(map[string]string, len(env))
	for k, v := range env {
		switch {
		case !envName.MatchString(k) || len(k) > 256:
			return nil, api.Refuse("env", "env name %q is not an identifier ([A-Za-z_][A-Za-z0-9_]*)", api.Echo(k))
		case strings.HasPrefix(strings.ToUpper(k), "CODEBOX_"):
			return nil, api.Refuse("env", "env name %q: CODEBOX_ names are codebox's own", k)
		case len(v) > api.MaxEnvValueBytes:
			return nil, api.Refuse("env", "env %s: its value is over %d bytes", k, api.MaxEnvValueBytes)
		case strings.ContainsRune(v, 0):
			return nil, api.Refuse("env", "env %s: its value holds a NUL byte", k)
		}
		total += len(k) + len(v)
		out[k] = v
	}
	if total > api.MaxEnvTotalBytes {
		return nil, api.Refuse("env", "env holds %d bytes; at most %d", total, api.MaxEnvTotalBytes)
	}
	return out, nil
}

func validUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// envNames are a session's variable names, sorted (what the API shows of env).
func envNames(env map[string]string) []string {
	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// newSessionID names a session made without a name.
func newSessionID() string {
	var b [8]byte
	rand.Read(b[:])
	return api.SessionIDPrefix + hex.EncodeToString(b[:])
}

// newAccessToken is a session's access token and the hash the daemon keeps of it.
func newAccessToken() (string, [sha256.Size]byte) {
	var b [32]byte
	rand.Read(b[:])
	tok := api.AccessTokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return tok, sha256.Sum256([]byte(tok))
}

// matches reports whether metadata m holds every pair of want.
func matches(m, want map[string]string) bool {
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			return false
		}
	}
	return true
}
