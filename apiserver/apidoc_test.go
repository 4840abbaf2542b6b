package apiserver

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/codebox/codebox/api"
)

// TestAPIReferenceMatchesOpenAPI keeps docs/API.md, the reference a person reads, naming
// the same routes and fields as openapi.json and the router.
func TestAPIReferenceMatchesOpenAPI(t *testing.T) {
	md, err := os.ReadFile("../docs/API.md")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}

	// Routes: "### METHOD /path" headings.
	var documented []string
	for _, m := range regexp.MustCompile(`(?m)^### (GET|POST|PUT|PATCH|DELETE) (/\S*)$`).FindAllStringSubmatch(string(md), -1) {
		documented = append(documented, m[1]+" "+m[2])
	}
	var routed []string
	for _, r := range NewHandler(&fakeBackend{}, ServerConfig{}).s.routes() {
		routed = append(routed, r.method+" "+openAPIPath(r.path))
	}
	sort.Strings(documented)
	sort.Strings(routed)
	if !slices.Equal(documented, routed) {
		t.Errorf("routes of docs/API.md:\n%s\nof the router:\n%s", strings.Join(documented, "\n"), strings.Join(routed, "\n"))
	}

	// Fields: the first column of the reference's tables, but flags and environment.
	inDoc := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z0-9_]+)` \\|").FindAllStringSubmatch(string(md), -1) {
		inDoc[m[1]] = true
	}
	// Every property and parameter anywhere in the OpenAPI document.
	inSpec := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if props, ok := v["properties"].(map[string]any); ok {
				for name := range props {
					inSpec[name] = true
				}
			}
			if name, ok := v["name"].(string); ok && v["in"] != nil && v["type"] != "apiKey" { // not the token's header
				inSpec[name] = true
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(doc)
	for f := range inSpec {
		if !inDoc[f] {
			t.Errorf("field %q of openapi.json is not in docs/API.md", f)
		}
	}
	for f := range inDoc {
		if !inSpec[f] {
			t.Errorf("field %q of docs/API.md is not in openapi.json", f)
		}
	}
}
