// Command codebox is the command-line client of codeboxd.
//
//	codebox exec -u USER 'print(1)'          run code (or '-' for standard input)
//	codebox exec --stream -u USER CODE       print output as it arrives (Ctrl-C interrupts)
//	codebox release -u USER                  end a session
//	codebox status                           pool counts
//	codebox sessions ls|create|get|extend|rm sessions as resources (limits, lifetime, metadata)
//	codebox snapshot create|ls|get|rm        snapshots of a session's disk
//	codebox fork SESSION NEW...              new sessions from a session's disk
//	codebox volume create|ls|get|rm          named volumes
//	codebox token                            print the API token from the state dir
//	codebox files put -u USER LOCAL REMOTE   upload a file to /sandbox
//	codebox files get -u USER REMOTE [LOCAL] download a file ('-' or none: stdout)
//	codebox files ls -u USER [DIR]           list a directory of /sandbox
//	codebox cleanup [FLAGS]                  run `codeboxd cleanup` (root, on the host)
//
// The daemon's address comes from --url or CODEBOX_URL, the token from AUTH_TOKEN or the
// state dir's token file.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"time"

	"github.com/codebox/codebox/api"
)

const usage = `usage: codebox [--url URL] [--state-dir DIR] [--ca-cert FILE] COMMAND [ARGS]

commands:
  exec -u USER [--timeout SECONDS] [--json] [--stream] CODE|-
                                                      run code in USER's session; --stream
                                                      prints output as it arrives (with
                                                      --json: one event per line)
  release -u USER                                     destroy USER's session
  status                                              show the worker pool (admin keys)
  sessions ls [-m KEY=VALUE]... [--state S] [--json]  list sessions (metadata AND-ed)
  sessions create [--id ID] [--environment E] [--cpu N] [--memory-mb N] [--disk-mb N] [--pids N]
                  [--timeout D] [--idle-timeout D] [-m KEY=VALUE]... [-e NAME=VALUE]... [--allow RULE]...
                  [--packages] [--from-snapshot SNAPSHOT] [--volume NAME:/sandbox/PATH[:ro]]...
                                                      make a session with a shape of its own
  sessions get SESSION                                a session, with its usage or why it ended
  sessions extend [--timeout D] SESSION               restart its lifetime from now (default 1h)
  sessions rm SESSION                                 end a session
  sessions network [--allow RULE]... [--packages] SESSION
                                                      replace what it may reach (no --allow: nothing)
  sessions events [--since SEQ] [--json] SESSION      its network decisions
  environments [--json]                               the environments sessions can run in
  snapshot create [--id ID] SESSION                   its disk now (files, not variables), as it runs on
  snapshot ls | get SNAPSHOT | rm SNAPSHOT            the snapshots
  fork SESSION NEW...                                 1 to 10 new sessions from its disk as it is now
  volume create [--size-mb N] NAME | ls | get NAME | rm NAME
                                                      named volumes (sessions create --volume NAME:/sandbox/PATH[:ro])
  token                                               print the API token
  files put -u USER LOCAL /sandbox/PATH               upload a file
  files get -u USER /sandbox/PATH [LOCAL|-]           download a file
  files ls -u USER [/sandbox/DIR]                     list a directory
  cleanup [codeboxd flags]                            remove every worker resource (runs codeboxd cleanup)
`

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "codebox:", err)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status == 400 {
			os.Exit(1)
		}
		os.Exit(2)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("codebox", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	url := fs.String("url", envOr("CODEBOX_URL", "http://127.0.0.1:3874"), "daemon URL")
	stateDir := fs.String("state-dir", envOr("CODEBOX_STATE_DIR", "/var/lib/codeboxd"), "daemon state dir (for the token)")
	caCert := fs.String("ca-cert", os.Getenv("CODEBOX_CA_CERT"), "PEM file of the CA that issued the daemon's TLS certificate (https:// URLs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command")
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	if cmd == "cleanup" {
		c := exec.Command("codeboxd", append([]string{"cleanup"}, rest...)...)
		c.Stdout, c.Stderr = stdout, os.Stderr
		return c.Run()
	}
	if cmd == "token" {
		tok, err := token(*stateDir)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, tok)
		return nil
	}
	tok, err := token(*stateDir)
	if err != nil {
		return err
	}
	c := api.NewClient(*url, tok)
	if *caCert != "" {
		pemBytes, err := os.ReadFile(*caCert)
		if err != nil {
			return fmt.Errorf("--ca-cert: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("--ca-cert %s holds no PEM certificate", *caCert)
		}
		c.WithTLS(&tls.Config{RootCAs: roots})
	}
	ctx := context.Background()
	switch cmd {
	case "exec":
		return execCmd(ctx, c, rest, stdout)
	case "release":
		sub := flag.NewFlagSet("release", flag.ContinueOnError)
		user := sub.String("u", "", "user_uuid")
		if err := sub.Parse(rest); err != nil {
			return err
		}
		return c.Release(ctx, *user)
	case "files":
		return filesCmd(ctx, c, rest, stdout)
	case "sessions":
		return sessionsCmd(ctx, c, rest, stdout)
	case "environments":
		return environmentsCmd(ctx, c, rest, stdout)
	case "snapshot":
		return snapshotCmd(ctx, c, rest, stdout)
	case "fork":
		return forkCmd(ctx, c, rest, stdout)
	case "volume":
		return volumeCmd(ctx, c, rest, stdout)
	case "status":
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		return printJSON(stdout, st)
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func execCmd(ctx context.Context, c *api.Client, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	user := fs.String("u", "", "user_uuid")
	timeout := fs.Float64("timeout", 0, "execution limit in seconds (0: the daemon's default)")
	asJSON := fs.Bool("json", false, "print the whole JSON response (with --stream: each event)")
	stream := fs.Bool("stream", false, "print output as it arrives; Ctrl-C interrupts the code")
	language := fs.String("language", "", "python (the default), javascript, typescript or bash")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("exec needs exactly one CODE argument ('-' reads standard input)")
	}
	code := fs.Arg(0)
	if code == "-" {
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return err
		}
		code = string(b)
	}
	req := api.ExecuteRequest{Code: code, Language: *language}
	if *timeout > 0 {
		req.Timeout = timeout
	}
	if *stream {
		return streamExec(ctx, c, *user, req, *asJSON, stdout)
	}
	resp, err := c.Run(ctx, *user, req)
	if err != nil {
		return err
	}
	if *asJSON {
		if err := printJSON(stdout, resp); err != nil {
			return err
		}
	} else {
		fmt.Fprint(stdout, resp.Stdout)
		fmt.Fprint(os.Stderr, resp.Stderr)
		for _, r := range resp.Results {
			if raw, ok := r["text/plain"]; ok {
				var s string
				if json.Unmarshal(raw, &s) == nil {
					fmt.Fprintln(stdout, s)
				}
			}
		}
	}
	if resp.Error != nil {
		if !*asJSON {
			fmt.Fprintln(os.Stderr, strings.Join(resp.Error.Traceback, "\n"))
		}
		return &api.Error{Status: 400, Detail: resp.Detail}
	}
	return nil
}

