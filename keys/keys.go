// Package keys owns the API keys: the file of --api-keys (one key a line, `NAME KEY
// [admin]`), the API token of AUTH_TOKEN or the token file (one admin key, of the default
// tenant), what makes a key weak, and looking a key up. A key is a tenant: its name owns the
// sessions it makes. Keys are kept by their SHA-256 only, so looking one up is one map
// read whose time does not depend on how much of a guess matches.
package keys

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
)

// MinLength is the shortest key accepted: a generated one has 64 hex characters.
const MinLength = 32

// Key is what a key grants: the tenant it names, and whether it is an admin's.
type Key struct {
	Name  string
	Admin bool
}

// placeholders are values that ship in examples and templates; a key equal to one (or
// nearly) is what nobody chose.
var placeholders = []string{"replace-with-a-random-token", "changeme", "change-me", "secret", "password",
	"your-token-here", "your-api-key", "token", "example", "codebox"}

// Check refuses a key an attacker could guess: too short, a placeholder, one character
// repeated.
func Check(key string) error {
	lower := strings.ToLower(key)
	for _, p := range placeholders {
		if strings.Contains(lower, p) && len(lower) < len(p)+MinLength {
			return fmt.Errorf("it is the placeholder %q (or nearly); generate one: openssl rand -hex 32", p)
		}
	}
	if len(key) < MinLength {
		return fmt.Errorf("it has %d characters, fewer than %d; generate one: openssl rand -hex 32", len(key), MinLength)
	}
	if strings.Count(key, key[:1]) == len(key) {
		return errors.New("it is one character repeated; generate one: openssl rand -hex 32")
	}
	return nil
}

// reservedName is the tenant of the API token; sessionTokenPrefix starts every session
// access token (api.AccessTokenPrefix): a key so named could never be told apart.
const (
	reservedName       = "default"
	sessionTokenPrefix = "cbs_"
)

// namePattern is what a tenant's name may be.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Set is the keys the API accepts. Its file part can be replaced (Reload) while it serves.
type Set struct {
	token *Key // the API token's key, never replaced
	mu    sync.RWMutex
	byKey map[[sha256.Size]byte]Key
}

// New is a set of the API token (an admin key of tenant, usually api.DefaultTenant) and,
// when path is not empty, the keys of that file.
func New(token, tenant, path string) (*Set, error) {
	if err := Check(token); err != nil {
		return nil, fmt.Errorf("the API token refused: %w", err)
	}
	s := &Set{}
	m := map[[sha256.Size]byte]Key{sha256.Sum256([]byte(token)): {Name: tenant, Admin: true}}
	if path != "" {
		file, err := Load(path)
		if err != nil {
			return nil, err
		}
		for h, k := range file {
			if _, dup := m[h]; dup {
				return nil, fmt.Errorf("%s: the key of %q is the API token's", path, k.Name)
			}
			m[h] = k
		}
	}
	s.byKey = m
	s.token = &Key{Name: tenant, Admin: true}
	return s, nil
}

// Lookup is the key's grant, if it is one of the set.
func (s *Set) Lookup(key string) (Key, bool) {
	if key == "" {
		return Key{}, false
	}
	h := sha256.Sum256([]byte(key))
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.byKey[h]
	return k, ok
}

// Reload replaces the file's keys by what path says now, keeping the API token. A file
// that cannot be used changes nothing; the error says why.
func (s *Set) Reload(token, path string) (int, error) {
	file, err := Load(path)
	if err != nil {
		return 0, err
	}
	th := sha256.Sum256([]byte(token))
	if _, dup := file[th]; dup {
		return 0, fmt.Errorf("%s: a key is the API token's", path)
	}
	file[th] = *s.token
	s.mu.Lock()
	s.byKey = file
	s.mu.Unlock()
	return len(file) - 1, nil
}

// Load reads a keys file: readable by its owner alone (0600), one key a line, `NAME KEY`
// or `NAME KEY admin`; blank lines and lines starting with # are skipped. Names are
// 1..64 characters of A-Z a-z 0-9 . _ -, each once; a key weak by Check, or used twice,
// refuses the whole file. Errors name the line, never the key.
func Load(path string) (map[[sha256.Size]byte]Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("keys file %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("keys file %s can be read by others than its owner (mode %04o): chmod 0600 it", path, st.Mode().Perm())
	}
	const maxFile = 4 << 20
	data, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	if len(data) > maxFile {
		return nil, fmt.Errorf("keys file %s is over %d bytes", path, maxFile)
	}
	out := map[[sha256.Size]byte]Key{}
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > 3 || (len(f) == 3 && f[2] != "admin") {
			return nil, fmt.Errorf("%s:%d: want `NAME KEY` or `NAME KEY admin`", path, n)
		}
		name, key := f[0], f[1]
		if !namePattern.MatchString(name) {
			return nil, fmt.Errorf("%s:%d: the name must be 1..64 characters of A-Z a-z 0-9 . _ -", path, n)
		}
		if name == reservedName {
			return nil, fmt.Errorf("%s:%d: the name %q is the API token's (AUTH_TOKEN)", path, n, name)
		}
		if strings.HasPrefix(key, sessionTokenPrefix) {
			return nil, fmt.Errorf("%s:%d: the key of %q starts like a session's access token (%s)", path, n, name, sessionTokenPrefix)
		}
		if names[name] {
			return nil, fmt.Errorf("%s:%d: the name %q is there twice", path, n, name)
		}
		if err := Check(key); err != nil {
			return nil, fmt.Errorf("%s:%d: the key of %q refused: %w", path, n, name, err)
		}
		h := sha256.Sum256([]byte(key))
		if _, dup := out[h]; dup {
			return nil, fmt.Errorf("%s:%d: the key of %q is another name's too", path, n, name)
		}
		names[name] = true
		out[h] = Key{Name: name, Admin: len(f) == 3}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("keys file %s: %w", path, err)
	}
	return out, nil
}
