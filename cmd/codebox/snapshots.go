package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/codebox/codebox/api"
)

// snapshotCmd is `codebox snapshot create|ls|get|rm`.
func snapshotCmd(ctx context.Context, c *api.Client, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("snapshot needs create, ls, get or rm")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "create":
		fs := flag.NewFlagSet("snapshot create", flag.ContinueOnError)
		id := fs.String("id", "", "the snapshot's id (default: one is made)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New("snapshot create needs one SESSION")
		}
		s, err := c.CreateSnapshot(ctx, fs.Arg(0), api.CreateSnapshotRequest{SnapshotID: *id})
		if err != nil {
			return err
		}
		return printJSON(stdout, s)
	case "ls":
		l, err := c.Snapshots(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SNAPSHOT\tSESSION\tCREATED\tENVIRONMENT\tDISK MB\tSTORED MB\tFROZEN MS")
		for _, s := range l.Snapshots {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%.1f\t%.1f\n", s.SnapshotID, s.SessionID, s.CreatedAt.Format("2006-01-02 15:04:05"),
				s.Environment, s.Limits.DiskMB, s.StoredMB, s.FreezeMS)
		}
		return tw.Flush()
	case "get", "rm":
		if len(args) != 1 {
			return fmt.Errorf("snapshot %s needs one SNAPSHOT", sub)
		}
		if sub == "rm" {
			return c.DeleteSnapshot(ctx, args[0])
		}
		s, err := c.Snapshot(ctx, args[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, s)
	}
	return fmt.Errorf("snapshot %s: no such command (create, ls, get, rm)", sub)
}

// forkCmd is `codebox fork SESSION NEW...`.
func forkCmd(ctx context.Context, c *api.Client, args []string, stdout io.Writer) error {
	if len(args) < 2 {
		return errors.New("fork needs a SESSION and 1 to 10 NEW session ids")
	}
	f, err := c.Fork(ctx, args[0], args[1:]...)
	if err != nil {
		return err
	}
	return printJSON(stdout, f)
}

// volumeCmd is `codebox volume create|ls|get|rm`.
func volumeCmd(ctx context.Context, c *api.Client, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("volume needs create, ls, get or rm")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "create":
		fs := flag.NewFlagSet("volume create", flag.ContinueOnError)
		size := fs.Int("size-mb", 1024, "its size, MB")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New("volume create needs one NAME")
		}
		v, err := c.CreateVolume(ctx, api.CreateVolumeRequest{Name: fs.Arg(0), SizeMB: *size})
		if err != nil {
			return err
		}
		return printJSON(stdout, v)
	case "ls":
		l, err := c.Volumes(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VOLUME\tSIZE MB\tSTORED MB\tCREATED\tMOUNTED BY")
		for _, v := range l.Volumes {
			var by []string
			for _, u := range v.MountedBy {
				mode := "rw"
				if u.ReadOnly {
					mode = "ro"
				}
				by = append(by, u.SessionID+":"+u.Path+":"+mode)
			}
			fmt.Fprintf(tw, "%s\t%d\t%.1f\t%s\t%s\n", v.Name, v.SizeMB, v.StoredMB, v.CreatedAt.Format("2006-01-02 15:04:05"), strings.Join(by, " "))
		}
		return tw.Flush()
	case "get", "rm":
		if len(args) != 1 {
			return fmt.Errorf("volume %s needs one NAME", sub)
		}
		if sub == "rm" {
			return c.DeleteVolume(ctx, args[0])
		}
		v, err := c.Volume(ctx, args[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, v)
	}
	return fmt.Errorf("volume %s: no such command (create, ls, get, rm)", sub)
}

// volumeMounts is the repeatable --volume NAME:/sandbox/PATH[:ro] of sessions create.
type volumeMounts []api.VolumeMount

func (v *volumeMounts) String() string { return fmt.Sprint(*v) }

func (v *volumeMounts) Set(s string) error {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw") {
		return fmt.Errorf("--volume %q: want NAME:/sandbox/PATH or NAME:/sandbox/PATH:ro", s)
	}
	*v = append(*v, api.VolumeMount{Name: parts[0], Path: parts[1], ReadOnly: len(parts) == 3 && parts[2] == "ro"})
	return nil
}
