package pkgcache

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/Masterminds/semver/v3"
	pep440 "github.com/aquasecurity/go-pep440-version"
)

// Allowlist is the operator's list of packages workers may install (--package-allowlist):
// a line per package, "pypi NAME [SPECIFIERS]" (PEP 440, "requests >=2,<3") or
// "npm NAME [RANGE]" (semver, "left-pad ^1.3"); "#" starts a comment. A package it does not
// name, or a version outside its line's range, is refused.
type Allowlist struct {
	pypi map[string]*pep440.Specifiers // nil: any version
	npm  map[string]*semver.Constraints
}

// LoadAllowlist reads an allowlist file; errors name the line.
func LoadAllowlist(file string) (*Allowlist, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseAllowlist(io.LimitReader(f, 4<<20))
}

// ParseAllowlist reads an allowlist.
func ParseAllowlist(r io.Reader) (*Allowlist, error) {
	a := &Allowlist{pypi: map[string]*pep440.Specifiers{}, npm: map[string]*semver.Constraints{}}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) < 2 {
			return nil, fmt.Errorf("package allowlist line %d: want \"pypi NAME [SPECIFIERS]\" or \"npm NAME [RANGE]\"", n)
		}
		eco, name, spec := fields[0], fields[1], strings.Join(fields[2:], " ")
		switch eco {
		case "pypi":
			name = normalizePyPI(name)
			if !pypiName.MatchString(name) {
				return nil, fmt.Errorf("package allowlist line %d: %q is not a project name", n, fields[1])
			}
			if spec == "" {
				a.pypi[name] = nil
				continue
			}
			s, err := pep440.NewSpecifiers(spec)
			if err != nil {
				return nil, fmt.Errorf("package allowlist line %d: %q: %v", n, spec, err)
			}
			a.pypi[name] = &s
		case "npm":
			if !npmName.MatchString(name) {
				return nil, fmt.Errorf("package allowlist line %d: %q is not an npm package name", n, name)
			}
			if spec == "" {
				a.npm[name] = nil
				continue
			}
			c, err := semver.NewConstraint(spec)
			if err != nil {
				return nil, fmt.Errorf("package allowlist line %d: %q: %v", n, spec, err)
			}
			a.npm[name] = c
		default:
			return nil, fmt.Errorf("package allowlist line %d: %q is neither pypi nor npm", n, eco)
		}
	}
	return a, sc.Err()
}

func (a *Allowlist) allowsName(eco, name string) bool {
	if eco == "pypi" {
		_, ok := a.pypi[name]
		return ok
	}
	_, ok := a.npm[name]
	return ok
}

// allowsVersion reports whether the allowlist lets version of name through (a version
// that cannot be read is not).
func (a *Allowlist) allowsVersion(eco, name, version string) bool {
	if eco == "pypi" {
		spec, ok := a.pypi[name]
		if !ok {
			return false
		}
		if spec == nil {
			return true
		}
		v, err := pep440.Parse(version)
		return err == nil && spec.Check(v)
	}
	c, ok := a.npm[name]
	if !ok {
		return false
	}
	if c == nil {
		return true
	}
	v, err := semver.NewVersion(version)
	return err == nil && c.Check(v)
}

func (a *Allowlist) allowsFile(o origin) bool {
	if o.eco == "pypi" {
		return a.allowsVersion("pypi", o.pkg, pypiVersion(o.filename))
	}
	return a.allowsVersion("npm", o.pkg, o.version)
}
