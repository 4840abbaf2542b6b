package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
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
