package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

const (
	// jupyterPort is the peer's loopback port.
	jupyterPort = "9476"
	// peerCgroup holds the peer and its kernels (cgroup v1), with the workers' limits.
	peerCgroup = "codebox-bench-peer"
)

// jupyterPeer is a Jupyter Server with ipykernel from Debian's packages, what the seed runs
// behind its gateway, started by this command.
type jupyterPeer struct {
	cmd   *exec.Cmd
	url   string
	token string
	dir   string
	done  chan error
}

// startJupyter starts the peer in a cgroup of users workers' limits (each worker: workerCPU
// cores, ramMB): its kernels are its children and share them, as the workers share the
// host. Everything it writes goes under state.
func startJupyter(ctx context.Context, o options, state string, users, ramMB int) (*jupyterPeer, error) {
	bin, err := exec.LookPath("jupyter-server")
	if err != nil {
		return nil, fmt.Errorf("the Jupyter peer needs Debian's jupyter-server and python3-ipykernel (make deps installs them): %w", err)
	}
	dir := filepath.Join(state, "jupyter")
	for _, d := range []string{"root", "runtime", "data", "config", "ipython"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	p := &jupyterPeer{url: "http://127.0.0.1:" + jupyterPort, token: randomHex(16), dir: dir, done: make(chan error, 1)}
	p.cmd = exec.Command(bin, "--allow-root", "--ServerApp.ip=127.0.0.1", "--ServerApp.port="+jupyterPort,
		"--ServerApp.port_retries=0", "--ServerApp.open_browser=False", "--ServerApp.token="+p.token,
		"--ServerApp.root_dir="+filepath.Join(dir, "root"), "--ServerApp.log_level=WARN")
	p.cmd.Env = append(os.Environ(), "JUPYTER_RUNTIME_DIR="+filepath.Join(dir, "runtime"),
		"JUPYTER_DATA_DIR="+filepath.Join(dir, "data"), "JUPYTER_CONFIG_DIR="+filepath.Join(dir, "config"),
		"IPYTHONDIR="+filepath.Join(dir, "ipython"), "MPLBACKEND=Agg")
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its kernels stop with it
	logf, err := os.Create(filepath.Join(state, "jupyter.log"))
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() { p.done <- p.cmd.Wait(); logf.Close() }()
	if err := limitPeer(p.cmd.Process.Pid, float64(users)*o.workerCPU, int64(users*ramMB)<<20); err != nil {
		p.stop()
		return nil, err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/api/status", nil)
		req.Header.Set("Authorization", "token "+p.token)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		select {
		case err := <-p.done:
			log, _ := os.ReadFile(filepath.Join(state, "jupyter.log"))
			return nil, fmt.Errorf("jupyter-server exited: %v\n%s", err, log)
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("jupyter-server did not answer within a minute")
		}
	}
}

// limitPeer puts pid in the peer's cgroups (v1): cpus cores, mem bytes.
func limitPeer(pid int, cpus float64, mem int64) error {
	for ctrl, files := range map[string]map[string]string{
		"cpu":    {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": strconv.Itoa(int(cpus * 100000))},
		"memory": {"memory.limit_in_bytes": strconv.FormatInt(mem, 10)},
	} {
		dir := filepath.Join("/sys/fs/cgroup", ctrl, peerCgroup)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("peer cgroup: %w", err)
		}
		for f, v := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0o644); err != nil {
				return fmt.Errorf("peer cgroup %s: %w", f, err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("peer cgroup: %w", err)
		}
	}
	return nil
}

// stop ends the peer and its kernels (its process group, which this command made) and
// removes its cgroups.
func (p *jupyterPeer) stop() {
	if p.cmd.ProcessState == nil {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	// The kernels may outlive the server by a moment.
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	for _, ctrl := range []string{"cpu", "memory"} {
		dir := filepath.Join("/sys/fs/cgroup", ctrl, peerCgroup)
		for i := 0; i < 50; i++ {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
