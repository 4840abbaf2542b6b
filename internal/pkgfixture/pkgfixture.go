// Package pkgfixture builds the packages the tests and the bench serve from their own
// package index and registry: a pure-Python wheel and an npm tarball, made here so that no
// test needs a package from the internet.
package pkgfixture

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"time"
)

// Wheel is a pure-Python wheel of distribution dist at version with one module whose
// VALUE is value; its RECORD is true.
func Wheel(dist, module, version, value string) []byte {
	info := fmt.Sprintf("%s-%s.dist-info", strings.ReplaceAll(dist, "-", "_"), version)
	files := []struct{ name, body string }{
		{module + "/__init__.py", fmt.Sprintf("VALUE = %q\n", value)},
		{info + "/METADATA", fmt.Sprintf("Metadata-Version: 2.1\nName: %s\nVersion: %s\n", dist, version)},
		{info + "/WHEEL", "Wheel-Version: 1.0\nGenerator: codebox-pkgfixture\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
	}
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	var record strings.Builder
	for _, f := range files {
		w, _ := z.Create(f.name) // writes to memory: no error but a bad name, and these are good
		w.Write([]byte(f.body))
		sum := sha256.Sum256([]byte(f.body))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", f.name, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.body))
	}
	fmt.Fprintf(&record, "%s/RECORD,,\n", info)
	w, _ := z.Create(info + "/RECORD")
	w.Write([]byte(record.String()))
	z.Close()
	return buf.Bytes()
}

// NPMTarball is an npm package: a function that pads a string on the left with '*'.
func NPMTarball(name, version string) []byte {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range []struct{ path, body string }{
		{"package/package.json", fmt.Sprintf(`{"name": %q, "version": %q, "main": "index.js"}`, name, version)},
		{"package/index.js", "module.exports = (s, n) => String(s).padStart(n, '*');\n"},
	} {
		tw.WriteHeader(&tar.Header{Name: f.path, Mode: 0o644, Size: int64(len(f.body)), ModTime: time.Unix(1700000000, 0)})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}
