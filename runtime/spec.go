package runtime

import (
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SandboxUID is the user (and group) the kernel agent and user code run as.
const SandboxUID = 1000

// cfsPeriod is the CFS period the CPU quota is expressed in (100 ms, the kernel default).
const cfsPeriod = 100_000

// WorkerSpec is what a worker container is made from.
type WorkerSpec struct {
	ID        string
	Image     client.Image
	NetNSPath string   // the network namespace to join
	CPU       float64  // cores (CFS quota)
	MemoryMB  int      // memory limit
	Pids      int      // pids limit
	Env       []string // added to the image's environment (the agent's token and port)
	Labels    map[string]string
	LogPath   string // the task's stdout/stderr on the host; empty: discarded
}

// specOpts composes the worker's OCI spec, one option per concern.
func specOpts(s WorkerSpec) []oci.SpecOpts {
	return []oci.SpecOpts{
		oci.WithImageConfig(s.Image),
		oci.WithHostname("codebox"),
		withIdentity(),
		withResources(s.CPU, s.MemoryMB, s.Pids),
		withNetwork(s.NetNSPath),
		oci.WithEnv(s.Env),
	}
}

// withIdentity runs the process as the sandbox user whatever the image says.
func withIdentity() oci.SpecOpts {
	return oci.WithUIDGID(SandboxUID, SandboxUID)
}

// withResources sets the cgroup limits: CPU quota, memory, pids.
func withResources(cpu float64, memoryMB, pids int) oci.SpecOpts {
	return oci.Compose(
		oci.WithCPUCFS(int64(cpu*cfsPeriod), cfsPeriod),
		oci.WithMemoryLimit(uint64(memoryMB)<<20),
		oci.WithPidsLimit(int64(pids)),
	)
}

// withNetwork joins the network namespace the caller prepared (CNI-wired).
func withNetwork(path string) oci.SpecOpts {
	return oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path})
}
