"""codebox kernel agent: the one process of a worker container (under tini).

It drives IPython's InteractiveShell directly -- the core that ipykernel wraps, without ZMQ
or a Jupyter server -- and speaks Jupyter's kernel-channel messages as JSON over a single
token-protected websocket.

One thread does the work: the main thread accepts connections, reads requests and runs
user code, so a short execute costs no thread hand-off (the earlier design, a tornado IOLoop
on a second thread, spent about twice the CPU per execute under load, mostly in waking
threads and switching the GIL). SIGINT, sent by the daemon through containerd, raises
KeyboardInterrupt in user code. Frames made during an execute wait in an outbox and leave
in one write when it ends; while code runs longer, a flusher thread sends what has gathered
every STREAM_FLUSH_SECONDS, so output still streams. The websocket protocol is the
websockets library's sans-I/O layer over plain blocking sockets.

Configuration (environment):
  CODEBOX_AGENT_TOKEN       required; clients send "Authorization: token <it>"
  CODEBOX_AGENT_PORT        TCP port, default 8888
  CODEBOX_MAX_OUTPUT_BYTES  output budget of one execute, default 4 MiB
"""

import datetime
import fcntl
import hmac
import http
import io
import itertools
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import struct
import sys
import termios
import threading
import time
import uuid

import importlib
import importlib.util

import codebox_languages

# codeboxd's own copy of websockets (scripts/build-agent.sh), under a name of its own: the
# version the agent was tested with, while user code's `import websockets` stays the image's.
# The agent's unit tests run it on the host's websockets.
_WS = "codebox_websockets" if importlib.util.find_spec("codebox_websockets") else "websockets"
_frames = importlib.import_module(_WS + ".frames")
http11 = importlib.import_module(_WS + ".http11")
_server = importlib.import_module(_WS + ".server")
OP_BINARY, OP_CONT, OP_TEXT = _frames.OP_BINARY, _frames.OP_CONT, _frames.OP_TEXT
# websockets < 11 (Debian 12's) names it ServerConnection.
ServerProtocol = getattr(_server, "ServerProtocol", None) or _server.ServerConnection

PROTOCOL_VERSION = "5.3"
AGENT_VERSION = "0.1.0"
# Flushing stream output on a timer lets a chatty loop send a few frames instead of one
# per print() while output still arrives promptly.
STREAM_FLUSH_SECONDS = 0.05
CHANNELS_PATH = "/api/kernel/channels"
SANDBOX = "/sandbox"
MAX_MESSAGE_BYTES = 64 << 20
SEND_TIMEOUT_SECONDS = 30
TRUNCATION_MARKER = "\n[codebox: output truncated, {} bytes dropped]\n"
# Stream text leaves in frames of at most this many characters: escaped as JSON, a frame
# stays far below the daemon's frame limit whatever the text holds.
STREAM_CHUNK_CHARS = 64 << 10
# execute_request's "language" (our extension): the interpreter a call runs in. JavaScript
# and TypeScript share one Node.js context.
INTERPRETERS = {"python": None, "javascript": "javascript", "typescript": "javascript", "bash": "bash"}
# The agent's own diagnostics: at most this many lines a minute reach the container log.
LOG_LINES_PER_MINUTE = 20


def encode(obj):
    """JSON as the daemon reads it: UTF-8, no ASCII escapes (smaller, and its size is what
    the budget counts); a lone surrogate from user code becomes U+FFFD."""
    return json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8", "replace")



def use_user_site():
    """Puts the user site of $PYTHONUSERBASE (the session's disk: what pip installs there)
    on this interpreter's path, ahead of the system's packages, made if missing, so that an
    install is importable at once and an upgrade wins; processes started from now on find
    it themselves (Python adds an existing user site at start)."""
    if not os.environ.get("PYTHONUSERBASE"):
        return
    import site
    site.USER_BASE = site.USER_SITE = None  # computed again from the environment
    user_site = site.getusersitepackages()
    try:
        os.makedirs(user_site, exist_ok=True)
    except OSError as exc:
        log(f"user site {user_site}: {exc!r}")
        return
    if user_site not in sys.path:
        first = next((i for i, p in enumerate(sys.path) if p.endswith(("dist-packages", "site-packages"))), len(sys.path))
        sys.path.insert(first, user_site)
        site.addsitedir(user_site)  # its .pth files (it is on the path already: not added twice)
    importlib.invalidate_caches()

