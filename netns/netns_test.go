package netns

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// host-local's reservations, as its disk store writes them: the file is named for the
// address and holds the container id, "\r\n" and the interface (an id alone in old ones).
func TestReservedBy(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"10.214.0.2":         "w-aaaaaaaaaaaa\r\neth0",
		"10.214.0.3":         "w-bbbbbbbbbbbb",
		"fd00::5":            "w-cccccccccccc\r\neth0",
		"last_reserved_ip.0": "10.214.0.3",
		"lock":               "",
		"10.214.0.9":         "",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got := reservedBy(dir)
	slices.Sort(got)
	if want := []string{"w-aaaaaaaaaaaa", "w-bbbbbbbbbbbb", "w-cccccccccccc"}; !slices.Equal(got, want) {
		t.Fatalf("reservedBy: %q, want %q", got, want)
	}
	if got := reservedBy(filepath.Join(dir, "missing")); got != nil {
		t.Fatalf("a missing dir: %q", got)
	}
}
