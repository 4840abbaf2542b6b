package apiserver

import (
	"net/http"

	"github.com/codebox/codebox/api"
	"github.com/julienschmidt/httprouter"
)

// createSnapshot is POST /api/v1/sessions/{id}/snapshots.
func (s *server) createSnapshot(w http.ResponseWriter, r *http.Request) error {
	id, err := sessionID(r)
	if err != nil {
		return err
	}
	var req api.CreateSnapshotRequest
	if r.ContentLength != 0 {
		if err := decodeStrict(w, r, &req); err != nil {
			return err
		}
	}
	snap, err := s.b.CreateSnapshot(r.Context(), id, req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, snap)
}

func (s *server) listSnapshots(w http.ResponseWriter, r *http.Request) error {
	l, err := s.b.ListSnapshots(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, l)
}

func snapshotID(r *http.Request) string {
	return httprouter.ParamsFromContext(r.Context()).ByName("snapshot")
}

func (s *server) getSnapshot(w http.ResponseWriter, r *http.Request) error {
	snap, err := s.b.GetSnapshot(r.Context(), snapshotID(r))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, snap)
}

func (s *server) deleteSnapshot(w http.ResponseWriter, r *http.Request) error {
	if err := s.b.DeleteSnapshot(r.Context(), snapshotID(r)); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// fork is POST /api/v1/sessions/{id}/fork.
func (s *server) fork(w http.ResponseWriter, r *http.Request) error {
	id, err := sessionID(r)
	if err != nil {
		return err
	}
	var req api.ForkRequest
	if err := decodeStrict(w, r, &req); err != nil {
		return err
	}
	f, err := s.b.Fork(r.Context(), id, req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, f)
}

// createVolume is POST /api/v1/volumes.
func (s *server) createVolume(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateVolumeRequest
	if err := decodeStrict(w, r, &req); err != nil {
		return err
	}
	v, err := s.b.CreateVolume(r.Context(), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, v)
}

func (s *server) listVolumes(w http.ResponseWriter, r *http.Request) error {
	l, err := s.b.ListVolumes(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, l)
}

func volumeName(r *http.Request) string {
	return httprouter.ParamsFromContext(r.Context()).ByName("volume")
}

func (s *server) getVolume(w http.ResponseWriter, r *http.Request) error {
	v, err := s.b.GetVolume(r.Context(), volumeName(r))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, v)
}

func (s *server) deleteVolume(w http.ResponseWriter, r *http.Request) error {
	if err := s.b.DeleteVolume(r.Context(), volumeName(r)); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
