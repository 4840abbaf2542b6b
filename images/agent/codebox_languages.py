"""The session's interpreters besides IPython: JavaScript and TypeScript (one Node.js
process, codebox_js.js, one context for both) and bash (one shell). Each is a child process
of the agent, started on its language's first call, in its own process group so that only
the agent decides what a signal reaches.

A call writes the request on the child's request pipe and reads, on the agent's main thread,
the child's stdout and stderr (sent on as the call's output) until its one-line reply
arrives. An interrupt is passed on as SIGINT; a child that has not answered a moment later
is killed, and the call's reply says that language's state is lost. The next call starts
it afresh; the Python kernel and the other language are not touched.
"""

import codecs
import fcntl
import json
import os
import secrets
import selectors
import signal
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# How long an interrupted interpreter may take to answer before it is killed.
INTERRUPT_GRACE_SECONDS = 1.5
# A start that takes longer than this is a failed start.
START_TIMEOUT_SECONDS = 30
# A reply longer than this is not one the interpreter wrote for the agent.
MAX_REPLY_BYTES = 16 << 20
PIPE_BYTES = 1 << 20  # room for output written between calls, which nobody reads
# The nonce of node's first line, which it writes before any cell can run.
READY_NONCE = "ready"

# Every request carries a nonce the agent makes for it, and only a reply line that begins
# {"nonce":"<it>" answers it: user code can write to the reply pipe (it is the
# interpreter's own fd), but it cannot know a later call's nonce, so it cannot answer a
# later call for it. What else is on the pipe is dropped, before each request too.
#
# bash reads each request (its nonce, a NUL, the code, a NUL) from fd $1 and answers its
# exit status on fd $2. The cell is eval'd in a function with stdin from /dev/null (a command that reads stdin
# gets EOF) and no arguments; `declare` in it declares globals, as at a prompt. A SIGINT
# sets a flag, and with extdebug a DEBUG trap that returns 2 returns from every function
# level above the loop, so an interrupt stops the whole cell, loops and functions included.
BASH_DRIVER = r"""
shopt -s extdebug expand_aliases
set -T
alias declare='declare -g' typeset='typeset -g'
__codebox_run() { eval "$__codebox_code"; }
trap '__codebox_int=true' INT
trap '[[ $__codebox_int == true && ${#FUNCNAME[@]} -gt 0 ]] && return 2; true' DEBUG
while IFS= read -r -d '' -u "$1" __codebox_nonce && IFS= read -r -d '' -u "$1" __codebox_code; do
  __codebox_nonce=${__codebox_nonce: -32}  # what a cell wrote into the pipe before it is not
  __codebox_int=false
  __codebox_run </dev/null
  __codebox_status=$?
  [[ $__codebox_int == true ]] && __codebox_status=130
  printf '{"nonce":"%s","status": %d, "interrupted": %s}\n' "$__codebox_nonce" "$__codebox_status" "$__codebox_int" >&"$2"
done
"""


class Lost(Exception):
    """The interpreter ended or was killed during the call; its state is gone."""


