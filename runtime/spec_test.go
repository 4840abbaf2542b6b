package runtime

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestWorkerSpec composes a worker's OCI spec as Start does (but the image's config) and
// checks every promise of docs/ARCHITECTURE.md "A worker".
func TestWorkerSpec(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "codebox")
	ws := WorkerSpec{
		ID: "w-test", NetNSPath: "/run/codebox/netns/codebox0/w-test", UIDBase: 0x70000000,
		Resources: Resources{CPU: 1.5, MemoryMB: 1024, Pids: 512}, Env: []string{"CODEBOX_AGENT_TOKEN=t"},
		SandboxSource: "/var/lib/codeboxd/mounts/w-test", SandboxOptions: []string{"rbind", "rw", "nosuid", "nodev", "noexec", "nosymfollow"},
		AgentDir: "/usr/local/lib/codebox/agent",
	}
	s, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: ws.ID}, workerOpts(ws)...)
	if err != nil {
		t.Fatal(err)
	}

	// Identity: uid/gid 1000, in a user namespace mapping 0..65535 to the worker's range.
	if u := s.Process.User; u.UID != SandboxUID || u.GID != SandboxUID {
		t.Errorf("user %d:%d, want %d", u.UID, u.GID, SandboxUID)
	}
	wantMap := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0x70000000, Size: IDRange}}
	if !slices.Equal(s.Linux.UIDMappings, wantMap) || !slices.Equal(s.Linux.GIDMappings, wantMap) {
		t.Errorf("id mappings %+v %+v, want %+v", s.Linux.UIDMappings, s.Linux.GIDMappings, wantMap)
	}
	namespace := func(typ specs.LinuxNamespaceType) (specs.LinuxNamespace, bool) {
		for _, n := range s.Linux.Namespaces {
			if n.Type == typ {
				return n, true
			}
		}
		return specs.LinuxNamespace{}, false
	}
	if _, ok := namespace(specs.UserNamespace); !ok {
		t.Error("no user namespace")
	}
	if n, ok := namespace(specs.NetworkNamespace); !ok || n.Path != ws.NetNSPath {
		t.Errorf("network namespace %+v, want the prepared one", n)
	}
	if len(s.Linux.Sysctl) != 0 {
		t.Errorf("sysctls %v: in its own user namespace the worker may not set them (netns does, from the host)", s.Linux.Sysctl)
	}

	// Least privilege.
	c := s.Process.Capabilities
	if len(c.Bounding)+len(c.Effective)+len(c.Permitted)+len(c.Inheritable)+len(c.Ambient) != 0 {
		t.Errorf("capabilities %+v, want none", c)
	}
	if !s.Process.NoNewPrivileges {
		t.Error("no_new_privs is off")
	}
	if s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActErrno || len(s.Linux.Seccomp.Syscalls) == 0 {
		t.Error("no seccomp profile, or one that allows by default")
	}
	if s.Root == nil || !s.Root.Readonly {
		t.Error("the root filesystem is writable")
	}
	if len(s.Linux.MaskedPaths) == 0 || len(s.Linux.ReadonlyPaths) == 0 {
		t.Error("/proc's sensitive paths are not masked")
	}

	// Resources.
	r := s.Linux.Resources
	if r.Memory == nil || *r.Memory.Limit != 1024<<20 || *r.Memory.Swap != 1024<<20 {
		t.Errorf("memory %+v, want 1 GiB and no swap beyond it", r.Memory)
	}
	if r.CPU == nil || *r.CPU.Quota != 150_000 || *r.CPU.Period != 100_000 {
		t.Errorf("cpu %+v, want 1.5 cores", r.CPU)
	}
	if r.Pids == nil || r.Pids.Limit == nil || *r.Pids.Limit != 512 {
		t.Errorf("pids %+v, want 512", r.Pids)
	}

	// Mounts: its disk at /sandbox with the host mount's options, small tmpfs, no /sys.
	mounts := map[string]specs.Mount{}
	for _, m := range s.Mounts {
		mounts[m.Destination] = m
	}
	if m := mounts[SandboxDir]; m.Source != ws.SandboxSource || m.Type != "bind" || !slices.Equal(m.Options, ws.SandboxOptions) {
		t.Errorf("/sandbox mount %+v", m)
	}
	if m := mounts["/tmp"]; m.Type != "tmpfs" || !slices.Contains(m.Options, "size=64m") || !slices.Contains(m.Options, "noexec") {
		t.Errorf("/tmp mount %+v", m)
	}
	if m := mounts[homeDir]; m.Type != "tmpfs" || !slices.Contains(m.Options, "uid=1000") || !slices.Contains(m.Options, "size=16m") {
		t.Errorf("$HOME mount %+v", m)
	}
	if _, ok := mounts["/sys"]; ok {
		t.Error("/sys is mounted: a user namespace may not mount sysfs in a network namespace the host owns")
	}
	if m := mounts[AgentMount]; m.Source != ws.AgentDir || !slices.Contains(m.Options, "ro") || !slices.Contains(m.Options, "nosuid") {
		t.Errorf("the agent's mount %+v, want its directory read-only", m)
	}
	for dest, m := range mounts {
		if m.Type == "bind" && dest != SandboxDir && dest != AgentMount {
			t.Errorf("a bind mount of the host at %s", dest)
		}
	}

	// The process: the agent's launcher under tini, with the image's python3.
	if want := []string{AgentMount + "/tini", "--", "python3", AgentMount + "/codebox_boot.py"}; !slices.Equal(s.Process.Args, want) {
		t.Errorf("args %q, want %q", s.Process.Args, want)
	}
	if !slices.Contains(s.Process.Env, "HOME="+homeDir) || !slices.Contains(s.Process.Env, "LANG=C.UTF-8") {
		t.Errorf("env %v: no HOME or LANG", s.Process.Env)
	}

	if s.Process.Cwd != SandboxDir || !slices.Contains(s.Process.Env, "CODEBOX_AGENT_TOKEN=t") {
		t.Errorf("cwd %q, env %v", s.Process.Cwd, s.Process.Env)
	}
	if !strings.HasPrefix(s.Hostname, "codebox") {
		t.Errorf("hostname %q", s.Hostname)
	}
}
