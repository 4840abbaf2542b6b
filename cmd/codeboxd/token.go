package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/codebox/codebox/api"
)

// minKeyLength is the shortest API key accepted: a generated one has 64 hex characters.
const minKeyLength = 32

// placeholders are values that ship in examples and templates; a key equal to one (or to a
// run of one character) is what nobody chose.
var placeholders = []string{"replace-with-a-random-token", "changeme", "change-me", "secret", "password",
	"your-token-here", "your-api-key", "token", "example", "codebox"}

// checkKey refuses a key an attacker could guess: too short, a placeholder, one character
// repeated.
func checkKey(key string) error {
	lower := strings.ToLower(key)
	for _, p := range placeholders {
		if strings.Contains(lower, p) && len(lower) < len(p)+minKeyLength {
			return fmt.Errorf("it is the placeholder %q (or nearly); generate one: openssl rand -hex 32", p)
		}
	}
	if len(key) < minKeyLength {
		return fmt.Errorf("it has %d characters, fewer than %d; generate one: openssl rand -hex 32", len(key), minKeyLength)
	}
	if strings.Count(key, key[:1]) == len(key) {
		return errors.New("it is one character repeated; generate one: openssl rand -hex 32")
	}
	return nil
}

// loadToken returns the API token: envToken when set; otherwise the one in
// <stateDir>/auth_token, generated (mode 0600) on first start. A weak token is refused; a
// token file others may read is warned of.
func loadToken(stateDir, envToken string, log *slog.Logger) (string, error) {
	if t := strings.TrimSpace(envToken); t != "" {
		if err := checkKey(t); err != nil {
			return "", fmt.Errorf("%s refused: %w", api.TokenEnv, err)
		}
		return t, nil
	}
	path := filepath.Join(stateDir, api.TokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("token file %s is empty", path)
		}
		if err := checkKey(t); err != nil {
			return "", fmt.Errorf("the token in %s refused: %w", path, err)
		}
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
			log.Warn("the API token file can be read by others than its owner: chmod 0600 it", "path", path, "mode", fmt.Sprintf("%04o", st.Mode().Perm()))
		}
		return t, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read token: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return "", fmt.Errorf("state dir: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	token := hex.EncodeToString(raw[:])
	// O_EXCL: two daemons starting at once must not overwrite each other's token.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return loadToken(stateDir, "", log)
		}
		return "", fmt.Errorf("write token: %w", err)
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("write token: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write token: %w", err)
	}
	return token, nil
}