class Interpreter:
    """One language's child process. Used from the agent's main thread only."""

    def __init__(self, language, write_stream):
        self.language = language
        self.write_stream = write_stream
        self.proc = None
        self.start_seconds = None  # how long the last start took
        self.kill_at = None  # when an interrupted call's child is killed
        # SIGINT wakes a waiting select through this pipe (it lives as long as the agent).
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def argv(self, req_fd, rep_fd):
        if self.language == "bash":
            return ["bash", "--noprofile", "--norc", "-c", BASH_DRIVER, "bash", str(req_fd), str(rep_fd)]
        return ["node", os.path.join(HERE, "codebox_js.js"), str(req_fd), str(rep_fd)]

    def start(self):
        req_r, self.req_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass  # the default size still works; output between calls may block the child
        env = dict(os.environ)
        # Debian's node modules (acorn, typescript) after any the image adds.
        env["NODE_PATH"] = ":".join(p for p in (env.get("NODE_PATH"), "/usr/share/nodejs") if p)
        began = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.argv(req_r, rep_w), stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                pass_fds=(req_r, rep_w), cwd="/sandbox" if os.path.isdir("/sandbox") else None,
                env=env, start_new_session=True)
        except OSError:
            for fd in (self.req_w, self.rep_r, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (req_r, rep_w, out_w, err_w):
                os.close(fd)
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.outs = {out_r: ("stdout", codecs.getincrementaldecoder("utf-8")("replace")),
                     err_r: ("stderr", codecs.getincrementaldecoder("utf-8")("replace"))}
        for fd in (self.rep_r, out_r, err_r):
            os.set_blocking(fd, False)
        os.set_blocking(self.req_w, False)
        self.reply_buf = bytearray()
        self.dropped_replies = 0  # reply lines that answered no request
        if self.language != "bash":  # node says when its context is ready (no cell ran yet)
            ready = self.exchange(b"", READY_NONCE, time.monotonic() + START_TIMEOUT_SECONDS)
            if ready.get("status") != "ready":
                raise Lost(f"the {self.language} interpreter did not start: {ready}")
        self.start_seconds = time.monotonic() - began

    def stop(self):
        """Kills the child and its process group, and forgets them."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for fd in [self.req_w, self.rep_r, self.pidfd, *self.outs]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.proc = None

    def drain(self, deliver=True):
        """Reads what the child has written to stdout and stderr so far, at most a few MiB
        a call, so that a writer faster than this reader cannot keep it here."""
        for fd, (name, decoder) in self.outs.items():
            for _ in range(64):
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    data = b""
                if not data:
                    break
                text = decoder.decode(data)
                if text and deliver:
                    self.write_stream(name, text)

    def on_sigint(self, signum, frame):
        """The agent's SIGINT while a call runs: passed on to the child, which then has
        INTERRUPT_GRACE_SECONDS to answer. It never raises (it may land anywhere in the
        agent's code); a byte on the wake-up pipe makes a waiting select notice."""
        if self.proc is not None:
            self.signal(signal.SIGINT)
        if self.kill_at is None:
            self.kill_at = time.monotonic() + INTERRUPT_GRACE_SECONDS
        try:
            os.write(self.wake_w, b"!")
        except OSError:
            pass  # a full pipe already wakes the select

    def drop_stale_replies(self):
        """Drops what is on the reply pipe before a request: no request was waiting for it."""
        self.reply_buf.clear()
        for _ in range(256):
            try:
                if not os.read(self.rep_r, 65536):
                    return
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def exchange(self, payload, nonce, deadline=None):
        """Writes payload to the child and waits for the reply line of nonce, sending the
        child's output on meanwhile; raises Lost when the child ends, misbehaves, misses
        deadline, or outlives an interrupt's grace."""
        mark = b'{"nonce":"' + nonce.encode() + b'"'
        view = memoryview(payload)
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.rep_r, selectors.EVENT_READ)
            sel.register(self.wake_r, selectors.EVENT_READ)
            sel.register(self.pidfd, selectors.EVENT_READ)
            for fd in self.outs:
                sel.register(fd, selectors.EVENT_READ)
            if view:
                sel.register(self.req_w, selectors.EVENT_WRITE)
            while True:
                nl = self.reply_buf.find(b"\n")
                if nl >= 0:
                    line = bytes(self.reply_buf[:nl])
                    del self.reply_buf[:nl + 1]
                    at = line.find(mark)
                    if at < 0:  # written by user code, not the interpreter for this request
                        self.dropped_replies += 1
                        continue
                    self.drain()
                    try:
                        reply = json.loads(line[at:])
                    except (ValueError, RecursionError):
                        reply = None
                    if not isinstance(reply, dict):
                        raise Lost(f"the {self.language} interpreter answered something unreadable")
                    return reply
                now = time.monotonic()
                ends = [t for t in (deadline, self.kill_at) if t is not None]
                if ends and min(ends) <= now:
                    if self.kill_at is not None and self.kill_at <= now:
                        raise Lost(f"the {self.language} interpreter did not stop when interrupted")
                    raise Lost(f"the {self.language} interpreter did not answer")
                events = sel.select(min(ends) - now if ends else None)
                for key, _ in events:
                    if key.fd == self.wake_r:
                        try:
                            os.read(self.wake_r, 4096)
                        except OSError:
                            pass
                    elif key.fd == self.pidfd:
                        # It exited; a job it left in the background may still hold the
                        # reply pipe open, so its end is not an EOF there.
                        self.drain()
                        if mark not in self.reply_buf:
                            raise Lost(f"the {self.language} interpreter ended ({self.exit_status()})")
                        sel.unregister(self.pidfd)
                    elif key.fd == self.req_w:
                        try:
                            view = view[os.write(self.req_w, view):]
                        except (BlockingIOError, InterruptedError):
                            continue
                        except BrokenPipeError:
                            raise Lost(f"the {self.language} interpreter ended ({self.exit_status()})") from None
                        if not view:
                            sel.unregister(self.req_w)
                    elif key.fd != self.rep_r:
                        self.drain()
                    else:
                        try:
                            data = os.read(self.rep_r, 65536)
                        except (BlockingIOError, InterruptedError):
                            continue
                        if not data:
                            self.drain()
                            raise Lost(f"the {self.language} interpreter ended ({self.exit_status()})")
                        self.reply_buf += data
                        if len(self.reply_buf) > MAX_REPLY_BYTES:
                            raise Lost(f"the {self.language} interpreter's answer exceeded {MAX_REPLY_BYTES} bytes")
        finally:
            sel.close()

    def signal(self, sig):
        """Signals the child's process group: the interpreter and the commands it waits
        for (bash's, node's execSync)."""
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            pass

    def exit_status(self):
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def run(self, code, typescript=False):
        """Runs code; returns the child's reply. Raises Lost (after killing what is left of
        the child) when the interpreter did not survive the call. Installs its own SIGINT
        handler for the call's length; the caller restores its own."""
        self.kill_at = None
        signal.signal(signal.SIGINT, self.on_sigint)
        try:
            if self.proc is None:
                self.start()
            else:
                self.drain(deliver=False)  # output of timers between calls belongs to no call
                self.drop_stale_replies()
            nonce = secrets.token_hex(16)
            if self.language == "bash":
                payload = nonce.encode() + b"\0" + code.replace("\0", "").encode("utf-8", "replace") + b"\0"
            else:
                payload = json.dumps({"nonce": nonce, "code": code, "typescript": typescript},
                                     separators=(",", ":")).encode() + b"\n"
            reply = self.exchange(payload, nonce)
        except BaseException:
            # Whatever went wrong, a child whose answer may still come must not answer
            # the next call: it goes, and that call starts a new one.
            self.stop()
            raise
        return reply