class Log:
    """The agent's diagnostics, to the container's log (the fd 2 the agent started with),
    rate-limited: user code can provoke them, and the log is on the host. Writes never
    block: the log's pipe is made non-blocking (for tini too, which shares it), so when
    user code fills it (through /proc/1/fd/2, say) a line is dropped, the agent waits for
    nothing."""

    def __init__(self):
        self.fd = None
        self.window = 0
        self.count = 0
        self.suppressed = 0
        self.lock = threading.Lock()

    def open(self):
        """Keeps the original fd 2 before it is redirected to the output capture."""
        for fd in (1, 2):
            os.set_blocking(fd, False)
        self.fd = os.dup(2)
        os.set_inheritable(self.fd, False)

    def write(self, line):
        if self.fd is None:
            print(line, end="", file=sys.__stderr__)
            return
        try:
            os.write(self.fd, line.encode("utf-8", "replace"))
        except OSError:  # full (EAGAIN) or gone: the line is dropped
            pass

    def __call__(self, text):
        with self.lock:
            minute = int(time.monotonic() // 60)
            if minute != self.window:
                if self.suppressed:
                    self.write(f"codebox-agent: {self.suppressed} messages suppressed\n")
                self.window, self.count, self.suppressed = minute, 0, 0
            if self.count >= LOG_LINES_PER_MINUTE:
                self.suppressed += 1
                return
            self.count += 1
            self.write("codebox-agent: " + text[:2000] + "\n")


log = Log()


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class Budget:
    """The output one execute may still send, in bytes of JSON. The only place that counts
    it: stream text, displays and the error (which goes out twice, as the error message and
    in the execute_reply) all take from it, so what a call sends stays within the daemon's
    frame limit whatever user code prints. Its own lock: user code's threads and the fd
    pumps write while the main thread publishes."""

    def __init__(self, limit):
        self.lock = threading.Lock()
        self.limit = limit
        self.used = 0
        self.dropped = 0

    def take(self, n):
        """Reserves n bytes; returns how many of them fit (the rest counts as dropped)."""
        with self.lock:
            granted = min(n, max(0, self.limit - self.used))
            self.used += granted
            self.dropped += n - granted
            return granted

    def fit(self, text):
        """The longest start of text whose JSON fits, which is taken."""
        with self.lock:
            room = max(0, self.limit - self.used)
            cut = text[:room]
            size = len(encode(cut)) - 2  # without the quotes
            while size > room:
                cut = cut[:len(cut) * room // size]
                size = len(encode(cut)) - 2
            self.used += size
            self.dropped += len(text) - len(cut)
            return cut

    def close(self):
        """Ends the call's output: returns the bytes dropped, and makes room for the marker
        that says so."""
        with self.lock:
            if self.dropped:
                self.limit = self.used + len(TRUNCATION_MARKER) + 32
            return self.dropped


class Request:
    """One request being answered: where replies go and what they answer."""

    def __init__(self, conn, msg, max_output):
        self.conn = conn
        self.header = msg["header"]
        self.budget = Budget(max_output)
        # A client that streams the call to a person (codebox_stream, an extension of
        # execute_request) wants the first line now, not at the end of a flush period.
        content = msg.get("content")
        self.stream = isinstance(content, dict) and content.get("codebox_stream") is True
        # codebox_lean (ours too): the client needs neither the busy nor the idle status
        # around an execute; the reply, marked codebox_lean, comes last. Two frames fewer
        # to encode, send, read and decode per call.
        self.lean = isinstance(content, dict) and content.get("codebox_lean") is True


class Framer:
    """Jupyter messages: a header with this agent's session and a counted msg_id, the
    parent's header, the content, encoded as the daemon reads them."""

    def __init__(self):
        self.session = uuid.uuid4().hex
        self.counter = itertools.count(1)  # msg_ids: the session and a count, as ipykernel

    def frame(self, msg_type, content, parent, channel):
        return encode({
            "header": {
                "msg_id": f"{self.session}_{next(self.counter)}",
                "msg_type": msg_type,
                "session": self.session,
                "username": "codebox",
                "date": now_iso(),
                "version": PROTOCOL_VERSION,
            },
            "parent_header": parent,
            "metadata": {},
            "content": content,
            "channel": channel,
        })


class Outbox:
    """Output on its way to the daemon: stream text gathering into frames, frames waiting
    for one write per connection, and the flusher thread that sends them while code runs."""

    def __init__(self, framer):
        self.framer = framer
        self.lock = threading.Lock()  # guards current, pending, queue and flush_armed
        self.current = None  # the Request being executed
        self.executing = False  # user code runs (only then does a SIGINT interrupt)
        self.pending = []  # [name, text] chunks not yet made into frames
        self.queue = []  # (connection, frame) not yet written
        self.flush_armed = False  # the flusher will send what gathers within its period
        self.flush_wanted = threading.Event()
        self.write_lock = threading.Lock()  # one writer at a time, in queue order

    def begin(self, req):
        with self.lock:
            self.current = req

    def end(self):
        with self.lock:
            self.current = None

    def send(self, req, msg_type, content, channel="iopub"):
        """Queues a frame; it is written by deliver() or by the flusher."""
        data = self.framer.frame(msg_type, content, req.header, channel)
        with self.lock:
            self.queue.append((req.conn, data))
            if self.flush_armed or not self.executing:
                return
            self.flush_armed = True
        self.flush_wanted.set()

    def deliver(self):
        """Writes the queue, each connection's frames in one write."""
        with self.write_lock:
            with self.lock:
                queued, self.queue = self.queue, []
            if not queued:
                return
            by_conn = {}
            for conn, data in queued:
                by_conn.setdefault(conn, []).append(data)
            for conn, frames in by_conn.items():
                conn.write_texts(frames)

    def flusher(self):
        """Thread: while code runs, sends what gathered within a period, so output streams
        without a frame per print(). For a streamed call, output after a quiet period
        leaves at once and only what follows it within the period is gathered; otherwise
        the period always passes first, so a short execute's frames still leave in one
        write at its end."""
        last = 0.0
        while True:
            self.flush_wanted.wait()
            with self.lock:
                req = self.current
            wait = STREAM_FLUSH_SECONDS
            if req is not None and req.stream:
                wait = last + STREAM_FLUSH_SECONDS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.flush_wanted.clear()
            with self.lock:
                self.flush_armed = False
            last = time.monotonic()
            try:
                self.flush()
                self.deliver()
            except Exception as exc:  # keep streaming for the next cell; the execute's end delivers
                log(f"timed flush failed: {exc!r}")

    def write_stream(self, name, text):
        """Output of user code (print, the fd pumps, an interpreter's pipes), within the
        current execute's budget."""
        with self.lock:
            req = self.current
            if req is None:
                # Output of a thread user code left running after its execute ended has
                # no request to belong to.
                return
            raw = text.encode("utf-8", "replace")
            granted = req.budget.take(len(raw))
            if granted == 0:
                return
            if granted < len(raw):
                text = raw[:granted].decode("utf-8", "ignore")
            if self.pending and self.pending[-1][0] == name:
                self.pending[-1][1] += text
            else:
                self.pending.append([name, text])
            if self.flush_armed:
                return
            self.flush_armed = True
        self.flush_wanted.set()

    def flush(self):
        """Turns pending stream text into frames, ahead of anything sent after it."""
        with self.lock:
            req, chunks, self.pending = self.current, self.pending, []
            if req is None:
                return
            for name, text in chunks:
                for i in range(0, len(text), STREAM_CHUNK_CHARS):
                    data = self.framer.frame("stream", {"name": name, "text": text[i:i + STREAM_CHUNK_CHARS]},
                                             req.header, "iopub")
                    self.queue.append((req.conn, data))

    def publish(self, msg_type, content):
        """Sends display_data / execute_result / error after the output before it."""
        self.flush()
        req = self.current
        if req is None:
            return
        size = len(encode(content))
        if req.budget.take(size) != size:
            content = dict(content)
            content["data"] = {"text/plain": "[codebox: output dropped, over the output limit]"}
            content["metadata"] = {}
        self.send(req, msg_type, content)


class Agent:
    """Dispatch and execution: answers the daemon's requests, runs code in IPython or a
    language interpreter, and turns what it raised into the error the daemon reads."""

    def __init__(self, max_output):
        self.max_output = max_output
        self.outbox = Outbox(Framer())
        self.shell = None
        self.error = None  # the error content of the current execute, if it raised
        self.fd_readers = []  # pipes that carry what is written to fds 1 and 2
        self.interpreters = {}  # "javascript", "bash": codebox_languages.Interpreter
        self.counts = {}  # calls per interpreter besides IPython: their execution_count

    def show_error(self, etype, evalue, stb, extra=None):
        """The exception of the current execute, within its output budget."""
        out = self.outbox
        out.flush()
        req = out.current
        if req is None:
            return
        try:
            value = str(evalue)
        except Exception as exc:  # a __str__ of user code's own that raises
            value = f"<unprintable {type(evalue).__name__}: {type(exc).__name__}>"
        budget = req.budget
        error = {"ename": budget.fit(str(getattr(etype, "__name__", etype))[:256]),
                 "evalue": budget.fit(value), "traceback": []}
        for line in itertools.islice(stb, 200):
            line = budget.fit(str(line))
            if not line:
                break
            error["traceback"].append(line)
        error.update(extra or {})
        self.error = error
        out.send(req, "error", self.error)

    # ---- requests ------------------------------------------------------------------

    def on_sigint(self, signum, frame):
        # Only user code is interruptible; a SIGINT that arrives while the agent itself is
        # working (between executes) must not break the agent.
        if self.outbox.executing:
            raise KeyboardInterrupt

    def handle(self, conn, raw):
        """Answers one message from conn; malformed ones are dropped."""
        try:
            msg = json.loads(raw)
            header = msg["header"]
            handler = HANDLERS.get(header["msg_type"])
        except (ValueError, KeyError, TypeError):
            return
        if handler is None:
            return
        try:
            handler(self, conn, msg)
        except KeyboardInterrupt:  # a SIGINT that came after user code ended
            pass
        self.outbox.deliver()

    def settle_fds(self):
        """Gives output still in the fd pipes a moment (at most ~20 ms) to reach the
        execute it belongs to."""
        buf = bytearray(4)
        for _ in range(20):
            pending = 0
            for fd in self.fd_readers:
                fcntl.ioctl(fd, termios.FIONREAD, buf)
                pending += int.from_bytes(buf, sys.byteorder)
            if not pending:
                return
            time.sleep(0.001)

    def kernel_info(self, conn, msg):
        req = Request(conn, msg, self.max_output)
        self.outbox.send(req, "kernel_info_reply", {
            "status": "ok",
            "protocol_version": PROTOCOL_VERSION,
            "implementation": "codebox-agent",
            "implementation_version": AGENT_VERSION,
            "language_info": {
                "name": "python",
                "version": platform.python_version(),
                "mimetype": "text/x-python",
                "file_extension": ".py",
            },
            "banner": "",
        }, channel="shell")

    def execute(self, conn, msg):
        req = Request(conn, msg, self.max_output)
        content = msg.get("content") or {}
        code = content.get("code")
        language = content.get("language") or "python"
        # A silent execute (the daemon's health check) leaves no trace: no history, no
        # execution count, no displayed value.
        silent = bool(content.get("silent", False))
        store_history = bool(content.get("store_history", not silent)) and not silent
        out = self.outbox
        if not req.lean:
            out.send(req, "status", {"execution_state": "busy"})
        session = content.get("codebox_session")
        if isinstance(session, dict):
            self.start_session(session)
        problem = None
        if not isinstance(code, str):
            problem = "code must be a string"
        elif not isinstance(language, str) or language not in INTERPRETERS:
            problem = "language must be one of " + ", ".join(INTERPRETERS)
        if problem:
            self.reply(req, {
                "status": "error", "ename": "ValueError", "evalue": problem,
                "traceback": [], "execution_count": self.shell.execution_count,
            })
            return
        out.begin(req)
        self.error = None
        state_lost = False
        if INTERPRETERS[language] is None:
            count = self.run_python(code, store_history, silent)
        else:
            count, state_lost = self.run_other(INTERPRETERS[language], language, code)
        dropped = req.budget.close()
        if dropped:
            out.write_stream("stderr", TRUNCATION_MARKER.format(dropped))
        out.flush()
        out.end()
        if self.error is not None:
            reply = dict(self.error, status="error", execution_count=count)
        else:
            reply = {"status": "ok", "execution_count": count}
        reply.update(user_expressions={}, payload=[])
        if dropped:
            reply["codebox_truncated_bytes"] = dropped  # beyond Jupyter's fields
        if state_lost:
            reply["codebox_state_lost"] = True
        self.reply(req, reply)

    def start_session(self, spec):
        """codebox_session (our extension of execute_request): the worker now serves a
        session. Its env is set for everything it runs from now on (interpreters and
        processes start later, and inherit it), and the working directory is /sandbox again:
        the session's disk was just mounted over the empty mount point the agent started in."""
        env = spec.get("env")
        if isinstance(env, dict):
            for name, value in env.items():
                if isinstance(name, str) and isinstance(value, str) and name and "=" not in name \
                        and "\0" not in name and "\0" not in value:
                    os.environ[name] = value
        try:
            os.chdir(SANDBOX)
        except OSError as exc:
            log(f"chdir {SANDBOX}: {exc!r}")
        use_user_site()

    def reply(self, req, content):
        """Ends an execute: its reply, then (unless the client asked for lean) idle."""
        if req.lean:
            content["codebox_lean"] = True
        self.outbox.send(req, "execute_reply", content, channel="shell")
        if not req.lean:
            self.outbox.send(req, "status", {"execution_state": "idle"})

    def run_python(self, code, store_history, silent):
        """Runs code in IPython; returns the execution count."""
        # User code may have replaced the handler; interrupts must work again next time.
        if signal.getsignal(signal.SIGINT) != self.on_sigint:
            signal.signal(signal.SIGINT, self.on_sigint)
        interrupted_outside = False
        try:
            self.outbox.executing = True
            result = self.shell.run_cell(code, store_history=store_history, silent=silent)
        except KeyboardInterrupt:
            interrupted_outside = True
            result = None
        finally:
            self.outbox.executing = False
        if interrupted_outside:
            self.show_error(KeyboardInterrupt, "", ["KeyboardInterrupt"])
        self.settle_fds()
        return result.execution_count if result is not None else self.shell.execution_count

    def run_other(self, name, language, code):
        """Runs code in the interpreter name (started on its first call); returns the
        execution count and whether the interpreter's state was lost."""
        interp = self.interpreters.get(name)
        if interp is None:
            interp = self.interpreters[name] = codebox_languages.Interpreter(name, self.outbox.write_stream)
        self.counts[name] = count = self.counts.get(name, 0) + 1
        # The interpreter takes SIGINT for the call's length (it passes it on); the agent's
        # own handler, which raises only while Python code runs, stays quiet until then.
        try:
            reply = interp.run(code, typescript=language == "typescript")
        except codebox_languages.Lost as exc:
            self.show_error("InterpreterLost", f"{exc}; its state is lost, and the next {language} call starts it afresh",
                            [])
            return count, True
        except OSError as exc:  # it could not be started at all
            self.show_error("InterpreterLost", f"the {name} interpreter could not start: {exc}", [])
            return count, True
        finally:
            signal.signal(signal.SIGINT, self.on_sigint)
        if interp.start_seconds is not None:
            log(f"{name} interpreter started in {interp.start_seconds * 1000:.0f} ms")
            interp.start_seconds = None
        if name == "bash":
            status = reply.get("status")
            if reply.get("interrupted") is True:
                self.show_error(KeyboardInterrupt, "", ["KeyboardInterrupt"])
            elif isinstance(status, int) and status != 0:
                self.show_error("ExitStatus", f"exit status {status}", [], extra={"exit_code": status})
            return count, False
        if reply.get("status") == "ok":
            value = reply.get("value")
            if isinstance(value, str):
                self.outbox.publish("execute_result", {"data": {"text/plain": value}, "metadata": {},
                                                "execution_count": count})
        else:
            tb = reply.get("traceback")
            self.show_error(str(reply.get("ename") or "Error"), str(reply.get("evalue") or ""),
                            [str(line) for line in tb] if isinstance(tb, list) else [])
        return count, False


HANDLERS = {
    "execute_request": Agent.execute,
    "kernel_info_request": Agent.kernel_info,
}


class Stream(io.TextIOBase):
    """sys.stdout / sys.stderr replacement that forwards text to the agent."""

    def __init__(self, agent, name):
        super().__init__()
        self.agent = agent
        self.name = name

    @property
    def encoding(self):
        return "utf-8"

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self.agent.outbox.write_stream(self.name, text)
        return len(text)

    def writable(self):
        return True


def make_shell(agent):
    """Builds the InteractiveShell whose displays and errors become kernel messages."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import Type
    from traitlets.config import Config

    class AgentDisplayHook(DisplayHook):
        def start_displayhook(self):
            self.content = {"data": {}, "metadata": {}}

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            self.content["data"] = format_dict
            self.content["metadata"] = md_dict or {}

        def finish_displayhook(self):
            self.content["execution_count"] = self.prompt_count
            agent.outbox.publish("execute_result", self.content)

    class AgentDisplayPublisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            msg_type = "update_display_data" if update else "display_data"
            agent.outbox.publish(msg_type, {"data": data, "metadata": metadata or {},
                                     "transient": transient or {}})

        def clear_output(self, wait=False):
            agent.outbox.publish("clear_output", {"wait": wait})

    class AgentShell(InteractiveShell):
        displayhook_class = Type(AgentDisplayHook)
        display_pub_class = Type(AgentDisplayPublisher)

        def _showtraceback(self, etype, evalue, stb):
            agent.show_error(etype, evalue, stb)

        def enable_gui(self, gui=None):
            pass

        # The completer (and jedi, which it imports) costs ~0.1 s of CPU per worker start
        # and serves only code that asks for completions: it is made on first use.
        def init_completer(self):
            pass

        @property
        def Completer(self):
            if "_codebox_completer" not in self.__dict__:
                InteractiveShell.init_completer(self)
            return self.__dict__["_codebox_completer"]

        @Completer.setter
        def Completer(self, value):
            self.__dict__["_codebox_completer"] = value

    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "NoColor"
    config.InteractiveShell.autocall = 0
    shell = AgentShell.instance(config=config)
    shell.system = shell.system_piped
    return shell


def warm_up(shell):
    """Pays IPython's one-time costs before the worker joins the pool, not in a user's
    call: the display formatters (~2 ms on first use) and the traceback machinery (~60 ms
    on the first exception)."""
    shell.display_formatter.format(1)
    try:
        raise NameError("warm-up")
    except NameError:
        shell.InteractiveTB.structured_traceback(*sys.exc_info())


def prepare_matplotlib():
    """Makes plots inline (unless the image configures matplotlib itself) and seeds
    matplotlib's font cache from the image, when it has one, so the first plot does not
    rebuild it. Where matplotlib or its inline backend is not installed, nothing changes."""
    import importlib.util
    rc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "matplotlibrc")
    if "MATPLOTLIBRC" not in os.environ and importlib.util.find_spec("matplotlib_inline") is not None:
        os.environ["MATPLOTLIBRC"] = rc
    seed = "/opt/codebox/mplcache"
    home = os.path.expanduser("~")
    cache = os.environ.get("MPLCONFIGDIR") or os.path.join(home, ".cache", "matplotlib")
    if not os.path.isdir(seed):
        return
    try:
        os.makedirs(cache, exist_ok=True)
        for name in os.listdir(seed):
            if name.startswith("fontlist") and not os.path.exists(os.path.join(cache, name)):
                shutil.copy(os.path.join(seed, name), cache)
    except OSError as exc:
        log(f"matplotlib cache not seeded: {exc}")


def capture_fds(agent):
    """Sends what is written to file descriptors 1 and 2 (C extensions, subprocesses,
    os.write) to the current execute's output, within its budget, instead of to the
    container's log on the host, which would grow without bound."""
    import codecs

    def pump(fd, name):
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            try:
                data = os.read(fd, 65536)
            except InterruptedError:
                continue
            if not data:
                return
            text = decoder.decode(data)
            if text:
                agent.outbox.write_stream(name, text)

    for fd, name in ((1, "stdout"), (2, "stderr")):
        r, w = os.pipe()
        os.dup2(w, fd)
        os.close(w)
        agent.fd_readers.append(r)
        threading.Thread(target=pump, args=(r, name), daemon=True, name="fd-" + name).start()


class Connection:
    """One client's websocket: the sans-I/O protocol state and its socket. Reads happen on
    the main thread only; writes go through Outbox.deliver (under its write lock) or, for
    protocol replies, on the main thread between executes."""

    def __init__(self, sock, expected):
        self.sock = sock
        self.expected = expected
        self.ws = ServerProtocol(max_size=MAX_MESSAGE_BYTES)
        self.parts = []  # fragments of a message split over frames
        self.closed = False

    def write_texts(self, frames):
        if self.closed:
            return
        try:
            for data in frames:
                self.ws.send_text(data)
        except Exception as exc:  # the websocket is closing; the frames have nowhere to go
            log(f"frames dropped, the connection is closing: {exc!r}")
            return
        self.write_pending()

    def write_pending(self):
        chunks = self.ws.data_to_send()
        if not chunks:
            return
        # One write per batch: with TCP_NODELAY every sendall is its own segment and
        # wakes the client once more.
        data = b"".join(chunks)
        try:
            if data:
                self.sock.sendall(data)
            if not chunks[-1]:  # the protocol ends the stream
                self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.closed = True

    def receive(self, data):
        """Feeds bytes read from the socket; returns the complete messages they finish."""
        if data:
            self.ws.receive_data(data)
        else:
            self.ws.receive_eof()
            self.closed = True
        messages = []
        for event in self.ws.events_received():
            if isinstance(event, http11.Request):  # the handshake
                self.handshake(event)
            elif event.opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                self.parts.append(event.data)
                if event.fin:
                    messages.append(b"".join(self.parts))
                    self.parts = []
        if self.ws.close_expected() or self.ws.state.name == "CLOSED":
            self.closed = True
        return messages

    def handshake(self, request):
        if request.path.split("?", 1)[0] != CHANNELS_PATH:
            response = self.ws.reject(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        elif not hmac.compare_digest(request.headers.get("Authorization", "").encode(), self.expected):
            response = self.ws.reject(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
        else:
            response = self.ws.accept(request)
        self.ws.send_response(response)


class Server:
    """The main thread's loop: accepts clients, reads their requests, runs them in order."""

    def __init__(self, agent, token, port):
        self.agent = agent
        self.expected = ("token " + token).encode()
        self.listener = socket.create_server(("0.0.0.0", port), backlog=64, reuse_port=False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)

    def accept(self):
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A client that stops reading must not hold the agent forever. The kernel's send
        # timeout, not Python's (which polls before every call), keeps a write one syscall;
        # reads happen only after epoll says the socket is readable.
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", SEND_TIMEOUT_SECONDS, 0))
        self.selector.register(sock, selectors.EVENT_READ, Connection(sock, self.expected))

    def close(self, conn):
        self.selector.unregister(conn.sock)
        conn.sock.close()

    def serve_forever(self):
        agent = self.agent
        while True:
            try:
                events = self.selector.select()
            except KeyboardInterrupt:
                continue
            for key, _ in events:
                conn = key.data
                if conn is None:
                    self.accept()
                    continue
                try:
                    data = conn.sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                try:
                    messages = conn.receive(data)
                except Exception as exc:  # a request line or header the protocol layer refuses
                    log(f"connection dropped: {exc!r}")
                    messages = []
                    conn.closed = True
                with agent.outbox.write_lock:
                    conn.write_pending()
                for raw in messages:
                    agent.handle(conn, raw)
                if conn.closed:
                    self.close(conn)


def main():
    token = os.environ.get("CODEBOX_AGENT_TOKEN", "")
    if not token:
        print("codebox-agent: CODEBOX_AGENT_TOKEN is not set", file=sys.stderr)
        return 2
    port = int(os.environ.get("CODEBOX_AGENT_PORT", "8888"))
    max_output = int(os.environ.get("CODEBOX_MAX_OUTPUT_BYTES", str(4 << 20)))
    # Keep the token out of user code's reach through os.environ at least.
    os.environ.pop("CODEBOX_AGENT_TOKEN", None)

    agent = Agent(max_output)
    prepare_matplotlib()
    agent.shell = make_shell(agent)
    warm_up(agent.shell)
    signal.signal(signal.SIGINT, agent.on_sigint)
    sys.stdout = Stream(agent, "stdout")
    sys.stderr = Stream(agent, "stderr")

    server = Server(agent, token, port)
    threading.Thread(target=agent.outbox.flusher, daemon=True, name="flusher").start()
    log.open()
    log(f"listening on port {port}")
    capture_fds(agent)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
