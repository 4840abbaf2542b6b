package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
)

// objectStore plays presigned-URL object storage on loopback: GET serves blobs, PUT stores
// them, and some paths misbehave.
type objectStore struct {
	*httptest.Server
	mu    sync.Mutex
	blobs map[string][]byte
}

func newObjectStore(t *testing.T) *objectStore {
	s := &objectStore{blobs: map[string][]byte{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/blob/", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		switch r.Method {
		case http.MethodGet:
			b, ok := s.blobs[r.URL.Path]
			if !ok {
				http.NotFound(w, r)
				return
			}
			w.Write(b)
		case http.MethodPut:
			b, _ := io.ReadAll(r.Body)
			s.blobs[r.URL.Path] = b
			w.WriteHeader(http.StatusCreated)
		}
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/secret", http.StatusFound)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(20 * time.Second):
		}
	})
	mux.HandleFunc("/oversize", func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("z"), 1<<20)
		for i := 0; i < 8; i++ { // no Content-Length: the limit is found while streaming
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/wrong-length", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5000")
		w.Write([]byte("only some bytes"))
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func (s *objectStore) put(path string, b []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs["/blob/"+path] = b
	return s.URL + "/blob/" + path
}

func (s *objectStore) get(path string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blobs["/blob/"+path]
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestFiles(t *testing.T) {
	store := newObjectStore(t)
	d := startDaemon(t, "--file-allowlist", "127.0.0.1/32", "--max-file-mb", "4", "--file-timeout", "3s")
	ctx := context.Background()
	user := "e2e-files-" + randomHex(3)
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}

	t.Run("import, compute, export: identical bytes", func(t *testing.T) {
		resp, err := d.client.ImportFiles(ctx, user, []api.FileImport{
			{DownloadURL: store.put("in.bin", data), Path: "/sandbox/input/", Name: "in.bin"},
			{DownloadURL: store.put("small.csv", []byte("a,b\n1,2\n")), Name: "small.csv"},
		})
		if err != nil || !resp.Success || len(resp.Results) != 2 || resp.Results[0].FullPath != "/sandbox/input/in.bin" || resp.Results[0].Size != int64(len(data)) {
			t.Fatalf("import: %+v %v", resp, err)
		}
		r := d.exec(t, user, `
import hashlib, os
b = open("/sandbox/input/in.bin", "rb").read()
st = os.stat("/sandbox/input/in.bin")
open("/sandbox/out.bin", "wb").write(b[::-1])
open("/sandbox/small.csv", "a").write("3,4\n")
print(hashlib.sha256(b).hexdigest(), st.st_uid, st.st_gid)`)
		if r.Stdout != sha(data)+" 1000 1000\n" {
			t.Fatalf("in the worker: %q (want the same sha256, owner 1000:1000)", r.Stdout)
		}
		exp, err := d.client.ExportFiles(ctx, user, []api.FileExport{
			{Path: "/sandbox/", Name: "out.bin", UploadURL: store.URL + "/blob/out.bin"},
			{Path: "/sandbox/", Name: "small.csv", UploadURL: store.URL + "/blob/small.csv"},
		})
		if err != nil || !exp.Success || exp.Results[0].Size != int64(len(data)) {
			t.Fatalf("export: %+v %v", exp, err)
		}
		reversed := bytes.Clone(data)
		for i, j := 0, len(reversed)-1; i < j; i, j = i+1, j-1 {
			reversed[i], reversed[j] = reversed[j], reversed[i]
		}
		if sha(store.get("out.bin")) != sha(reversed) || string(store.get("small.csv")) != "a,b\n1,2\n3,4\n" {
			t.Fatalf("exported bytes differ")
		}
		list, err := d.client.ListFiles(ctx, user, "/sandbox/", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, e := range list.Entries {
			got[e.Name] = e.Type + ":" + strconv.FormatInt(e.Size, 10)
		}
		if got["input"] != "directory:0" || got["out.bin"] != "file:"+strconv.Itoa(len(data)) || got["small.csv"] != "file:12" {
			t.Fatalf("list: %v", got)
		}
		if resp, err := d.client.DeleteFiles(ctx, user, []api.FileRef{{Path: "/sandbox/", Name: "out.bin"}}); err != nil || !resp.Success {
			t.Fatalf("delete: %+v %v", resp, err)
		}
		if r := d.exec(t, user, "import os; os.path.exists('/sandbox/out.bin')"); *r.ResultText != "False" {
			t.Fatalf("deleted file still there")
		}
	})

	t.Run("direct upload and download", func(t *testing.T) {
		res, err := d.client.PutFile(ctx, user, "/sandbox/direct/d.bin", bytes.NewReader(data))
		if err != nil || res.Size != int64(len(data)) || res.FullPath != "/sandbox/direct/d.bin" {
			t.Fatalf("put: %+v %v", res, err)
		}
		var buf bytes.Buffer
		if n, err := d.client.GetFile(ctx, user, "/sandbox/direct/d.bin", &buf); err != nil || n != int64(len(data)) || sha(buf.Bytes()) != sha(data) {
			t.Fatalf("get: %d %v", n, err)
		}
		code, hdr, _ := d.request(t, "GET", "/api/v1/files/content?user_uuid="+user+"&path=/sandbox/small.csv", "", map[string]string{"X-Auth-Token": d.token})
		if code != 200 || hdr.Get("Content-Length") != "12" || !strings.HasPrefix(hdr.Get("Content-Type"), "text/csv") {
			t.Fatalf("headers: %d %v", code, hdr)
		}
		big := bytes.Repeat([]byte("y"), 5<<20)
		if _, err := d.client.PutFile(ctx, user, "/sandbox/big.bin", bytes.NewReader(big)); statusOf(err) != 413 {
			t.Fatalf("oversize upload: %v", err)
		}
		assertAbsent(t, d, user, "/sandbox/big.bin")
	})

	t.Run("paths outside /sandbox are refused", func(t *testing.T) {
		for _, f := range []api.FileImport{
			{Path: "/sandbox/../etc/", Name: "x"}, {Path: "/etc/", Name: "x"}, {Path: "/sandbox/", Name: "../x"},
			{Path: "/sandbox/", Name: "a/b"}, {Path: "/sandbox/", Name: `a\b`}, {Path: "/sandbox/", Name: "a\x00b"}, {Path: "/sandbox/", Name: ""},
		} {
			f.DownloadURL = store.put("in.bin", data)
			if _, err := d.client.ImportFiles(ctx, user, []api.FileImport{f}); statusOf(err) != 400 {
				t.Errorf("%q %q: %v", f.Path, f.Name, err)
			}
		}
		for _, p := range []string{"/etc/passwd", "/sandbox/../etc/passwd", "/sandbox/", "relative.txt"} {
			if _, err := d.client.GetFile(ctx, user, p, io.Discard); statusOf(err) != 400 {
				t.Errorf("GET %q: %v", p, err)
			}
		}
	})

	t.Run("symlinks planted by user code are not followed", func(t *testing.T) {
		d.exec(t, user, "import os\nos.symlink('/etc/shadow', '/sandbox/x')\nos.symlink('/etc', '/sandbox/d')")
		if _, err := d.client.GetFile(ctx, user, "/sandbox/x", io.Discard); statusOf(err) != 403 {
			t.Errorf("read through a symlink: %v", err)
		}
		if _, err := d.client.GetFile(ctx, user, "/sandbox/d/passwd", io.Discard); statusOf(err) != 403 {
			t.Errorf("read through a symlinked directory: %v", err)
		}
		if _, err := d.client.PutFile(ctx, user, "/sandbox/x", strings.NewReader("owned")); statusOf(err) != 403 {
			t.Errorf("write to a symlink: %v", err)
		}
		if _, err := d.client.PutFile(ctx, user, "/sandbox/d/owned", strings.NewReader("owned")); statusOf(err) != 403 {
			t.Errorf("write through a symlinked directory: %v", err)
		}
		resp, err := d.client.DeleteFiles(ctx, user, []api.FileRef{{Path: "/sandbox/", Name: "x"}, {Path: "/sandbox/d/", Name: "hostname"}})
		if err != nil || resp.Success || len(resp.Errors) != 2 {
			t.Errorf("delete through symlinks: %+v %v", resp, err)
		}
		if _, err := d.client.ListFiles(ctx, user, "/sandbox/d/", 0, 0); statusOf(err) != 403 {
			t.Errorf("list through a symlinked directory: %v", err)
		}
		imp, err := d.client.ImportFiles(ctx, user, []api.FileImport{{DownloadURL: store.put("s", []byte("x")), Path: "/sandbox/d/", Name: "evil"}})
		if err != nil || imp.Success {
			t.Errorf("import through a symlinked directory: %+v %v", imp, err)
		}
		r := d.exec(t, user, "import os\nprint(os.readlink('/sandbox/x'), os.readlink('/sandbox/d'))")
		if r.Stdout != "/etc/shadow /etc\n" {
			t.Errorf("the symlinks were changed: %q", r.Stdout)
		}
	})

	t.Run("misbehaving servers: a clear error and no partial file", func(t *testing.T) {
		cases := map[string]string{
			"redirect":     "redirects are not followed",
			"slow":         "longer than the file timeout",
			"oversize":     "larger than the",
			"wrong-length": "fewer bytes than it announced",
		}
		var files []api.FileImport
		for name := range cases {
			files = append(files, api.FileImport{DownloadURL: store.URL + "/" + name, Path: "/sandbox/bad/", Name: name})
		}
		files = append(files, api.FileImport{DownloadURL: store.put("good", []byte("good")), Path: "/sandbox/bad/", Name: "good"})
		resp, err := d.client.ImportFiles(ctx, user, files)
		if err != nil || resp.Success || len(resp.Results) != 1 || len(resp.Errors) != 4 {
			t.Fatalf("mixed import: %+v %v", resp, err)
		}
		for _, e := range resp.Errors {
			if !strings.Contains(e.Detail, cases[e.Name]) {
				t.Errorf("%s: detail %q, want %q", e.Name, e.Detail, cases[e.Name])
			}
		}
		list, _ := d.client.ListFiles(ctx, user, "/sandbox/bad/", 0, 0)
		if len(list.Entries) != 1 || list.Entries[0].Name != "good" {
			t.Errorf("left in /sandbox/bad: %+v", list.Entries)
		}
		assertAbsent(t, d, user, "/sandbox/bad/oversize") // and no temporary file anywhere
	})

	t.Run("limits", func(t *testing.T) {
		var many []string
		for i := 0; i < 101; i++ {
			many = append(many, fmt.Sprintf(`{"download_url":"http://127.0.0.1/%d","name":"f%d"}`, i, i))
		}
		code, _, _ := d.request(t, "POST", "/api/v1/files?user_uuid="+user, `{"files":[`+strings.Join(many, ",")+`]}`, map[string]string{"X-Auth-Token": d.token})
		if code != 400 {
			t.Errorf("101 files: %d", code)
		}
		huge := `{"files":[{"download_url":"http://127.0.0.1/x","name":"` + strings.Repeat("n", 9<<20) + `"}]}`
		if code, _, _ := d.request(t, "POST", "/api/v1/files?user_uuid="+user, huge, map[string]string{"X-Auth-Token": d.token}); code != 413 {
			t.Errorf("huge JSON body: %d", code)
		}
		if _, err := d.client.ImportFiles(ctx, user, []api.FileImport{{DownloadURL: "file:///etc/passwd", Name: "p"}}); statusOf(err) != 400 {
			t.Errorf("file:// URL: %v", err)
		}
	})

	t.Run("files of a session that does not exist", func(t *testing.T) {
		if _, err := d.client.ListFiles(ctx, "e2e-nobody", "/sandbox/", 0, 0); statusOf(err) != 404 {
			t.Errorf("list without a session: %v", err)
		}
	})
	d.client.Release(ctx, user)
}

func TestFilesSSRFWithoutAllowlist(t *testing.T) {
	store := newObjectStore(t)
	d := startDaemon(t)
	user := "e2e-ssrf-" + randomHex(3)
	for _, u := range []string{
		store.put("x", []byte("x")),
		strings.Replace(store.put("x", []byte("x")), "127.0.0.1", "localhost", 1),
		"http://169.254.169.254/latest/meta-data/",
		"http://[::1]:1/x",
		"http://10.0.0.1/x",
	} {
		resp, err := d.client.ImportFiles(context.Background(), user, []api.FileImport{{DownloadURL: u, Name: "x"}})
		if err != nil || resp.Success || len(resp.Errors) != 1 || !strings.Contains(resp.Errors[0].Detail, "not allowed") {
			t.Errorf("%s: %+v %v", u, resp, err)
			continue
		}
		// A refusal must not tell the caller what a name resolves to.
		if msg := resp.Errors[0].Detail; strings.Contains(u, "localhost") && (strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "::1")) {
			t.Errorf("%s: the refusal %q reveals the address", u, msg)
		}
	}
	d.client.Release(context.Background(), user)
}

