package environments

import (
	"strings"
	"testing"
)

func TestParseRefusesNamingTheEntry(t *testing.T) {
	for _, c := range []struct{ file, want string }{
		{`{"environments": [{"name": "a", "image": "x", "min_idel": 1}]}`, `unknown field "min_idel"`},
		{`{"environments": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]}`, `environment "a": a second environment`},
		{`{"environments": [{"name": "a", "image": "x", "min_idle": 3, "max_total": 2}]}`, `environment "a": min_idle 3 is more than max_total 2`},
		{`{"environments": [{"name": "a"}]}`, `environment "a": no image`},
		{`{"environments": [{"name": "A b", "image": "x"}]}`, `environment #1: name must be`},
		{`{"environments": [{"name": "a", "image": "x", "seed": {"cobol": "x"}}]}`, `environment "a": seed for "cobol": not a language`},
		{`{"environments": [{"name": "a", "image": "x", "min_idle": -1}]}`, `min_idle must not be negative`},
		{`{"environments": [{"name": "a", "image": "x", "min_idle": 2, "max_idle": 1}]}`, `environment "a": max_idle 1 is less than min_idle 2`},
		{"{\"environments\": [\n{\"name\": \"a\",, \"image\": \"x\"}]}", `line 2`},
		{`{"environments": [{"name": "a", "image": 5}]}`, `cannot unmarshal number`},
		{`{}`, `no "environments" list`},
		{`{"environments": []} {}`, `more than one JSON value`},
	} {
		_, err := Parse([]byte(c.file))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.file, err, c.want)
		}
	}
}

func TestResolve(t *testing.T) {
	defaults := Defaults{Image: "img:default", Archive: "/a.tar", MinIdle: 2, MaxTotalWorkers: 10}
	envs, err := Parse([]byte(`{"environments": [
		{"name": "seeded", "image": "img:s", "max_total": 4, "seed": {"python": "import pandas"}},
		{"name": "default", "seed": {"python": "import numpy"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := Resolve(envs, defaults)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != Default || got[1].Name != "seeded" {
		t.Fatalf("order: %+v", got)
	}
	if d := got[0]; d.Image != "img:default" || d.Archive != "/a.tar" || *d.MinIdle != 2 || d.MaxTotal != 10 || d.Seed["python"] != "import numpy" {
		t.Errorf("default: %+v", d)
	}
	if s := got[1]; *s.MinIdle != 1 || s.MaxTotal != 4 || *s.MaxIdle != 4 || len(s.SeedLanguages()) != 1 {
		t.Errorf("seeded: %+v", s)
	}
	// No file: the default alone, from the flags.
	if got, err := Resolve(nil, defaults); err != nil || len(got) != 1 || got[0].Image != "img:default" {
		t.Errorf("no file: %+v %v", got, err)
	}
	for _, c := range []struct{ file, want string }{
		{`{"environments": [{"name": "a", "image": "x", "max_total": 11}]}`, `environment "a": max_total 11 is more than --max-total-workers 10`},
		{`{"environments": [{"name": "a", "image": "x", "min_idle": 5}, {"name": "b", "image": "y", "min_idle": 4}]}`, `add up to 11`},
	} {
		envs, err := Parse([]byte(c.file))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Resolve(envs, defaults); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.file, err, c.want)
		}
	}
}
