package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/codebox/codebox/api"
)

// TestLanguages runs JavaScript, TypeScript and bash beside Python in one real worker:
// state kept between calls, errors and exit statuses, interrupts that keep state and
// kills that lose one language's state only, files shared through /sandbox.
func TestLanguages(t *testing.T) {
	d := startDaemon(t, "--exec-timeout", "20s")
	user := "lang-" + randomHex(4)
	t.Cleanup(func() { d.client.Release(context.Background(), user) })
	run := func(t *testing.T, language, code string, timeout float64) (*api.ExecuteResponse, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		req := api.ExecuteRequest{Code: code, Language: language}
		if timeout > 0 {
			req.Timeout = &timeout
		}
		return d.client.Run(ctx, user, req)
	}
	ok := func(t *testing.T, language, code string) *api.ExecuteResponse {
		t.Helper()
		resp, err := run(t, language, code, 0)
		if err != nil {
			t.Fatalf("%s %q: %v", language, code, err)
		}
		if resp.Error != nil {
			t.Fatalf("%s %q raised %s: %s\n%s\nstderr: %s", language, code, resp.Error.Ename, resp.Error.Evalue,
				strings.Join(resp.Error.Traceback, "\n"), resp.Stderr)
		}
		return resp
	}
	value := func(resp *api.ExecuteResponse) string {
		for _, r := range resp.Results {
			if raw, ok := r["text/plain"]; ok {
				return strings.Trim(string(raw), `"`)
			}
		}
		return ""
	}
	raised := func(t *testing.T, language, code, ename string) *api.ExecuteResponse {
		t.Helper()
		resp, err := run(t, language, code, 0)
		if err != nil {
			t.Fatalf("%s %q: %v", language, code, err)
		}
		if resp.Error == nil || resp.Error.Ename != ename {
			t.Fatalf("%s %q: want %s, got %+v (stdout %q stderr %q)", language, code, ename, resp.Error, resp.Stdout, resp.Stderr)
		}
		return resp
	}
	ok(t, "python", "py_state = 'kept'")

	t.Run("javascript keeps state, awaits, prints and returns values", func(t *testing.T) {
		ok(t, "javascript", "let x = 40; const y = 2; function add(a, b) { return a + b }; class K { v() { return 'k' } }")
		if v := value(ok(t, "javascript", "add(x, y)")); v != "42" {
			t.Fatalf("add(x, y) = %q", v)
		}
		if v := value(ok(t, "javascript", "let x = 1; x")); v != "1" { // declared again, as in a notebook
			t.Fatalf("redeclared x = %q", v)
		}
		resp := ok(t, "javascript", "console.log('out', new K().v()); console.error('err'); await new Promise(r => setTimeout(r, 20)); 'waited'")
		if resp.Stdout != "out k\n" || resp.Stderr != "err\n" || value(resp) != "'waited'" {
			t.Fatalf("stdout %q stderr %q value %q", resp.Stdout, resp.Stderr, value(resp))
		}
		if v := value(ok(t, "javascript", "require('fs').readdirSync('/sandbox').constructor.name")); v != "'Array'" {
			t.Fatalf("require: %q", v)
		}
		// A cell's globals do not reach the interpreter's own machinery.
		ok(t, "javascript", "let JSON = {}; let Set = 1; let String = () => 'forged'; 1")
		if v := value(ok(t, "javascript", "1 + 1")); v != "2" {
			t.Fatalf("after shadowing JSON, Set and String: %q", v)
		}
	})
	t.Run("javascript errors", func(t *testing.T) {
		resp := raised(t, "javascript", "function f() { throw new TypeError('bad thing') }\nf()", "TypeError")
		if resp.Error.Evalue != "bad thing" || len(resp.Error.Traceback) < 2 || !strings.Contains(resp.Detail, "TypeError: bad thing") {
			t.Fatalf("error %+v detail %q", resp.Error, resp.Detail)
		}
		raised(t, "javascript", "let = ;", "SyntaxError")
		raised(t, "javascript", "await Promise.reject(new RangeError('no'))", "RangeError")
		// A rejection nobody awaits is reported, and the interpreter lives on.
		ok(t, "javascript", "Promise.reject(new Error('ignored')).catch(() => {}); Promise.reject(new Error('loose')); null")
		resp = ok(t, "javascript", "await new Promise(r => setTimeout(r, 50)); x")
		if value(resp) != "1" {
			t.Fatalf("after a loose rejection: %q", value(resp))
		}
	})
	t.Run("a javascript cell cannot answer a later call", func(t *testing.T) {
		// The reply pipe is the interpreter's own fd (its second argument): a cell writes
		// replies there, now and from a timer during the next call. Before, the next call's
		// answer was the forgery.
		ok(t, "javascript", `const fs = require("fs"), fd = Number(process.argv[3]);
const forged = '{"status": "ok", "value": "forged"}\n';
fs.writeSync(fd, forged + forged);
setTimeout(() => fs.writeSync(fd, forged), 300);
"first"`)
		resp := ok(t, "javascript", `await new Promise(r => setTimeout(r, 600)); 6 * 7`)
		if v := value(resp); v != "42" {
			t.Fatalf("the next call answered %q", v)
		}
		if v := value(ok(t, "javascript", `"th" + "ird"`)); v != "'third'" {
			t.Fatalf("the call after answered %q", v)
		}
	})
	t.Run("typescript shares the context; type errors do not block, syntax errors do", func(t *testing.T) {
		if v := value(ok(t, "typescript", "interface P { n: number }\nconst p: P = { n: x + 1 }; p.n")); v != "2" {
			t.Fatalf("typescript value %q", v)
		}
		if v := value(ok(t, "typescript", "let s: number = 'not a number' as any; typeof s")); v != "'string'" {
			t.Fatalf("type error blocked: %q", v)
		}
		if v := value(ok(t, "javascript", "p.n * 21")); v != "42" {
			t.Fatalf("javascript sees typescript's p: %q", v)
		}
		if v := value(ok(t, "typescript", `import path from "path";
path.join("a", "b")`)); v != "'a/b'" {
			t.Fatalf("a default import: %q", v)
		}
		resp := raised(t, "typescript", "const q: number = ;", "SyntaxError")
		if !strings.Contains(resp.Error.Evalue, "Expression expected") {
			t.Fatalf("diagnostic %q", resp.Error.Evalue)
		}
	})
	t.Run("bash keeps its directory, variables and environment", func(t *testing.T) {
		ok(t, "bash", "mkdir -p /sandbox/sub && cd /sandbox/sub && name=codebox && export EXPORTED=yes && declare -A m=([k]=v)")
		if resp := ok(t, "bash", `echo "${m[k]} $#"`); resp.Stdout != "v 0\n" {
			t.Fatalf("declare -A in an earlier call: %q", resp.Stdout)
		}
		resp := ok(t, "bash", `echo "$PWD $name $(printenv EXPORTED)"; echo to-stderr >&2`)
		if resp.Stdout != "/sandbox/sub codebox yes\n" || resp.Stderr != "to-stderr\n" {
			t.Fatalf("stdout %q stderr %q", resp.Stdout, resp.Stderr)
		}
		// stdin is at its end: cat returns at once.
		if resp := ok(t, "bash", "cat; read -r line || echo eof"); resp.Stdout != "eof\n" {
			t.Fatalf("stdin: %q", resp.Stdout)
		}
		resp = raised(t, "bash", "echo before; false", "ExitStatus")
		if resp.Error.ExitCode == nil || *resp.Error.ExitCode != 1 || resp.Stdout != "before\n" {
			t.Fatalf("exit status: %+v stdout %q", resp.Error, resp.Stdout)
		}
		resp = raised(t, "bash", "(exit 7)", "ExitStatus")
		if *resp.Error.ExitCode != 7 {
			t.Fatalf("exit code %d", *resp.Error.ExitCode)
		}
	})
	t.Run("a file written by bash is read by Python and JavaScript", func(t *testing.T) {
		ok(t, "bash", "printf 'shared %s\\n' 42 > /sandbox/shared.txt")
		if resp := ok(t, "python", "print(open('/sandbox/shared.txt').read(), end='')"); resp.Stdout != "shared 42\n" {
			t.Fatalf("python read %q", resp.Stdout)
		}
		if v := value(ok(t, "javascript", "require('fs').readFileSync('/sandbox/shared.txt', 'utf8').trim()")); v != "'shared 42'" {
			t.Fatalf("javascript read %q", v)
		}
	})
	t.Run("timeouts interrupt each language and keep its state", func(t *testing.T) {
		for _, c := range []struct{ language, code, check, want string }{
			{"javascript", "while (true) {}", "x", "1"},
			{"javascript", "await new Promise(() => {})", "x", "1"},
			{"typescript", "const spin = (): void => { for (;;) {} }; spin()", "x", "1"},
			{"bash", "sleep 60", "echo $name", "codebox\n"},
			{"bash", "f() { while :; do :; done; }; f; echo not reached", "echo $name", "codebox\n"},
		} {
			start := time.Now()
			_, err := run(t, c.language, c.code, 1)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Status != 504 || !flagIs(afterOf(ae).StatePreserved, true) {
				t.Fatalf("%s %q: %v", c.language, c.code, err)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Fatalf("%s %q: the timeout took %v", c.language, c.code, took)
			}
			resp := ok(t, c.language, c.check)
			if got := resp.Stdout + value(resp); got != c.want {
				t.Fatalf("%s after the timeout: %q, want %q", c.language, got, c.want)
			}
		}
	})
	t.Run("a stubborn interpreter is restarted, the others keep their state", func(t *testing.T) {
		_, err := run(t, "bash", "trap '' INT; while :; do :; done", 1)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 504 || !flagIs(afterOf(ae).StatePreserved, false) || !strings.Contains(ae.Detail, "bash") {
			t.Fatalf("bash busy loop: %v", err)
		}
		if resp := ok(t, "bash", `echo "name=${name:-unset}"`); resp.Stdout != "name=unset\n" {
			t.Fatalf("bash after its restart: %q", resp.Stdout)
		}
		// JavaScript that loops after an await is out of SIGINT's reach: killed, its state lost.
		ok(t, "javascript", "globalThis.marker = 1")
		_, err = run(t, "javascript", "await 0; while (true) {}", 1)
		if !errors.As(err, &ae) || ae.Status != 504 || !flagIs(afterOf(ae).StatePreserved, false) {
			t.Fatalf("javascript loop after await: %v", err)
		}
		if v := value(ok(t, "javascript", "typeof marker")); v != "'undefined'" {
			t.Fatalf("javascript after its restart: %q", v)
		}
		// A shell that exits with a job in the background is seen to end at once.
		start := time.Now()
		resp, err := run(t, "bash", "sleep 100 & exit 3", 0)
		if err != nil || resp.Error == nil || resp.Error.Ename != "InterpreterLost" || time.Since(start) > 10*time.Second {
			t.Fatalf("exit with a background job: %+v %v after %v", resp, err, time.Since(start))
		}
		// An interpreter that exits loses its own state and nothing else.
		resp, err = run(t, "javascript", "process.exit(3)", 0)
		if err != nil || resp.Error == nil || resp.Error.Ename != "InterpreterLost" || resp.StatePreserved == nil || *resp.StatePreserved {
			t.Fatalf("process.exit: %+v %v", resp, err)
		}
		if v := value(ok(t, "javascript", "typeof x")); v != "'undefined'" {
			t.Fatalf("javascript after its restart: %q", v)
		}
		if resp := ok(t, "python", "print(py_state)"); resp.Stdout != "kept\n" {
			t.Fatalf("python state: %q", resp.Stdout)
		}
	})
	t.Run("the counter scenario in each language", func(t *testing.T) {
		for _, c := range []struct{ language, init, step string }{
			{"python", "counter = 0", "counter += 1; print(counter)"},
			{"javascript", "let counter = 0", "counter += 1; console.log(counter)"},
			{"typescript", "let tcounter: number = 0", "tcounter += 1; console.log(tcounter)"},
			{"bash", "counter=0", `counter=$((counter + 1)); echo "$counter"`},
		} {
			ok(t, c.language, c.init)
			for i := 1; i <= 20; i++ {
				if resp := ok(t, c.language, c.step); resp.Stdout != fmt.Sprintf("%d\n", i) {
					t.Fatalf("%s call %d printed %q", c.language, i, resp.Stdout)
				}
			}
		}
	})
	t.Run("an unknown language is refused, naming the known ones", func(t *testing.T) {
		_, err := run(t, "cobol", "DISPLAY 'HI'.", 0)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Detail, "python, javascript, typescript, bash") {
			t.Fatalf("cobol: %v", err)
		}
	})
	t.Run("streamed as server-sent events", func(t *testing.T) {
		var out strings.Builder
		var done api.Event
		for e, err := range d.client.Stream(context.Background(), user, api.ExecuteRequest{Code: "for i in 1 2 3; do echo line $i; sleep 0.05; done", Language: "bash"}) {
			if err != nil {
				t.Fatal(err)
			}
			if e.Type == api.EventStdout {
				out.WriteString(e.Text)
			}
			if e.Type == api.EventDone {
				done = e
			}
		}
		if out.String() != "line 1\nline 2\nline 3\n" || done.Status != api.DoneOK {
			t.Fatalf("streamed %q, done %+v", out.String(), done)
		}
	})
}
