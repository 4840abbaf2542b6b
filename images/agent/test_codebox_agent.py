"""Tests of the kernel agent: a real agent process, driven over its real websocket.

Run with Debian's python3 (which has IPython, tornado, matplotlib):
    /usr/bin/python3 -m unittest discover -s images/agent -p 'test_*.py'
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import shutil
import tempfile
import unittest
import uuid

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

HERE = os.path.dirname(os.path.abspath(__file__))
BOOT = os.path.join(HERE, "codebox_boot.py")
TOKEN = "test-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    def __init__(self, max_output=None):
        self.port = free_port()
        env = dict(os.environ, CODEBOX_AGENT_TOKEN=TOKEN, CODEBOX_AGENT_PORT=str(self.port))
        env.pop("MATPLOTLIBRC", None)  # the agent sets up the inline backend itself
        if max_output is not None:
            env["CODEBOX_MAX_OUTPUT_BYTES"] = str(max_output)
        self.proc = subprocess.Popen([sys.executable, BOOT], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("agent exited: " + self.proc.stderr.read().decode())
                time.sleep(0.05)
        raise RuntimeError("agent did not listen")

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()


class Session:
    """A websocket client that speaks the Jupyter message format."""

    def __init__(self, loop, port, token=TOKEN):
        self.loop = loop
        req = HTTPRequest(f"ws://127.0.0.1:{port}/api/kernel/channels",
                          headers={"Authorization": "token " + token})

        async def connect():
            return await websocket_connect(req)

        self.ws = loop.run_until_complete(connect())

    def request(self, msg_type, content, until_idle=True, timeout=30):
        msg_id = uuid.uuid4().hex
        self.send_raw(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"}))
        return self.loop.run_until_complete(self._collect(msg_id, until_idle, timeout))

    def send_raw(self, data):
        async def send():
            await self.ws.write_message(data)

        self.loop.run_until_complete(send())

    async def _collect(self, msg_id, until_idle, timeout):
        frames = []
        start = time.monotonic()
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), timeout)
            assert raw is not None, "connection closed"
            m = json.loads(raw)
            m["t"] = time.monotonic() - start
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            frames.append(m)
            kind = m["header"]["msg_type"]
            if not until_idle and kind.endswith("_reply"):
                return frames
            if kind == "status" and m["content"]["execution_state"] == "idle":
                return frames

    def execute(self, code, **kw):
        return self.request("execute_request", {"code": code}, **kw)

    def execute_lean(self, code, timeout=30):
        """An execute with codebox_lean: its reply is its last frame."""
        return self.request("execute_request", {"code": code, "codebox_lean": True}, until_idle=False, timeout=timeout)


def of_type(frames, kind):
    return [f for f in frames if f["header"]["msg_type"] == kind]


def stdout(frames):
    return "".join(f["content"]["text"] for f in of_type(frames, "stream") if f["content"]["name"] == "stdout")


class AgentTest(unittest.TestCase):
    max_output = None

    @classmethod
    def setUpClass(cls):
        cls.loop = asyncio.new_event_loop()
        cls.agent = AgentProcess(cls.max_output)
        cls.session = Session(cls.loop, cls.agent.port)

    @classmethod
    def tearDownClass(cls):
        cls.session.ws.close()
        cls.loop.run_until_complete(asyncio.sleep(0.05))
        cls.agent.stop()
        cls.loop.close()


class ExecuteTest(AgentTest):
    def test_session_start_sets_env_for_code_and_subprocesses(self):
        frames = self.session.request("execute_request", {
            "code": "", "silent": True,
            "codebox_session": {"env": {"GREETING": "hi there", "BAD=NAME": "x", "NUL": "a\u0000b"}}})
        self.assertEqual(of_type(frames, "execute_reply")[0]["content"]["status"], "ok")
        frames = self.session.execute("import os, subprocess\n"
                                      "print(os.environ.get('GREETING'), 'BAD=NAME' in os.environ, 'NUL' in os.environ)\n"
                                      "print(subprocess.run(['sh', '-c', 'echo $GREETING'], capture_output=True, text=True).stdout, end='')")
        self.assertEqual(stdout(frames), "hi there False False\nhi there\n")

    def test_session_start_puts_the_user_site_first(self):
        base = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, base)
        frames = self.session.request("execute_request", {
            "code": "", "silent": True, "codebox_session": {"env": {"PYTHONUSERBASE": base}}})
        self.assertEqual(of_type(frames, "execute_reply")[0]["content"]["status"], "ok")
        frames = self.session.execute(
            "import os, site, sys\n"
            "us = site.getusersitepackages()\n"
            "os.makedirs(us + '/cbxmod', exist_ok=True)\n"
            "open(us + '/cbxmod/__init__.py', 'w').write('X = 7')\n"
            "import cbxmod\n"
            "firsts = [i for i, p in enumerate(sys.path) if p.endswith(('dist-packages', 'site-packages'))]\n"
            "print(us.startswith(%r), sys.path.index(us) == firsts[0], cbxmod.X)" % base)
        self.assertEqual(stdout(frames), "True True 7\n")
        self.session.request("execute_request", {
            "code": "", "silent": True, "codebox_session": {"env": {"PYTHONUSERBASE": ""}}})

    def test_state_persists_and_value_is_returned(self):
        self.session.execute("counter = 41")
        frames = self.session.execute("counter += 1\nprint('side')\ncounter")
        self.assertEqual(stdout(frames), "side\n")
        results = of_type(frames, "execute_result")
        self.assertEqual(len(results), 1)
        self.assertEqual(results[0]["content"]["data"]["text/plain"], "42")
        reply = of_type(frames, "execute_reply")[0]["content"]
        self.assertEqual(reply["status"], "ok")
        self.assertGreaterEqual(reply["execution_count"], 2)
        kinds = [f["header"]["msg_type"] for f in frames]
        self.assertEqual(kinds[0], "status")
        self.assertEqual(kinds[-2:], ["execute_reply", "status"])

    def test_lean_execute_has_no_status_and_ends_with_its_reply(self):
        frames = self.session.execute_lean("lean_x = 6 * 7\nprint(lean_x)\nlean_x")
        kinds = [f["header"]["msg_type"] for f in frames]
        self.assertNotIn("status", kinds)
        self.assertEqual(kinds[-1], "execute_reply")
        self.assertIs(frames[-1]["content"].get("codebox_lean"), True)
        self.assertEqual(stdout(frames), "42\n")
        self.assertEqual(of_type(frames, "execute_result")[0]["content"]["data"]["text/plain"], "42")
        # An error and a bad request end the same way.
        frames = self.session.execute_lean("1 / 0")
        self.assertEqual([f["header"]["msg_type"] for f in frames][-2:], ["error", "execute_reply"])
        frames = self.session.request("execute_request", {"code": "1", "language": "cobol", "codebox_lean": True}, until_idle=False)
        self.assertEqual([f["header"]["msg_type"] for f in frames], ["execute_reply"])
        # Nothing of them arrives after the reply: the next call's frames are its own.
        frames = self.session.execute("print('next')")
        self.assertEqual([f["header"]["msg_type"] for f in frames], ["status", "stream", "execute_reply", "status"])

    def test_silent_execute_leaves_no_trace(self):
        before = of_type(self.session.execute("'count'"), "execute_reply")[0]["content"]["execution_count"]
        frames = self.session.request("execute_request", {"code": "42", "silent": True})
        self.assertEqual(of_type(frames, "execute_reply")[0]["content"]["status"], "ok")
        self.assertEqual(of_type(frames, "execute_result"), [])
        after = of_type(self.session.execute("'count'"), "execute_reply")[0]["content"]["execution_count"]
        self.assertEqual(after, before + 1)

    def test_error_has_plain_traceback(self):
        frames = self.session.execute("undefined_thing")
        err = of_type(frames, "error")[0]["content"]
        self.assertEqual(err["ename"], "NameError")
        self.assertIn("undefined_thing", err["evalue"])
        self.assertTrue(err["traceback"])
        self.assertNotIn("\x1b[", "".join(err["traceback"]), "traceback must be free of ANSI colours")
        reply = of_type(frames, "execute_reply")[0]["content"]
        self.assertEqual(reply["status"], "error")
        self.assertEqual(reply["ename"], "NameError")

    def test_syntax_error(self):
        frames = self.session.execute("def (:")
        self.assertEqual(of_type(frames, "error")[0]["content"]["ename"], "SyntaxError")

    def test_stdout_streams_while_code_runs(self):
        frames = self.session.execute("import time\nprint('early', flush=True)\ntime.sleep(1.0)\nprint('late')")
        streams = of_type(frames, "stream")
        idle_at = frames[-1]["t"]
        self.assertEqual(stdout(frames), "early\nlate\n")
        self.assertLess(streams[0]["t"], idle_at - 0.5, "first output was held back until the end")

    def test_streamed_call_sends_at_once_then_gathers(self):
        # codebox_stream: the first line leaves at once, the rest a frame per flush period,
        # never a frame per print.
        code = "import time\nprint('first', flush=True)\ntime.sleep(0.5)\nfor i in range(200):\n    print(i)\n    time.sleep(0.001)"
        frames = self.session.request("execute_request", {"code": code, "codebox_stream": True})
        streams = of_type(frames, "stream")
        self.assertEqual(stdout(frames), "first\n" + "".join(f"{i}\n" for i in range(200)))
        self.assertEqual(streams[0]["content"]["text"], "first\n")
        self.assertLess(streams[0]["t"], frames[-1]["t"] - 0.5, "first output was held back")
        self.assertLess(len(streams), 50, "a frame per print")

    def test_stderr_and_stdout_are_separate(self):
        frames = self.session.execute("import sys\nprint('o')\nprint('e', file=sys.stderr)")
        names = {f["content"]["name"]: f["content"]["text"] for f in of_type(frames, "stream")}
        self.assertEqual(names, {"stdout": "o\n", "stderr": "e\n"})

    def test_fd_output_is_captured(self):
        frames = self.session.execute("import os, subprocess\nos.write(1, b'from fd 1\\n')\n"
                                      "subprocess.run(['echo', 'from a child'])")
        self.assertIn("from fd 1\n", stdout(frames))
        self.assertIn("from a child\n", stdout(frames))

    def test_matplotlib_show_gives_png(self):
        frames = self.session.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
        pngs = [f for f in of_type(frames, "display_data") if "image/png" in f["content"]["data"]]
        self.assertEqual(len(pngs), 1, [f["header"]["msg_type"] for f in frames])
        self.assertTrue(pngs[0]["content"]["data"]["image/png"].startswith("iVBOR"))

    def test_rich_display(self):
        frames = self.session.execute("from IPython.display import HTML, display\ndisplay(HTML('<b>x</b>'))")
        data = of_type(frames, "display_data")[0]["content"]["data"]
        self.assertEqual(data["text/html"], "<b>x</b>")

    def test_kernel_info(self):
        frames = self.session.request("kernel_info_request", {}, until_idle=False)
        content = frames[0]["content"]
        self.assertEqual(content["status"], "ok")
        self.assertEqual(content["language_info"]["name"], "python")

    def test_malformed_frames_do_not_break_the_agent(self):
        for junk in ["not json", "[]", json.dumps({"header": "x"}), json.dumps({"header": {"msg_type": 5}}),
                     json.dumps({"header": {"msg_id": "a", "msg_type": "execute_request"}, "content": {"code": 7}}),
                     json.dumps({"header": {"msg_id": "b", "msg_type": "nonsense_request"}})]:
            self.session.send_raw(junk)
        frames = self.session.execute("1 + 1")
        self.assertEqual(of_type(frames, "execute_result")[0]["content"]["data"]["text/plain"], "2")


class InterruptTest(AgentTest):
    def test_sigint_interrupts_user_code_and_keeps_state(self):
        self.session.execute("kept = 'yes'")
        msg_id = uuid.uuid4().hex
        self.session.send_raw(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request"}, "parent_header": {},
            "content": {"code": "import time\nwhile True: time.sleep(0.01)"}}))
        time.sleep(0.5)
        self.agent.proc.send_signal(signal.SIGINT)
        frames = self.loop.run_until_complete(self.session._collect(msg_id, True, 10))
        self.assertEqual(of_type(frames, "error")[0]["content"]["ename"], "KeyboardInterrupt")
        frames = self.session.execute("kept")
        self.assertEqual(of_type(frames, "execute_result")[0]["content"]["data"]["text/plain"], "'yes'")

    def test_sigint_between_executes_is_harmless(self):
        self.agent.proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        self.assertIsNone(self.agent.proc.poll())
        frames = self.session.execute("'alive'")
        self.assertEqual(of_type(frames, "execute_result")[0]["content"]["data"]["text/plain"], "'alive'")


class LanguageTest(AgentTest):
    """bash beside Python (JavaScript and TypeScript need the worker image's node modules:
    the end-to-end tests run them)."""

    def run_bash(self, code):
        return self.session.request("execute_request", {"code": code, "language": "bash"})

    def test_bash_keeps_state_and_splits_streams(self):
        self.run_bash("cd /tmp && v=kept && export E=env")
        frames = self.run_bash('echo "$PWD $v $(printenv E)"; echo err >&2')
        self.assertEqual(stdout(frames), "/tmp kept env\n")
        err = "".join(f["content"]["text"] for f in of_type(frames, "stream") if f["content"]["name"] == "stderr")
        self.assertEqual(err, "err\n")
        self.assertEqual(of_type(frames, "execute_reply")[0]["content"]["status"], "ok")

    def test_bash_exit_status_is_an_error_with_its_code(self):
        frames = self.run_bash("(exit 3)")
        reply = of_type(frames, "execute_reply")[0]["content"]
        self.assertEqual((reply["status"], reply["ename"], reply["exit_code"]), ("error", "ExitStatus", 3))
        self.assertEqual(of_type(frames, "error")[0]["content"]["exit_code"], 3)

    def test_a_cell_cannot_answer_a_later_call(self):
        # The cell finds its shell's write-only pipes besides stdout and stderr (the reply
        # pipe: fdinfo flags end in 1, O_WRONLY) and writes replies there, now and from a
        # job in the background during the next call. Before, the extra line became the
        # next call's answer (exit status 0 for a failing one).
        forge = r"""
