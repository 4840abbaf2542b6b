package apiserver

import "net/http"

// listEnvironments is GET /api/v1/environments: the environments, each pool's counts for
// admin callers.
func (s *server) listEnvironments(w http.ResponseWriter, r *http.Request) error {
	envs, err := s.b.Environments(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, envs)
}
