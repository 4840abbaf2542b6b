// Package environments owns what an environment is (SPEC 3.15): a named image with the
// bounds of its own warm pool, its sessions' default limits and variables, and the seed
// cells its workers run before they join the pool. It reads and checks the operator's
// --environments file and models each pool's demand (demand.go); the daemon runs the
// pools, cmd/codeboxd brings in the images.
package environments

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/codebox/codebox/api"
)

// Default names the environment of --worker-image and the worker flags. The file may
// name it too, to give it a seed or other bounds; its image is the flag's unless the
// entry names one.
const Default = "default"

// Environment is one entry of the file, as the operator wrote it; zero fields take the
// defaults (Resolve).
type Environment struct {
	Name    string `json:"name"`
	Image   string `json:"image,omitempty"`
	Archive string `json:"archive,omitempty"`
	// MinIdle is the pool's floor, held for it whatever other pools need; MaxTotal its
	// share of --max-total-workers (busy, idle and starting workers together).
	MinIdle  *int `json:"min_idle,omitempty"`
	MaxTotal int  `json:"max_total,omitempty"`
	// MaxIdle bounds the idle workers its learned demand may hold (default: MaxTotal): 0
	// with MinIdle 0 keeps no idle worker at all.
	MaxIdle *int `json:"max_idle,omitempty"`
	// Limits are its sessions' defaults; a zero field is the daemon's default.
	Limits api.Limits        `json:"limits,omitzero"`
	Env    map[string]string `json:"env,omitempty"`
	// Seed is code, per language, every worker runs before it joins the pool.
	Seed map[string]string `json:"seed,omitempty"`
}

// file is the shape of the --environments file.
type file struct {
	Environments []Environment `json:"environments"`
}

// Bounds of the file: it is the operator's, but a typo should not cost memory.
const (
	maxFileBytes    = 1 << 20
	MaxEnvironments = 64
	maxSeedBytes    = 64 << 10
)

var name = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// Load reads the --environments file (JSON; unknown keys are errors) and checks what can
// be checked without the daemon's flags. Errors name the entry.
func Load(path string) ([]Environment, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("environments file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("environments file %s: %w", path, err)
	}
	if len(b) > maxFileBytes {
		return nil, fmt.Errorf("environments file %s: larger than %d bytes", path, maxFileBytes)
	}
	envs, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("environments file %s: %w", path, err)
	}
	return envs, nil
}

// Parse reads the file's bytes; see Load.
func Parse(b []byte) ([]Environment, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w (the file is {\"environments\": [{\"name\": …, \"image\": …}, …]})", jsonError(b, err))
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value")
	}
	if f.Environments == nil {
		return nil, errors.New(`no "environments" list`)
	}
	if len(f.Environments) > MaxEnvironments {
		return nil, fmt.Errorf("%d environments; at most %d", len(f.Environments), MaxEnvironments)
	}
	seen := map[string]bool{}
	for i, e := range f.Environments {
		at := entryName(i, e.Name)
		switch {
		case !name.MatchString(e.Name):
			return nil, fmt.Errorf("%s: name must be 1..63 characters of a-z 0-9 . _ -, starting and ending with a letter or digit", at)
		case seen[e.Name]:
			return nil, fmt.Errorf("%s: a second environment of this name", at)
		case e.Name != Default && e.Image == "":
			return nil, fmt.Errorf("%s: no image (give the reference it is pulled by or imported as, and an archive for offline hosts)", at)
		case e.MinIdle != nil && *e.MinIdle < 0:
			return nil, fmt.Errorf("%s: min_idle must not be negative", at)
		case e.MaxTotal < 0:
			return nil, fmt.Errorf("%s: max_total must not be negative", at)
		case e.MinIdle != nil && e.MaxTotal > 0 && *e.MinIdle > e.MaxTotal:
			return nil, fmt.Errorf("%s: min_idle %d is more than max_total %d", at, *e.MinIdle, e.MaxTotal)
		case e.MaxIdle != nil && *e.MaxIdle < 0:
			return nil, fmt.Errorf("%s: max_idle must not be negative", at)
		case e.MaxIdle != nil && e.MinIdle != nil && *e.MaxIdle < *e.MinIdle:
			return nil, fmt.Errorf("%s: max_idle %d is less than min_idle %d", at, *e.MaxIdle, *e.MinIdle)
		}
		for lang, code := range e.Seed {
			if !slices.Contains(api.Languages, lang) {
				return nil, fmt.Errorf("%s: seed for %q: not a language (%s)", at, lang, strings.Join(api.Languages, ", "))
			}
			if len(code) > maxSeedBytes {
				return nil, fmt.Errorf("%s: seed for %s is longer than %d bytes", at, lang, maxSeedBytes)
			}
		}
		seen[e.Name] = true
	}
	return f.Environments, nil
}