reply_fds() { for f in /proc/$$/fdinfo/*; do n=${f##*/}; [ "$n" -gt 2 ] || continue
  flags=$(sed -n 's/^flags:[[:space:]]*//p' "$f"); [ $((8#$flags & 3)) -eq 1 ] && echo "$n"; done; }
for n in $(reply_fds); do printf '{"status": 0, "interrupted": false}\n{"status": 0, "interrupted": false}\n' >&"$n"; done
( sleep 0.3; for n in $(reply_fds); do printf '{"status": 0, "interrupted": false}\n' >&"$n"; done ) &
(exit 5)"""
        reply = of_type(self.run_bash(forge), "execute_reply")[0]["content"]
        self.assertEqual((reply["status"], reply.get("exit_code")), ("error", 5))
        reply = of_type(self.run_bash("sleep 0.6; (exit 7)"), "execute_reply")[0]["content"]
        self.assertEqual((reply["status"], reply.get("exit_code")), ("error", 7))
        self.assertEqual(stdout(self.run_bash("echo fine")), "fine\n")

    def test_bash_stdin_is_at_its_end(self):
        started = time.monotonic()
        frames = self.run_bash("cat; echo done")
        self.assertEqual(stdout(frames), "done\n")
        self.assertLess(time.monotonic() - started, 10)

    def test_bash_interrupt_keeps_the_shell(self):
        self.run_bash("mark=still")
        msg_id = uuid.uuid4().hex
        self.session.send_raw(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request"}, "parent_header": {},
            "content": {"code": "sleep 30", "language": "bash"}}))
        time.sleep(0.5)
        self.agent.proc.send_signal(signal.SIGINT)
        frames = self.loop.run_until_complete(self.session._collect(msg_id, True, 10))
        self.assertEqual(of_type(frames, "error")[0]["content"]["ename"], "KeyboardInterrupt")
        self.assertEqual(stdout(self.run_bash("echo $mark")), "still\n")

    def test_stubborn_or_exiting_bash_loses_its_state_only(self):
        self.session.execute("py_kept = 1")
        self.run_bash("mark=set")
        msg_id = uuid.uuid4().hex
        self.session.send_raw(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request"}, "parent_header": {},
            "content": {"code": "trap '' INT; while :; do :; done", "language": "bash"}}))
        time.sleep(0.5)
        self.agent.proc.send_signal(signal.SIGINT)
        frames = self.loop.run_until_complete(self.session._collect(msg_id, True, 10))
        reply = of_type(frames, "execute_reply")[0]["content"]
        self.assertEqual((reply["ename"], reply["codebox_state_lost"]), ("InterpreterLost", True))
        self.assertEqual(stdout(self.run_bash('echo "${mark:-gone}"')), "gone\n")
        reply = of_type(self.run_bash("exit 4"), "execute_reply")[0]["content"]
        self.assertTrue(reply["codebox_state_lost"])
        self.assertIn("exit status 4", reply["evalue"])
        frames = self.session.execute("py_kept")
        self.assertEqual(of_type(frames, "execute_result")[0]["content"]["data"]["text/plain"], "1")

    def test_unknown_language_is_refused(self):
        reply = of_type(self.session.request("execute_request", {"code": "1", "language": "cobol"}),
                        "execute_reply")[0]["content"]
        self.assertEqual(reply["ename"], "ValueError")
        self.assertIn("bash", reply["evalue"])


class OutputCapTest(AgentTest):
    max_output = 10_000

    def test_runaway_output_is_truncated_with_a_marker(self):
        frames = self.session.execute("for i in range(100000): print('x' * 100)")
        out = stdout(frames)
        self.assertLessEqual(len(out), 10_000)
        err = "".join(f["content"]["text"] for f in of_type(frames, "stream") if f["content"]["name"] == "stderr")
        self.assertIn("output truncated", err)
        reply = of_type(frames, "execute_reply")[0]["content"]
        self.assertEqual(reply["status"], "ok")
        self.assertGreater(reply["codebox_truncated_bytes"], 0)
        # The budget is per execute: the next one prints again.
        self.assertEqual(stdout(self.session.execute("print('again')")), "again\n")


class HostileOutputTest(AgentTest):
    """User code is hostile: whatever it prints or raises stays within the execute's
    budget, in frames far below the daemon's frame limit."""

    max_output = 1 << 20

    def frames_raw(self, code):
        frames = self.session.execute(code)
        return frames, [len(json.dumps(f["content"], ensure_ascii=False).encode()) for f in frames]

    def test_huge_exception_is_within_budget(self):
        frames, sizes = self.frames_raw("raise ValueError('v' * 50_000_000)")
        err = of_type(frames, "error")[0]["content"]
        reply = of_type(frames, "execute_reply")[0]["content"]
        self.assertEqual(err["ename"], "ValueError")
        self.assertEqual(reply["evalue"], err["evalue"])
        self.assertLessEqual(len(err["evalue"]), self.max_output)
        self.assertGreater(len(err["evalue"]), self.max_output // 2)
        self.assertGreater(reply["codebox_truncated_bytes"], 40_000_000)
        self.assertLessEqual(max(sizes), self.max_output + 4096)

    def test_escaped_exception_text_counts_its_escaped_size(self):
        frames, sizes = self.frames_raw("raise ValueError('\\x00' * 5_000_000)")
        err = of_type(frames, "error")[0]["content"]
        self.assertTrue(err["evalue"].startswith("\x00"))
        self.assertLessEqual(max(sizes), self.max_output + 4096)

    def test_unprintable_exception(self):
        frames = self.session.execute("class E(Exception):\n  def __str__(self): raise RuntimeError('no')\nraise E()")
        err = of_type(frames, "error")[0]["content"]
        self.assertEqual(err["ename"], "E")
        self.assertIn("unprintable", err["evalue"])

    def test_stream_text_leaves_in_small_frames(self):
        frames, sizes = self.frames_raw("print('\\x01' * 600_000)")
        streams = of_type(frames, "stream")
        self.assertGreater(len(streams), 1)
        self.assertEqual(sum(len(f["content"]["text"]) for f in streams), 600_001)
        self.assertLessEqual(max(sizes), 6 * (64 << 10) + 4096)

    def test_the_session_works_after(self):
        self.session.execute("raise ValueError('x' * 10_000_000)")
        self.assertEqual(stdout(self.session.execute("print('fine')")), "fine\n")


class AuthTest(unittest.TestCase):
    def test_wrong_token_is_refused(self):
        agent = AgentProcess()
        loop = asyncio.new_event_loop()
        try:
            with self.assertRaises(HTTPClientError) as cm:
                Session(loop, agent.port, token="wrong")
            self.assertEqual(cm.exception.code, 403)
        finally:
            loop.close()
            agent.stop()


def raw_handshake(port, path="/api/kernel/channels"):
    """Opens a websocket by hand, for what a high-level client will not send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\nAuthorization: token {TOKEN}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head.split(b"\r\n", 1)[0].decode()


class ConnectionTest(AgentTest):
    def test_unknown_path_is_404(self):
        sock, status = raw_handshake(self.agent.port, "/elsewhere")
        sock.close()
        self.assertIn(" 404 ", status)

    def test_fragmented_message_is_reassembled(self):
        from websockets.frames import OP_CONT, OP_TEXT, Frame

        sock, status = raw_handshake(self.agent.port)
        self.assertIn(" 101 ", status)
        body = json.dumps({"header": {"msg_id": "frag", "msg_type": "execute_request"},
                           "parent_header": {}, "content": {"code": "print('joined')"}}).encode()
        half = len(body) // 2
        sock.sendall(Frame(OP_TEXT, body[:half], fin=False).serialize(mask=True, extensions=[]) +
                     Frame(OP_CONT, body[half:], fin=True).serialize(mask=True, extensions=[]))
        got = b""
        deadline = time.time() + 10
        while b"joined" not in got and time.time() < deadline:
            got += sock.recv(65536)
        sock.close()
        self.assertIn(b"joined", got)

    def test_client_gone_mid_execute_leaves_agent_serving(self):
        from websockets.frames import OP_TEXT, Frame

        sock, status = raw_handshake(self.agent.port)
        self.assertIn(" 101 ", status)
        body = json.dumps({"header": {"msg_id": "gone", "msg_type": "execute_request"}, "parent_header": {},
                           "content": {"code": "import time\nfor i in range(30):\n print(i); time.sleep(0.01)"}})
        sock.sendall(Frame(OP_TEXT, body.encode()).serialize(mask=True, extensions=[]))
        sock.close()  # gone without a closing handshake, while its output streams
        self.assertEqual(stdout(self.session.execute("print('still here')")), "still here\n")


class LazyTest(AgentTest):
    """What the agent does not load at start still works when first asked for."""

    def result(self, code):
        frames = self.session.execute(code)
        results = of_type(frames, "execute_result")
        self.assertEqual(len(results), 1, frames)
        return results[0]["content"]["data"]["text/plain"]

    def test_terminal_and_completer_load_when_used(self):
        self.assertEqual(self.result("import sys; ('prompt_toolkit' in sys.modules, 'jedi' in sys.modules)"), "(False, False)")
        self.assertEqual(self.result(
            "from IPython.terminal.embed import InteractiveShellEmbed\n"
            "import IPython\n"
            "completer = get_ipython().Completer\n"
            "(InteractiveShellEmbed.__name__, callable(IPython.embed), type(completer).__name__, 'jedi' in sys.modules)"),
            "('InteractiveShellEmbed', True, 'IPCompleter', True)")
        self.assertIn("per loop", stdout(self.session.execute("%timeit -n1 -r1 pass")))


class BootTest(unittest.TestCase):
    """codebox_boot.py: what an image offers, and a clear exit for what it lacks."""

    def run_boot(self, *args, env=None):
        return subprocess.run([sys.executable, BOOT, *args], env=env or dict(os.environ),
                              capture_output=True, text=True, timeout=60)

    def test_check_reports_versions_and_languages(self):
        r = self.run_boot("--check")
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        self.assertEqual(got["python"].split(".")[0], "3")
        self.assertIn("python", got["languages"])
        self.assertIn("bash", got["languages"])
        self.assertTrue(got["ipython"])

    def test_no_ipython_exits_4_naming_it(self):
        with tempfile.TemporaryDirectory() as d:
            os.mkdir(os.path.join(d, "IPython"))
            with open(os.path.join(d, "IPython", "__init__.py"), "w") as f:
                f.write("raise ImportError('not in this image')\n")
            r = self.run_boot("--check", env=dict(os.environ, PYTHONPATH=d))
        self.assertEqual(r.returncode, 4)
        self.assertIn("IPython does not import", r.stderr)

    def test_agent_that_does_not_load_exits_5(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "codebox_languages.py"), "w") as f:
                f.write("raise RuntimeError('broken')\n")
            # sys.path[0] is the script's directory: a broken module can only come first
            # through a copy of the agent beside it.
            for name in ("codebox_boot.py", "codebox_agent.py"):
                with open(os.path.join(HERE, name)) as src, open(os.path.join(d, name), "w") as dst:
                    dst.write(src.read())
            r = subprocess.run([sys.executable, os.path.join(d, "codebox_boot.py")], capture_output=True, text=True,
                               timeout=60, env=dict(os.environ, CODEBOX_AGENT_TOKEN=TOKEN))
        self.assertEqual(r.returncode, 5)
        self.assertIn("the agent does not load", r.stderr)


if __name__ == "__main__":
    unittest.main()