// TestLargeTransferMemory moves 100 MB each way, directly and through object storage, and
// checks the daemon streams it (its peak RSS does not grow with the file).
func TestLargeTransferMemory(t *testing.T) {
	store := newObjectStore(t)
	d := startDaemon(t, "--max-file-mb", "110", "--file-allowlist", "127.0.0.1/32")
	user := "e2e-big-" + randomHex(3)
	ctx := context.Background()
	d.exec(t, user, "1")
	before := procBytes(t, d.cmd.Process.Pid, "VmHWM")
	const size = 100 << 20
	data, _ := io.ReadAll(io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
	want := sha(data)
	mbps := func(d time.Duration) float64 { return float64(size>>20) / d.Seconds() }

	start := time.Now()
	if _, err := d.client.PutFile(ctx, user, "/sandbox/big.bin", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	put := time.Since(start)
	h := sha256.New()
	start = time.Now()
	if n, err := d.client.GetFile(ctx, user, "/sandbox/big.bin", h); err != nil || n != size {
		t.Fatalf("download: %d %v", n, err)
	}
	get := time.Since(start)
	if hex.EncodeToString(h.Sum(nil)) != want {
		t.Fatal("direct round trip changed the bytes")
	}
	start = time.Now()
	imp, err := d.client.ImportFiles(ctx, user, []api.FileImport{{DownloadURL: store.put("big", data), Name: "imported.bin"}})
	if err != nil || !imp.Success {
		t.Fatalf("import: %+v %v", imp, err)
	}
	importTime := time.Since(start)
	start = time.Now()
	exp, err := d.client.ExportFiles(ctx, user, []api.FileExport{{Path: "/sandbox/", Name: "imported.bin", UploadURL: store.URL + "/blob/back"}})
	if err != nil || !exp.Success {
		t.Fatalf("export: %+v %v", exp, err)
	}
	exportTime := time.Since(start)
	if sha(store.get("back")) != want {
		t.Fatal("import/export round trip changed the bytes")
	}
	after := procBytes(t, d.cmd.Process.Pid, "VmHWM")
	t.Logf("100 MB: direct upload %.0f MB/s, direct download %.0f MB/s, import %.0f MB/s, export %.0f MB/s; daemon peak RSS %d MB before, %d MB after",
		mbps(put), mbps(get), mbps(importTime), mbps(exportTime), before>>20, after>>20)
	if after-before > 32<<20 {
		t.Fatalf("the daemon's peak RSS grew by %d MB moving 100 MB: not streaming", (after-before)>>20)
	}
	d.client.Release(ctx, user)
}

func statusOf(err error) int {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

func assertAbsent(t *testing.T, d *daemon, user, p string) {
	t.Helper()
	r := d.exec(t, user, fmt.Sprintf("import os, glob\nprint(os.path.exists(%q), glob.glob('/sandbox/**/.codebox-tmp-*', recursive=True))", p))
	if r.Stdout != "False []\n" {
		t.Fatalf("%s or a temporary file was left: %s", p, r.Stdout)
	}
}