// streamExec prints a call's events as they arrive. Ctrl-C closes the stream, which
// interrupts the code; the session keeps its state.
func streamExec(ctx context.Context, c *api.Client, user string, req api.ExecuteRequest, asJSON bool, stdout io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	raised := false
	for e, err := range c.Stream(ctx, user, req) {
		if err != nil {
			if ctx.Err() != nil {
				return errors.New("interrupted")
			}
			return err
		}
		if asJSON {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		switch e.Type {
		case api.EventStdout:
			if !asJSON {
				fmt.Fprint(stdout, e.Text)
			}
		case api.EventStderr:
			if !asJSON {
				fmt.Fprint(os.Stderr, e.Text)
			}
		case api.EventResult, api.EventDisplay:
			if raw, ok := e.Data["text/plain"]; ok && !asJSON {
				var s string
				if json.Unmarshal(raw, &s) == nil {
					fmt.Fprintln(stdout, s)
				}
			}
		case api.EventError:
			raised = raised || e.Ename != api.ProtocolError
			if !asJSON {
				fmt.Fprintln(os.Stderr, strings.Join(e.Traceback, "\n"))
			}
		case api.EventDone:
			switch e.Status {
			case api.DoneOK:
				return nil
			case api.DoneError:
				if raised { // the code's own exception: exit status 1, as without --stream
					return &api.Error{Status: 400, Detail: e.Detail}
				}
			}
			return fmt.Errorf("%s: %s", e.Status, e.Detail)
		}
	}
	return errors.New("stream ended without an answer")
}

func filesCmd(ctx context.Context, c *api.Client, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("files needs put, get or ls")
	}
	fs := flag.NewFlagSet("files", flag.ContinueOnError)
	user := fs.String("u", "", "user_uuid")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	a := fs.Args()
	switch {
	case args[0] == "put" && len(a) == 2:
		f, err := os.Open(a[0])
		if err != nil {
			return err
		}
		defer f.Close()
		res, err := c.PutFile(ctx, *user, a[1], f)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\t%d bytes\n", res.FullPath, res.Size)
		return nil
	case args[0] == "get" && (len(a) == 1 || len(a) == 2):
		var w io.Writer = stdout
		if len(a) == 2 && a[1] != "-" {
			f, err := os.Create(a[1])
			if err != nil {
				return err
			}
			defer f.Close()
			w = f
		}
		_, err := c.GetFile(ctx, *user, a[0], w)
		return err
	case args[0] == "ls" && len(a) <= 1:
		dir := "/sandbox/"
		if len(a) == 1 {
			dir = a[0]
		}
		// Every page, one after the other: a directory may hold more than a page.
		for offset := 0; ; {
			list, err := c.ListFiles(ctx, *user, dir, offset, 0)
			if err != nil {
				return err
			}
			for _, e := range list.Entries {
				fmt.Fprintf(stdout, "%-9s %12d  %s  %s\n", e.Type, e.Size, e.Mtime.Format(time.RFC3339), e.Name)
			}
			if !list.Truncated {
				return nil
			}
			offset = list.NextOffset
		}
	}
	return errors.New("usage: files put -u USER LOCAL REMOTE | files get -u USER REMOTE [LOCAL] | files ls -u USER [DIR]")
}

func token(stateDir string) (string, error) {
	if t := os.Getenv(api.TokenEnv); t != "" {
		return t, nil
	}
	b, err := os.ReadFile(stateDir + "/" + api.TokenFile)
	if err != nil {
		return "", fmt.Errorf("no AUTH_TOKEN and cannot read the token file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
