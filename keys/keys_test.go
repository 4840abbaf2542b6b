package keys

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	token = "0123456789abcdef0123456789abcdef-token-of-the-test"
	keyA  = "aaaa1111bbbb2222cccc3333dddd4444eeee5555"
	keyB  = "bbbb1111cccc2222dddd3333eeee4444ffff5555"
)

func writeKeys(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLookupAndReload(t *testing.T) {
	p := writeKeys(t, "# tenants\nalice "+keyA+"\n\nops "+keyB+" admin\n", 0o600)
	s, err := New(token, "default", p)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]Key{token: {"default", true}, keyA: {"alice", false}, keyB: {"ops", true}} {
		if got, ok := s.Lookup(key); !ok || got != want {
			t.Errorf("Lookup(%.8s…) = %+v %v, want %+v", key, got, ok, want)
		}
	}
	for _, bad := range []string{"", keyA[:len(keyA)-1], keyA + "x", strings.ToUpper(keyA)} {
		if _, ok := s.Lookup(bad); ok {
			t.Errorf("Lookup(%q) found a key", bad)
		}
	}
	// Reload: alice's key goes, the token stays; a broken file changes nothing.
	if err := os.WriteFile(p, []byte("ops "+keyB+" admin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Reload(token, p); err != nil || n != 1 {
		t.Fatalf("reload: %d %v", n, err)
	}
	if _, ok := s.Lookup(keyA); ok {
		t.Error("a key removed from the file still works after the reload")
	}
	if _, ok := s.Lookup(token); !ok {
		t.Error("the API token stopped working after the reload")
	}
	os.WriteFile(p, []byte("bob short\n"), 0o600)
	if _, err := s.Reload(token, p); err == nil {
		t.Fatal("a file with a weak key was taken")
	}
	if _, ok := s.Lookup(keyB); !ok {
		t.Error("a refused reload changed the keys")
	}
}

// Every way a keys file can be wrong refuses the whole file, naming the line and never the
// key.
func TestLoadRefuses(t *testing.T) {
	for name, c := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"readable by others": {"alice " + keyA + "\n", 0o644, "chmod 0600"},
		"a short key":        {"alice 0123456789\n", 0o600, ":1: the key of \"alice\" refused"},
		"a placeholder":      {"alice replace-with-a-random-token\n", 0o600, "placeholder"},
		"one character":      {"alice " + strings.Repeat("z", 40) + "\n", 0o600, "one character repeated"},
		"a name twice":       {"alice " + keyA + "\nalice " + keyB + "\n", 0o600, ":2: the name \"alice\" is there twice"},
		"a key twice":        {"alice " + keyA + "\nbob " + keyA + "\n", 0o600, ":2: the key of \"bob\" is another name's too"},
		"a bad name":         {"al/ice " + keyA + "\n", 0o600, ":1: the name must be"},
		"a bad flag":         {"alice " + keyA + " root\n", 0o600, ":1: want"},
		"a lone word":        {"alice\n", 0o600, ":1: want"},
		"the token's name":   {"default " + keyA + "\n", 0o600, ":1: the name \"default\" is the API token's"},
		"a token-like key":   {"alice cbs_" + keyA + "\n", 0o600, ":1: the key of \"alice\" starts like a session's access token"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(writeKeys(t, c.content, c.mode))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v, want an error with %q", err, c.want)
			}
			if strings.Contains(err.Error(), keyA) || strings.Contains(err.Error(), keyB) {
				t.Fatalf("the error shows a key: %v", err)
			}
		})
	}
	if _, err := New("short", "default", ""); err == nil {
		t.Fatal("a weak API token was taken")
	}
	p := writeKeys(t, "alice "+token+"\n", 0o600)
	if _, err := New(token, "default", p); err == nil {
		t.Fatal("a file key equal to the API token was taken")
	}
}