// jsonError says where in b a decoding error is.
func jsonError(b []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	off := int64(-1)
	switch {
	case errors.As(err, &syn):
		off = syn.Offset
	case errors.As(err, &typ):
		off = typ.Offset
	}
	if off < 0 || off > int64(len(b)) {
		return err
	}
	line := 1 + bytes.Count(b[:off], []byte("\n"))
	return fmt.Errorf("line %d: %w", line, err)
}

func entryName(i int, n string) string {
	if name.MatchString(n) {
		return fmt.Sprintf("environment %q", n)
	}
	return fmt.Sprintf("environment #%d", i+1)
}

// Defaults are what an entry's zero fields become: the flags of the default environment.
type Defaults struct {
	Image, Archive  string
	MinIdle         int // --min-idle-workers: the default environment's floor
	MaxTotalWorkers int // --max-total-workers: the global cap
}

// Resolve gives every environment its defaults and checks the shares against the global
// cap. The default environment comes first, from the flags when the file does not name
// it; the others keep the file's order.
func Resolve(envs []Environment, d Defaults) ([]Environment, error) {
	out := []Environment{{Name: Default}}
	for _, e := range envs {
		if e.Name == Default {
			out[0] = e
		} else {
			out = append(out, e)
		}
	}
	sumMin := 0
	for i := range out {
		e := &out[i]
		at := fmt.Sprintf("environment %q", e.Name)
		if e.Name == Default && e.Image == "" {
			e.Image, e.Archive = d.Image, d.Archive
		}
		if e.MinIdle == nil {
			// A named environment is there to be used: one warm worker unless the
			// operator says otherwise; the default keeps --min-idle-workers.
			n := 1
			if e.Name == Default {
				n = d.MinIdle
			}
			e.MinIdle = &n
		}
		if e.MaxTotal == 0 {
			e.MaxTotal = d.MaxTotalWorkers
		}
		if e.MaxIdle == nil {
			n := e.MaxTotal
			e.MaxIdle = &n
		}
		switch {
		case e.MaxTotal > d.MaxTotalWorkers:
			return nil, fmt.Errorf("%s: max_total %d is more than --max-total-workers %d", at, e.MaxTotal, d.MaxTotalWorkers)
		case *e.MinIdle > e.MaxTotal:
			return nil, fmt.Errorf("%s: min_idle %d is more than max_total %d", at, *e.MinIdle, e.MaxTotal)
		case *e.MaxIdle < *e.MinIdle:
			return nil, fmt.Errorf("%s: max_idle %d is less than min_idle %d", at, *e.MaxIdle, *e.MinIdle)
		}
		sumMin += *e.MinIdle
	}
	if sumMin > d.MaxTotalWorkers {
		return nil, fmt.Errorf("the environments' min_idle add up to %d, more than --max-total-workers %d", sumMin, d.MaxTotalWorkers)
	}
	return out, nil
}

// Languages in the order seeds run.
func (e Environment) SeedLanguages() []string {
	var ls []string
	for _, l := range api.Languages {
		if e.Seed[l] != "" {
			ls = append(ls, l)
		}
	}
	return ls
}
