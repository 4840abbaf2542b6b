package api

import "time"

// Volume is a named volume (SPEC 3.14): a disk of its own that outlives sessions, mounted
// into a session at create time, read-write in one session at a time or read-only in many.
type Volume struct {
	Name      string    `json:"name"`
	SizeMB    int       `json:"size_mb"`
	CreatedAt time.Time `json:"created_at"`
	// StoredMB is what it takes on the host.
	StoredMB float64 `json:"stored_mb"`
	// MountedBy are the running sessions that have it.
	MountedBy []VolumeUse `json:"mounted_by"`
}

// VolumeUse is a session's mount of a volume.
type VolumeUse struct {
	SessionID string `json:"session_id"`
	Path      string `json:"path"`
	ReadOnly  bool   `json:"read_only"`
}

// VolumeMount asks for a volume in a new session: where (a directory under /sandbox) and how.
type VolumeMount struct {
	Name     string `json:"name"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// MaxVolumeMounts bounds the volumes one session mounts.
const MaxVolumeMounts = 8

// CreateVolumeRequest is the body of POST /api/v1/volumes.
type CreateVolumeRequest struct {
	Name   string `json:"name"`
	SizeMB int    `json:"size_mb"`
}

// VolumeList is the body of GET /api/v1/volumes.
type VolumeList struct {
	Volumes []Volume `json:"volumes"`
}
