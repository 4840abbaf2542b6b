package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
	"github.com/codebox/codebox/runtime"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
)

func TestSessionBasics(t *testing.T) {
	d := startDaemon(t)
	user := "e2e-" + randomHex(4)

	t.Run("state is kept across calls", func(t *testing.T) {
		r1 := d.exec(t, user, "x = 41\nx + 1")
		if r1.ResultText == nil || *r1.ResultText != "42" || r1.Error != nil {
			t.Fatalf("first call: %+v", r1)
		}
		r2 := d.exec(t, user, "x += 1\nprint('x is', x)\nx")
		if r2.WorkerID != r1.WorkerID {
			t.Fatalf("session moved from %s to %s", r1.WorkerID, r2.WorkerID)
		}
		if r2.Stdout != "x is 42\n" || *r2.ResultText != "x is 42\n42" || r2.ExecutionCount != 2 {
			t.Fatalf("second call: %+v", r2)
		}
	})

	t.Run("plt.show gives a PNG", func(t *testing.T) {
		r := d.exec(t, user, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('中文')\nplt.show()")
		if r.ResultBase64 == nil {
			t.Fatalf("no PNG: %+v", r)
		}
		png, err := base64.StdEncoding.DecodeString(*r.ResultBase64)
		if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
			t.Fatalf("result_base64 is not a PNG (%v)", err)
		}
		if strings.Contains(r.Stderr, "missing from current font") {
			t.Fatalf("CJK glyphs missing: %s", r.Stderr)
		}
	})

	t.Run("an exception is 400 with a traceback and keeps the session", func(t *testing.T) {
		code, _, body := d.request(t, "POST", "/api/v1/execute?user_uuid="+user, `{"code":"print('before')\nundefined_name"}`,
			map[string]string{"X-Auth-Token": d.token})
		if code != 400 || !strings.Contains(body, `"detail":"NameError: name 'undefined_name' is not defined"`) ||
			!strings.Contains(body, `"traceback":[`) || !strings.Contains(body, `"stdout":"before\n"`) {
			t.Fatalf("status %d body %s", code, body)
		}
		if r := d.exec(t, user, "x"); *r.ResultText != "42" {
			t.Fatalf("state lost after an exception: %+v", r)
		}
	})

	t.Run("status counts the session's worker", func(t *testing.T) {
		st, err := d.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		// Besides it, the pool may hold an idle worker it learned to keep from this session.
		if st.BusyWorkers != 1 || st.TotalWorkers > 2 || st.MaxTotalWorkers != 10 || st.IdleWorkersInPool != st.IdleWorkers {
			t.Fatalf("status = %+v", st)
		}
	})

	t.Run("release starts fresh", func(t *testing.T) {
		before := d.exec(t, user, "1").WorkerID
		for i := 0; i < 2; i++ { // idempotent
			if err := d.client.Release(context.Background(), user); err != nil {
				t.Fatalf("release %d: %v", i, err)
			}
		}
		eventually(t, 10*time.Second, "the released worker destroyed", func() bool { return !slices.Contains(containerIDs(t), before) })
		r := d.exec(t, user, "x")
		if r.Error == nil || r.Error.Ename != "NameError" || r.WorkerID == before {
			t.Fatalf("after release: %+v", r)
		}
		d.client.Release(context.Background(), user)
	})

	t.Run("the token is required", func(t *testing.T) {
		for _, h := range []map[string]string{nil, {"X-Auth-Token": "wrong"}} {
			code, _, body := d.request(t, "POST", "/api/v1/execute?user_uuid="+user, `{"code":"1"}`, h)
			if code != 401 || !strings.Contains(body, `"detail"`) {
				t.Fatalf("headers %v: %d %s", h, code, body)
			}
		}
		code, _, _ := d.request(t, "POST", "/api/v1/execute?user_uuid="+user, `{"code":"1"}`,
			map[string]string{"Authorization": "Bearer " + d.token})
		if code != 200 {
			t.Fatalf("bearer token: %d", code)
		}
		d.client.Release(context.Background(), user)
	})
}

