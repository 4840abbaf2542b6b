package apiserver

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"

	"github.com/codebox/codebox/api"
)

// TestOpenAPIMatchesRoutes keeps the OpenAPI document and the router from drifting apart.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	var documented, routed []string
	for path, ops := range doc.Paths {
		for method := range ops {
			if method != "parameters" { // the path's own, not an operation
				documented = append(documented, strings.ToUpper(method)+" "+path)
			}
		}
	}
	for _, r := range NewHandler(&fakeBackend{}, ServerConfig{}).s.routes() {
		routed = append(routed, r.method+" "+openAPIPath(r.path))
	}
	sort.Strings(documented)
	sort.Strings(routed)
	if strings.Join(documented, "\n") != strings.Join(routed, "\n") {
		t.Fatalf("api.OpenAPI and router differ:\ndocumented:\n%s\n\nrouted:\n%s", strings.Join(documented, "\n"), strings.Join(routed, "\n"))
	}
}

// openAPIPath is a router path as OpenAPI writes it: /sessions/:id is /sessions/{id}.
func openAPIPath(p string) string {
	parts := strings.Split(p, "/")
	for i, part := range parts {
		if name, ok := strings.CutPrefix(part, ":"); ok {
			parts[i] = "{" + name + "}"
		}
	}
	return strings.Join(parts, "/")
}
