package runtime

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SandboxUID is the user (and group) the kernel agent and user code run as.
const SandboxUID = 1000

// cfsPeriod is the CFS period the CPU quota is expressed in (100 ms, the kernel default).
const cfsPeriod = 100_000

// Sizes of the worker's memory-backed scratch space; both count against its memory limit.
const (
	TmpSizeMB  = 64 // /tmp
	HomeSizeMB = 16 // $HOME: IPython's and matplotlib's caches
)

// SandboxDir is the worker's working directory, its virtual disk.
const SandboxDir = "/sandbox"

// homeDir is $HOME in the worker image.
const homeDir = "/home/sandbox"

// WorkerSpec is what a worker container is made from.
type WorkerSpec struct {
	ID        string
	Image     client.Image
	NetNSPath string   // the network namespace to join
	CPU       float64  // cores (CFS quota)
	MemoryMB  int      // memory limit
	Pids      int      // pids limit
	Env       []string // added to the image's environment (the agent's token and port)
	// SandboxSource is the host mount of the worker's virtual disk, bind-mounted at
	// /sandbox with SandboxOptions (the host mount's flags, which runc does not inherit).
	SandboxSource  string
	SandboxOptions []string
	Labels         map[string]string
	LogPath        string // the task's stdout/stderr on the host; empty: discarded
}

// specOpts composes the worker's OCI spec, one option per concern.
func specOpts(s WorkerSpec) []oci.SpecOpts {
	return []oci.SpecOpts{
		oci.WithImageConfig(s.Image),
		oci.WithHostname("codebox"),
		withIdentity(),
		withLeastPrivilege(),
		withResources(s.CPU, s.MemoryMB, s.Pids),
		withNetwork(s.NetNSPath),
		withMounts(s.SandboxSource, s.SandboxOptions),
		oci.WithProcessCwd(SandboxDir),
		oci.WithEnv(s.Env),
	}
}

// withLeastPrivilege takes away what user code could escalate with: every capability,
// setuid gains (no_new_privs), syscalls outside containerd's default seccomp profile, and
// writes to the image's root filesystem. /proc's sensitive paths stay masked or read-only
// as in containerd's default spec.
func withLeastPrivilege() oci.SpecOpts {
	return oci.Compose(
		oci.WithCapabilities(nil),
		func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
			s.Process.Capabilities.Inheritable = nil
			s.Process.Capabilities.Ambient = nil
			return nil
		},
		oci.WithNoNewPrivileges,
		seccomp.WithDefaultProfile(),
		oci.WithRootFSReadonly(),
	)
}

// withMounts adds the worker's disk at /sandbox and size-limited tmpfs for /tmp and
// $HOME; nothing else of the host is mounted.
func withMounts(sandboxSource string, sandboxOptions []string) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
		if sandboxSource == "" {
			return fmt.Errorf("no virtual disk for %s", SandboxDir)
		}
		scratch := []string{"nosuid", "nodev", "noexec"}
		mounts := []specs.Mount{
			{Destination: SandboxDir, Type: "bind", Source: sandboxSource, Options: sandboxOptions},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs",
				Options: append(scratch, fmt.Sprintf("size=%dm", TmpSizeMB), "mode=1777")},
			{Destination: homeDir, Type: "tmpfs", Source: "tmpfs",
				Options: append(scratch, fmt.Sprintf("size=%dm", HomeSizeMB), "mode=0700",
					fmt.Sprintf("uid=%d", SandboxUID), fmt.Sprintf("gid=%d", SandboxUID))},
		}
		return oci.WithMounts(mounts)(ctx, c, ctr, s)
	}
}

// withIdentity runs the process as the sandbox user whatever the image says.
func withIdentity() oci.SpecOpts {
	return oci.WithUIDGID(SandboxUID, SandboxUID)
}

// withResources sets the cgroup limits: CPU quota, memory (swap not allowed beyond it),
// pids.
func withResources(cpu float64, memoryMB, pids int) oci.SpecOpts {
	memory := int64(memoryMB) << 20
	return oci.Compose(
		oci.WithCPUCFS(int64(cpu*cfsPeriod), cfsPeriod),
		oci.WithMemoryLimit(uint64(memory)),
		oci.WithMemorySwap(memory),
		oci.WithPidsLimit(int64(pids)),
	)
}

// withNetwork joins the network namespace the caller prepared (CNI-wired) and turns IPv6
// off in it: the worker has no business with the link-local addresses its veth gets.
func withNetwork(path string) oci.SpecOpts {
	return oci.Compose(
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path}),
		func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
			if s.Linux == nil {
				s.Linux = &specs.Linux{}
			}
			if s.Linux.Sysctl == nil {
				s.Linux.Sysctl = map[string]string{}
			}
			s.Linux.Sysctl["net.ipv6.conf.all.disable_ipv6"] = "1"
			s.Linux.Sysctl["net.ipv6.conf.default.disable_ipv6"] = "1"
			return nil
		},
	)
}
