package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
)

// The file calls on the fakes: the disk is a directory, the object store a local server.

func problemOf(err error) *api.Problem {
	var p *api.Problem
	if errors.As(err, &p) {
		return p
	}
	return nil
}

func TestFilesRoundTripAndListPages(t *testing.T) {
	fw := newWorld(t)
	d := fw.daemon(Config{})
	d.Start()
	ctx := context.Background()
	if _, err := d.PutFile(ctx, "u", "/sandbox/a/b.txt", strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	err := d.GetFile(ctx, "u", "/sandbox/a/b.txt", func(_ context.Context, name string, _ time.Time, r io.ReadSeeker) error {
		_, err := io.Copy(&got, r)
		return err
	})
	if err != nil || got.String() != "hello" {
		t.Fatalf("get: %q %v", got.String(), err)
	}
	for i := 0; i < 25; i++ {
		d.PutFile(ctx, "u", fmt.Sprintf("/sandbox/many/f%02d", i), strings.NewReader("x"))
	}
	seen := map[string]bool{}
	for offset := 0; ; {
		page, err := d.ListFiles(ctx, "u", "/sandbox/many/", offset, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Entries {
			seen[e.Name] = true
		}
		if !page.Truncated {
			break
		}
		offset = page.NextOffset
	}
	if len(seen) != 25 {
		t.Fatalf("listed %d of 25", len(seen))
	}
	if _, err := d.ListFiles(ctx, "nobody", "/sandbox/", 0, 0); problemOf(err) == nil || problemOf(err).Kind != api.NotFound {
		t.Fatalf("list without a session: %v", err)
	}
}

func TestFilesRefuseWhatIsNoRegularFile(t *testing.T) {
	fw := newWorld(t)
	d := fw.daemon(Config{})
	d.Start()
	ctx := context.Background()
	r, _ := run(t, d, "u", "ok", 0)
	if err := syscall.Mkfifo(filepath.Join(fw.dir, "mounts", r.WorkerID, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := d.GetFile(ctx, "u", "/sandbox/fifo", func(context.Context, string, time.Time, io.ReadSeeker) error {
		t.Error("a FIFO was handed out")
		return nil
	})
	if p := problemOf(err); p == nil || p.Kind != api.Conflict || !strings.Contains(p.Detail, "FIFO") {
		t.Fatalf("GET of a FIFO: %v, want a Conflict naming it", err)
	}
}

// One session's transfers take at most two of the shared slots, so one session's slow
// files cannot hold every slot.
func TestOneSessionTakesAtMostTwoTransferSlots(t *testing.T) {
	var now, most atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := now.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(150 * time.Millisecond)
		now.Add(-1)
		w.Write([]byte("x"))
	}))
	defer srv.Close()
	fw := newWorld(t)
	d := fw.daemon(Config{FileAllowlist: []string{"127.0.0.1/32"}})
	d.Start()
	var files []api.FileImport
	for i := 0; i < 6; i++ {
		files = append(files, api.FileImport{DownloadURL: srv.URL + fmt.Sprintf("/%d", i), Name: fmt.Sprintf("f%d", i)})
	}
	resp, err := d.ImportFiles(context.Background(), "u", files)
	if err != nil || !resp.Success {
		t.Fatalf("import: %+v %v", resp, err)
	}
	if m := most.Load(); m != maxSessionTransfers {
		t.Fatalf("at most %d transfers of the session at once, want %d", m, maxSessionTransfers)
	}
}

// A release cuts a file call that holds the session (a download to a caller that does not
// read): the call's context ends at once.
func TestReleaseCutsAFileCall(t *testing.T) {
	fw := newWorld(t)
	d := fw.daemon(Config{})
	d.Start()
	ctx := context.Background()
	d.PutFile(ctx, "u", "/sandbox/f", strings.NewReader("x"))
	sending := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- d.GetFile(ctx, "u", "/sandbox/f", func(ctx context.Context, _ string, _ time.Time, _ io.ReadSeeker) error {
			close(sending)
			<-ctx.Done() // a caller that never reads
			return ctx.Err()
		})
	}()
	<-sending
	start := time.Now()
	if err := d.Release(ctx, "u"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("release waited %s", took)
	}
	if p := problemOf(<-done); p == nil || p.Kind != api.Lost {
		t.Fatalf("the cut call: %v, want Lost", p)
	}
}
