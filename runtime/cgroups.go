package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// cgroupRoot is where the cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// RemoveCgroupParents removes the cgroup directory named after namespace in every
// hierarchy. containerd's default cgroupsPath is /<namespace>/<id>: runc removes a
// container's own directory with it but leaves the parent, one per controller and
// namespace, for ever. A parent that still holds a container is left alone.
func RemoveCgroupParents(namespace string) error {
	if namespace == "" || strings.ContainsAny(namespace, "/*?[") {
		return fmt.Errorf("remove cgroups: bad namespace %q", namespace)
	}
	dirs, err := filepath.Glob(filepath.Join(cgroupRoot, "*", namespace)) // v1 and hybrid
	if err != nil {
		return err
	}
	return removeEmptyDirs(append(dirs, filepath.Join(cgroupRoot, namespace))) // + v2
}

// CgroupParents lists the cgroup directories named after namespace that exist.
func CgroupParents(namespace string) []string {
	dirs, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", namespace))
	if _, err := os.Stat(filepath.Join(cgroupRoot, namespace)); err == nil {
		dirs = append(dirs, filepath.Join(cgroupRoot, namespace))
	}
	return dirs
}

// removeWorkerCgroups removes worker id's own cgroup directories, in every hierarchy,
// that are empty. runc removes them when it deletes a container, but a `runc create` cut
// short (its shim killed while codeboxd stops, say) leaves the ones it had made: on
// cgroup v1 typically cpuset alone. A directory that still holds a process is left.
func removeWorkerCgroups(namespace, id string) error {
	if namespace == "" || id == "" || strings.ContainsAny(namespace+id, "/*?[\x00") {
		return fmt.Errorf("remove cgroups: bad worker %s/%s", namespace, id)
	}
	return removeEmptyDirs(workerCgroupDirs(cgroupRoot, namespace, id))
}

// workerCgroupDirs lists where worker id's cgroups would be: one directory per v1
// hierarchy and the v2 one, whether or not they exist.
func workerCgroupDirs(root, namespace, id string) []string {
	dirs, _ := filepath.Glob(filepath.Join(root, "*", namespace, id))
	return append(dirs, filepath.Join(root, namespace, id))
}

// removeOrphanCgroups removes the empty cgroup directories under the namespace's parents
// whose worker has no container (live is every container of the namespace).
func removeOrphanCgroups(root, namespace string, live map[string]bool) (removed []string, err error) {
	parents, _ := filepath.Glob(filepath.Join(root, "*", namespace))
	var orphans []string
	for _, parent := range append(parents, filepath.Join(root, namespace)) {
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if e.IsDir() && !live[e.Name()] {
				orphans = append(orphans, filepath.Join(parent, e.Name()))
			}
		}
	}
	err = removeEmptyDirs(orphans)
	for _, d := range orphans {
		if _, serr := os.Stat(d); errors.Is(serr, os.ErrNotExist) {
			removed = append(removed, "cgroup "+d)
		}
	}
	return removed, err
}

// removeEmptyDirs removes each cgroup directory that exists and holds no process.
func removeEmptyDirs(dirs []string) error {
	var errs []error
	for _, d := range dirs {
		err := os.Remove(d)
		if err == nil || errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ENOTEMPTY) {
			continue
		}
		errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
	}
	return errors.Join(errs...)
}