func TestTimeoutInterruptsAndKeepsState(t *testing.T) {
	d := startDaemon(t, "--exec-timeout", "2s")
	user := "e2e-timeout-" + randomHex(4)
	d.exec(t, user, "kept = 'yes'")
	start := time.Now()
	_, err := d.client.Execute(context.Background(), user, "import time\nprint('started', flush=True)\nwhile True: time.sleep(0.05)", 0)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 504 || !flagIs(afterOf(ae).StatePreserved, true) {
		t.Fatalf("err = %#v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("timeout answered after %s", took)
	}
	if a := afterOf(ae); a.Stdout == nil || *a.Stdout != "started\n" {
		t.Fatalf("partial output lost: %+v", a)
	}
	if r := d.exec(t, user, "kept"); r.ResultText == nil || *r.ResultText != "'yes'" {
		t.Fatalf("state after interrupt: %+v", r)
	}
	d.client.Release(context.Background(), user)
}

// TestPullFromLoopbackRegistry proves the pull path: a registry on loopback serves the
// image, and a codeboxd with an empty namespace and no archive pulls it through containerd.
func TestPullFromLoopbackRegistry(t *testing.T) {
	if _, err := exec.LookPath("docker-registry"); err != nil {
		t.Fatalf("docker-registry is not installed: %v", err)
	}
	ctx := context.Background()
	port := freePort(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%d\n", filepath.Join(dir, "data"), port)), 0o644)
	reg := exec.Command("docker-registry", "serve", cfg)
	var regLog bytes.Buffer
	reg.Stdout, reg.Stderr = &regLog, &regLog
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Process.Kill(); reg.Wait() })
	waitForPort(t, fmt.Sprintf("127.0.0.1:%d", port))

	// Push the built image, from the tests' namespace, to the registry.
	rt, err := runtime.Connect(ctx, env.containerd, namespace, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if _, err := rt.EnsureImage(ctx, env.image, env.archive, slog.Default()); err != nil {
		t.Fatal(err)
	}
	remote := fmt.Sprintf("127.0.0.1:%d/codebox/worker:e2e", port)
	if err := rt.Push(ctx, env.image, remote); err != nil {
		t.Fatalf("push: %v\nregistry log:\n%s", err, regLog.String())
	}

	pullNS := "codebox-e2e-pull-" + randomHex(3)
	t.Cleanup(func() { deleteNamespace(t, pullNS) })
	d := startDaemon(t, "--containerd-namespace", pullNS, "--worker-image", remote, "--worker-image-archive", "")
	if !strings.Contains(d.logs.String(), "worker image pulled") {
		t.Fatalf("the image was not pulled:\n%s", d.logs.String())
	}
	user := "e2e-pull-" + randomHex(4)
	if r := d.exec(t, user, "import sys; sys.version_info[0]"); r.ResultText == nil || *r.ResultText != "3" {
		t.Fatalf("execute in a pulled worker: %+v", r)
	}
	d.client.Release(ctx, user)
	d.stop()
}

func waitForPort(t *testing.T, addr string) {
	t.Helper()
	eventually(t, 30*time.Second, addr+" listening", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// deleteNamespace removes a namespace the test made, with its images (and so, after the
// synchronous garbage collection, their content and snapshots).
func deleteNamespace(t *testing.T, ns string) {
	c, err := client.New(env.containerd, client.WithDefaultNamespace(ns))
	if err != nil {
		t.Errorf("cleanup of %s: %v", ns, err)
		return
	}
	defer c.Close()
	ctx := context.Background()
	imgs, _ := c.ImageService().List(ctx)
	for i, img := range imgs {
		var opts []images.DeleteOpt
		if i == len(imgs)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		if err := c.ImageService().Delete(ctx, img.Name, opts...); err != nil {
			t.Errorf("delete image %s: %v", img.Name, err)
		}
	}
	var lastErr error
	for i := 0; i < 50; i++ {
		if lastErr = c.NamespaceService().Delete(ctx, ns); lastErr == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if lastErr != nil {
		t.Errorf("delete namespace %s: %v", ns, lastErr)
	}
	if err := runtime.RemoveCgroupParents(ns); err != nil {
		t.Errorf("cleanup of %s: %v", ns, err)
	}
	if left := runtime.CgroupParents(ns); len(left) > 0 {
		t.Errorf("cgroups of namespace %s left: %v", ns, left)
	}
}
