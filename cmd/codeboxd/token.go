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
	"github.com/codebox/codebox/keys"
)

// loadToken returns the API token: envToken when set; otherwise the one in
// <stateDir>/auth_token, generated (mode 0600) on first start. A weak token is refused; a
// token file others may read is warned of.
func loadToken(stateDir, envToken string, log *slog.Logger) (string, error) {
	if t := strings.TrimSpace(envToken); t != "" {
		if err := keys.Check(t); err != nil {
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
		if err := keys.Check(t); err != nil {
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
