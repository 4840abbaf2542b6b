package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SandboxUID is the user (and group) the kernel agent and user code run as, inside the
// worker's user namespace.
const SandboxUID = 1000

// IDRange is the size of each worker's range of host uids and gids: its user namespace maps
// uids 0..IDRange-1 to UIDBase.. on the host.
const IDRange = 65536

// HostUID is the host uid of SandboxUID in the worker whose range starts at base: the owner
// of its disk's root and of the files the daemon writes there.
func HostUID(base uint32) int { return int(base) + SandboxUID }

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
	Image     *Image
	NetNSPath string // the network namespace to join
	// UIDBase starts the worker's own range of IDRange host uids and gids: per-user
	// kernel limits (pipe buffers, processes, message queues) are not shared with other
	// workers or host accounts.
	UIDBase   uint32
	Resources Resources
	Env       []string // added to the image's environment (the agent's token and port)
	// SandboxSource is the host mount point of the worker's virtual disk, bind-mounted at
	// /sandbox with SandboxOptions (the host mount's flags, which runc does not inherit,
	// and rslave: the disk is mounted there when a session takes the worker).
	SandboxSource  string
	SandboxOptions []string
	// AgentDir is the host directory of the kernel agent (and its launcher, its
	// dependencies and tini), mounted read-only at AgentMount: the image needs nothing of
	// codebox's.
	AgentDir string
	// ResolvConf, when set, is the host file bound read-only at /etc/resolv.conf.
	ResolvConf string
	Labels     map[string]string
	LogPath    string // the task's stdout/stderr on the host; empty: discarded
	// BeforeStart, when set, runs once the task exists (its namespaces made, pid given)
	// and before its process starts: the host's last word on it.
	BeforeStart func(pid uint32) error
}

// specOpts composes the worker's OCI spec, one option per concern: the image's config,
// then the worker's.
func specOpts(s WorkerSpec) []oci.SpecOpts {
	return append([]oci.SpecOpts{oci.WithImageConfig(s.Image.img)}, workerOpts(s)...)
}

// workerOpts are what codebox makes of a worker, whatever the image says.
func workerOpts(s WorkerSpec) []oci.SpecOpts {
	return []oci.SpecOpts{
		oci.WithHostname("codebox"),
		withIdentity(),
		withUserNamespace(s.UIDBase),
		withLeastPrivilege(),
		withResources(s.Resources),
		withNetwork(s.NetNSPath),
		withMounts(s.SandboxSource, s.SandboxOptions),
		withAgent(s.AgentDir),
		withResolvConf(s.ResolvConf),
		oci.WithProcessCwd(SandboxDir),
		oci.WithEnv(s.Env),
	}
}

// withResolvConf binds path read-only at /etc/resolv.conf: the worker's resolver is the one
// its network policy is decided at, whatever the image names.
func withResolvConf(path string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if path == "" {
			return nil
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: path,
			Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}})
		return nil
	}
}

// AgentMount is where a worker sees the agent's directory.
const AgentMount = "/opt/codebox/agent"

// withAgent mounts the agent's directory read-only and makes its launcher the worker's
// process, under tini (it reaps the processes user code leaves), whatever the image's
// entrypoint: python3 is the image's own, found on its PATH. The agent's environment is
// set here too; what the image sets of LANG stays.
func withAgent(dir string, args ...string) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
		if dir == "" {
			return errors.New("no agent directory")
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: AgentMount, Type: "bind", Source: dir,
			Options: []string{"rbind", "ro", "nosuid", "nodev"}})
		s.Process.Args = append([]string{AgentMount + "/tini", "--", "python3", AgentMount + "/codebox_boot.py"}, args...)
		env := []string{"HOME=" + homeDir, "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"}
		if !slices.ContainsFunc(s.Process.Env, func(kv string) bool { return strings.HasPrefix(kv, "LANG=") }) {
			env = append(env, "LANG=C.UTF-8")
		}
		return oci.WithEnv(env)(ctx, c, ctr, s)
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
func withResources(res Resources) oci.SpecOpts {
	memory := int64(res.MemoryMB) << 20
	return oci.Compose(
		oci.WithCPUCFS(int64(res.CPU*cfsPeriod), cfsPeriod),
		oci.WithMemoryLimit(uint64(memory)),
		oci.WithMemorySwap(memory),
		oci.WithPidsLimit(int64(res.Pids)),
	)
}

// withNetwork joins the network namespace the caller prepared (CNI-wired, IPv6 off: the
// netns package sets that from the host, as the worker's own user namespace may not).
func withNetwork(path string) oci.SpecOpts {
	return oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path})
}

// withUserNamespace maps the worker's uids and gids 0..IDRange-1 to its own host range
// from base. The image's files, owned by host root, show as the overflow uid and stay
// readable; the root filesystem is read-only anyway, so nothing is chowned. Without a
// network namespace of its own the user namespace may not mount sysfs, so the worker has no
// /sys: nothing it runs needs it (CPU counts come from /proc), and the host's would show
// its interfaces and cgroups.
func withUserNamespace(base uint32) oci.SpecOpts {
	ids := []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: IDRange}}
	return oci.Compose(
		oci.WithUserNamespace(ids, ids),
		func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
			mounts := s.Mounts[:0]
			for _, m := range s.Mounts {
				if m.Destination != "/sys" {
					mounts = append(mounts, m)
				}
			}
			s.Mounts = mounts
			return nil
		},
	)
}

// Per user namespace limits. A new user namespace starts with no limit of its own on inotify
// instances and watches; what its processes create is charged, up the chain, to the
// namespace's owner (root, as containerd creates it) against the host's per-user limit. So
// every worker gets its own limit (LimitUserNamespace), and the host's limit for root is
// raised to hold all of them besides what host services use (EnsureHostLimits).
const (
	workerInotifyInstances = 128  // the kernel's default per user
	workerInotifyWatches   = 8192 // the kernel's default per user, before 5.11
	// hostHeadroom is what is kept for host services beyond the workers' share.
	hostHeadroom = 8
)

// LimitUserNamespace sets the inotify limits of the user namespace of the process pid (a
// worker's task, created and not yet started). A multithreaded Go program cannot enter a
// user namespace, so nsenter does it.
func LimitUserNamespace(pid uint32) error {
	script := fmt.Sprintf("echo %d > /proc/sys/user/max_inotify_instances && echo %d > /proc/sys/user/max_inotify_watches",
		workerInotifyInstances, workerInotifyWatches)
	out, err := exec.Command("nsenter", "--user", "--target", strconv.FormatUint(uint64(pid), 10), "--", "/bin/sh", "-c", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("limit the user namespace of pid %d: %v: %s", pid, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// EnsureHostLimits raises the host's per-user inotify limits, if they are lower, to hold
// maxWorkers workers' limits and some for host services: their use is charged to root.
func EnsureHostLimits(maxWorkers int) error {
	for name, per := range map[string]int{"max_user_instances": workerInotifyInstances, "max_user_watches": workerInotifyWatches} {
		path := "/proc/sys/fs/inotify/" + name
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		have, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if want := per * (maxWorkers + hostHeadroom); have < want {
			if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o644); err != nil {
				return fmt.Errorf("raise %s to %d: %w", path, want, err)
			}
		}
	}
	return nil
}
