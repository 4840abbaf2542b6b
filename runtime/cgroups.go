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
	dirs = append(dirs, filepath.Join(cgroupRoot, namespace)) // v2
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

// CgroupParents lists the cgroup directories named after namespace that exist.
func CgroupParents(namespace string) []string {
	dirs, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", namespace))
	if _, err := os.Stat(filepath.Join(cgroupRoot, namespace)); err == nil {
		dirs = append(dirs, filepath.Join(cgroupRoot, namespace))
	}
	return dirs
}
