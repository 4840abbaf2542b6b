"""The client against a stub server: how answers map to results and exceptions, event
streams, paging, connection reuse. Runs with the standard library only."""

import http.server
import json
import os
import sys
import threading
import unittest
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import codebox  # noqa: E402


class Stub(http.server.BaseHTTPRequestHandler):
    """Answers from the test's script: routes maps "METHOD /path" to (status, headers, body)."""

    protocol_version = "HTTP/1.1"
    routes = {}
    ports = []
    requests = []
    drop_after_answer = False

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        type(self).requests.append((self.command, self.path, dict(self.headers), body))
        type(self).ports.append(self.client_address[1])
        route = self.routes.get(f"{self.command} {path}")
        if route is None:
            status, headers, out = 404, {}, b'{"detail": "not found"}'
        else:
            answer = route(self, body) if callable(route) else route
            if answer is None:  # the request was read, then the connection dropped
                self.close_connection = True
                return
            status, headers, out = answer
        if isinstance(out, (dict, list)):
            out = json.dumps(out).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
        if type(self).drop_after_answer:
            # A kept connection the server closes without saying so, as after its idle
            # timeout.
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *args):
        pass


class ClientTest(unittest.TestCase):
    def setUp(self):
        Stub.routes, Stub.ports, Stub.requests, Stub.drop_after_answer = {}, [], [], False
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = codebox.Client(f"http://127.0.0.1:{self.server.server_address[1]}", "tok", timeout=5)
        self.s = self.client.session("alice")

    def tearDown(self):
        self.client.close()
        self.server.shutdown()
        self.server.server_close()

    def test_sessions(self):
        Stub.routes["POST /api/v1/sessions"] = lambda h, body: (201, {}, dict(json.loads(body), session_id="s-1", state="running",
                                                                              access_token="cbs_x", limits={"memory_mb": 256}))
        s = self.client.create_session(memory_mb=256, timeout=60, metadata={"team": "a"}, env={"A": "1"})
        sent = json.loads(Stub.requests[-1][3])
        self.assertEqual(sent, {"limits": {"memory_mb": 256}, "timeout": 60, "metadata": {"team": "a"}, "env": {"A": "1"}})
        self.assertEqual((s.user_uuid, s.info.access_token, s.info.limits), ("s-1", "cbs_x", {"memory_mb": 256}))
        # Paging goes on until there is no next page; metadata goes as metadata.KEY.
        pages = {"": {"sessions": [{"session_id": "a", "state": "running"}], "next_page_token": "t2"},
                 "t2": {"sessions": [{"session_id": "b", "state": "running"}], "next_page_token": None}}

        def listing(h, body):
            from urllib.parse import parse_qs, urlsplit
            q = parse_qs(urlsplit(h.path).query)
            self.assertEqual(q["metadata.team"], ["a,b"])
            return 200, {}, pages[q.get("page_token", [""])[0]]
        Stub.routes["GET /api/v1/sessions"] = listing
        self.assertEqual([i.session_id for i in self.client.sessions(metadata={"team": "a,b"})], ["a", "b"])
        Stub.routes["PATCH /api/v1/sessions/a%2Fb"] = (409, {}, {"detail": "uses more", "field": "limits.memory_mb"})
        with self.assertRaises(codebox.ConflictError) as cm:
            self.client.update_session("a/b", memory_mb=1)
        self.assertEqual(cm.exception.body["field"], "limits.memory_mb")
        Stub.routes["GET /api/v1/sessions/gone"] = (404, {}, {"detail": "ended", "ended_reason": "idle_timeout"})
        with self.assertRaises(codebox.NotFoundError) as cm:
            self.client.get_session("gone")
        self.assertEqual(cm.exception.ended_reason, "idle_timeout")

    def test_environments(self):
        Stub.routes["GET /api/v1/environments"] = (200, {}, [
            {"name": "default", "image": "img", "languages": ["python", "bash"], "limits": {"cpu": 1}, "seed": False,
             "available": True, "pool": {"idle": 2, "busy": 0, "creating": 0, "min_idle": 2, "target_idle": 2, "max_total": 10}},
            {"name": "data", "image": "img2", "languages": ["python"], "limits": {}, "seed": True, "available": False,
             "unavailable_reason": "its python seed raised ImportError", "new_field": 1}])
        envs = self.client.environments()
        self.assertEqual([(e.name, e.seed, e.available) for e in envs], [("default", False, True), ("data", True, False)])
        self.assertEqual(envs[0].pool["target_idle"], 2)
        self.assertIsNone(envs[1].pool)
        self.assertEqual(envs[1].unavailable_reason, "its python seed raised ImportError")
        Stub.routes["POST /api/v1/sessions"] = lambda h, body: (201, {}, dict(json.loads(body), session_id="s-2", state="running"))
        s = self.client.create_session(environment="data")
        self.assertEqual(json.loads(Stub.requests[-1][3]), {"environment": "data"})
        self.assertEqual(s.info.environment, "data")

    def test_network(self):
        Stub.routes["POST /api/v1/sessions"] = lambda h, body: (201, {}, dict(json.loads(body), session_id="s-3", state="running"))
        self.client.create_session(allow=["pypi.org", "10.0.0.0/8:5432"])
        self.assertEqual(json.loads(Stub.requests[-1][3]), {"network": {"allow": ["pypi.org", "10.0.0.0/8:5432"]}})
        self.client.create_session(packages=True)
        self.assertEqual(json.loads(Stub.requests[-1][3]), {"network": {"allow": [], "presets": ["packages"]}})
        self.client.create_session(from_snapshot="base")
        self.assertEqual(json.loads(Stub.requests[-1][3]), {"from_snapshot": "base"})
        self.client.create_session(volumes=[{"name": "data", "path": "/sandbox/data", "read_only": True}])
        self.assertEqual(json.loads(Stub.requests[-1][3]), {"volumes": [{"name": "data", "path": "/sandbox/data", "read_only": True}]})
        Stub.routes["PUT /api/v1/sessions/s-3/network"] = lambda h, body: (200, {}, {"session_id": "s-3", "state": "running",
                                                                                    "network": json.loads(body)})
        self.assertEqual(self.client.set_network("s-3", ["pypi.org:443"]).network, {"allow": ["pypi.org:443"]})
        Stub.routes["GET /api/v1/sessions/s-3/network/events"] = (200, {}, {"events": [{"seq": 4, "kind": "dns", "name": "x.test",
                                                                                         "decision": "denied", "reason": "dns_denied"}],
                                                                              "next_seq": 5, "dropped": 0})
        ev = self.client.network_events("s-3", since=4)
        self.assertEqual((ev["next_seq"], ev["events"][0]["reason"]), (5, "dns_denied"))
        self.assertIn("since=4", Stub.requests[-1][1])
        Stub.routes["POST /api/v1/execute"] = (200, {}, {"worker_id": "w-1", "result_text": None, "stdout": "", "stderr": "",
                                                         "network_denials": [{"kind": "tcp", "ip": "203.0.113.9", "port": 443,
                                                                              "decision": "denied", "reason": "ip_literal"}],
                                                         "network_denials_total": 3})
        r = self.s.run("x")
        self.assertEqual((r.network_denials[0]["reason"], r.network_denials_total), ("ip_literal", 3))

    def test_result(self):
        png = "iVBORw0KGgo="
        Stub.routes["POST /api/v1/execute"] = (200, {}, {
            "worker_id": "w-1", "result_text": "42", "stdout": "hi\n", "stderr": "", "execution_count": 3,
            "duration_ms": 1.5, "new_session": True, "results": [{"image/png": png}, {"text/plain": "42"}]})
        r = self.s.run("x", language="bash", timeout=5)
        self.assertEqual((r.text, r.stdout, r.execution_count, r.new_session, r.worker_id), ("42", "hi\n", 3, True, "w-1"))
        self.assertEqual(r.images, [b"\x89PNG\r\n\x1a\n"])
        self.assertIs(r.raise_for_error(), r)
        method, path, headers, body = Stub.requests[-1]
        self.assertEqual(path, "/api/v1/execute?user_uuid=alice")
        self.assertEqual(headers["X-Auth-Token"], "tok")
        self.assertEqual(json.loads(body), {"code": "x", "language": "bash", "timeout": 5})

    def test_code_error_is_a_result(self):
        err = {"ename": "NameError", "evalue": "name 'y' is not defined", "traceback": ["Traceback", "NameError"]}
        Stub.routes["POST /api/v1/execute"] = (400, {}, {"detail": "NameError: ...", "stdout": "before\n", "error": err})
        r = self.s.run("y")
        self.assertEqual((r.error["ename"], r.stdout), ("NameError", "before\n"))
        with self.assertRaises(codebox.CodeError) as cm:
            r.raise_for_error()
        self.assertEqual((cm.exception.ename, cm.exception.traceback), ("NameError", ["Traceback", "NameError"]))

    def test_errors(self):
        cases = [
            (400, {}, {"detail": "unknown language \"cobol\""}, codebox.BadRequestError),
            (401, {}, {"detail": "missing or invalid token"}, codebox.AuthenticationError),
            (404, {}, {"detail": "no such session"}, codebox.NotFoundError),
            (413, {}, {"detail": "too large"}, codebox.TooLargeError),
            (422, {}, {"detail": "user_uuid must be ..."}, codebox.BadRequestError),
            (503, {"Retry-After": "7"}, {"detail": "no worker free"}, codebox.UnavailableError),
            (504, {}, {"detail": "ran past 1s", "state_preserved": True}, codebox.ExecutionTimeoutError),
            (500, {}, {"detail": "internal error"}, codebox.CodeboxError),
            (502, {}, b"<html>bad gateway</html>", codebox.CodeboxError),
        ]
        for status, headers, body, cls in cases:
            with self.subTest(status=status):
                Stub.routes["POST /api/v1/execute"] = (status, headers, body)
                with self.assertRaises(cls) as cm:
                    self.s.run("x")
                e = cm.exception
                self.assertEqual(type(e), cls)
                self.assertEqual(e.status, status)
                self.assertTrue(e.detail)
        Stub.routes["POST /api/v1/execute"] = (503, {"Retry-After": "7"}, {"detail": "worker died", "files_kept": False})
        with self.assertRaises(codebox.UnavailableError) as cm:
            self.s.run("x")
        self.assertEqual((cm.exception.retry_after, cm.exception.files_kept), (7.0, False))
        Stub.routes["POST /api/v1/execute"] = (504, {}, {"detail": "ran past 1s", "state_preserved": False})
        with self.assertRaises(codebox.ExecutionTimeoutError) as cm:
            self.s.run("x")
        self.assertIs(cm.exception.state_preserved, False)

    def test_unreachable(self):
        c = codebox.Client("http://127.0.0.1:1", "tok", timeout=2)
        with self.assertRaises(codebox.CodeboxError) as cm:
            c.session("a").run("1")
        self.assertEqual(cm.exception.status, 0)
        with self.assertRaises(ValueError):
            codebox.Client("ftp://x")

    def test_connection_reuse(self):
        Stub.routes["GET /api/v1/status"] = (200, {}, {k: 0 for k in codebox.Status.__dataclass_fields__})
        for _ in range(5):
            self.client.status()
        self.assertEqual(len(set(Stub.ports)), 1, Stub.ports)
        # The server drops each kept connection after answering: the client notices on its
        # next call and sends it once more on a new connection.
        Stub.drop_after_answer = True
        for _ in range(3):
            self.client.status()
        self.assertEqual(len(Stub.requests), 8)

    def test_stream(self):
        events = (b": keep-alive\n\n"
                  b'event: stdout\ndata: {"type": "stdout", "text": "0\\n"}\n\n'
                  b'event: display\ndata: {"type": "display", "data": {"text/plain": "x"}}\n\n'
                  b'event: done\ndata: {"type": "done", "status": "ok", "state_preserved": true, "execution_count": 2}\n\n')
        Stub.routes["POST /api/v1/execute"] = (200, {"Content-Type": "text/event-stream"}, events)
        got = list(self.s.stream("print(0)"))
        self.assertEqual([e.type for e in got], ["stdout", "display", "done"])
        self.assertEqual((got[0].text, got[1].data, got[2].status, got[2].state_preserved), ("0\n", {"text/plain": "x"}, "ok", True))
        self.assertEqual(Stub.requests[-1][2]["Accept"], "text/event-stream")
        Stub.routes["POST /api/v1/execute"] = (200, {"Content-Type": "text/event-stream"}, events[:60])
        with self.assertRaises(codebox.CodeboxError):
            list(self.s.stream("print(0)"))
        Stub.routes["POST /api/v1/execute"] = (401, {}, {"detail": "missing or invalid token"})
        with self.assertRaises(codebox.AuthenticationError):
            list(self.s.stream("print(0)"))

    def test_files(self):
        pages = {"0": {"path": "/sandbox/", "entries": [{"name": "a", "size": 1, "type": "file", "mtime": "t"}], "truncated": True, "next_offset": 1},
                 "1": {"path": "/sandbox/", "entries": [{"name": "b", "size": 2, "type": "directory", "mtime": "t"}], "truncated": False}}

        def listing(handler, body):
            offset = "1" if "offset=1" in handler.path else "0"
            return 200, {}, pages[offset]
        Stub.routes["GET /api/v1/files/list"] = listing
        self.assertEqual([(e.name, e.type) for e in self.s.list()], [("a", "file"), ("b", "directory")])
        Stub.routes["PUT /api/v1/files/content"] = lambda h, body: (201, {}, {"full_path": "/sandbox/x", "size": len(body)})
        self.assertEqual(self.s.upload("x", "héllo"), 6)
        self.assertIn("path=%2Fsandbox%2Fx", Stub.requests[-1][1])
        Stub.routes["GET /api/v1/files/content"] = (200, {}, b"\x00\x01")
        self.assertEqual(self.s.download("/sandbox/x"), b"\x00\x01")
        Stub.routes["DELETE /api/v1/files"] = (207, {}, {"success": False, "errors": [{"path": "/sandbox/", "name": "x", "detail": "no such file"}]})
        with self.assertRaises(codebox.CodeboxError) as cm:
            self.s.delete("x", "/sandbox/d/y")
        self.assertIn("no such file", str(cm.exception))
        self.assertEqual(json.loads(Stub.requests[-1][3]), {"files": [{"path": "/sandbox/", "name": "x"}, {"path": "/sandbox/d/", "name": "y"}]})

    def test_an_execute_is_never_sent_twice(self):
        Stub.routes["GET /api/v1/status"] = (200, {}, {k: 0 for k in codebox.Status.__dataclass_fields__})
        self.client.status()  # a kept connection
        Stub.routes["POST /api/v1/execute"] = lambda h, body: None
        with self.assertRaises(codebox.CodeboxError) as cm:
            self.s.run("x += 1")
        self.assertEqual(cm.exception.status, 0)
        self.assertEqual(sum(1 for r in Stub.requests if r[0] == "POST"), 1)
        # The client goes on, on a new connection.
        self.client.status()

    def test_hostile_answers(self):
        Stub.routes["POST /api/v1/execute"] = (200, {}, b"not json")
        with self.assertRaises(codebox.CodeboxError):
            self.s.run("x")
        Stub.routes["POST /api/v1/execute"] = (200, {}, b"[1, 2]")
        with self.assertRaises(codebox.CodeboxError):
            self.s.run("x")
        page = {"path": "/sandbox/", "entries": [], "truncated": True, "next_offset": 0}
        Stub.routes["GET /api/v1/files/list"] = (200, {}, page)
        with self.assertRaises(codebox.CodeboxError):
            self.s.list()
        Stub.routes["GET /api/v1/status"] = (200, {}, {k: 0 for k in codebox.Status.__dataclass_fields__})
        self.client.status()

    def test_download_in_memory_is_bounded(self):
        # A file of the tenant's can be any size: without to=, at most max_bytes is read.
        Stub.routes["GET /api/v1/files/content"] = (200, {}, b"x" * 5000)
        with self.assertRaises(codebox.CodeboxError) as cm:
            self.s.download("big", max_bytes=4096)
        self.assertIn("max_bytes", str(cm.exception))
        self.assertEqual(self.s.download("big", max_bytes=5000), b"x" * 5000)
        self.assertEqual(codebox._client.DOWNLOAD_IN_MEMORY, 64 << 20)

        def chunked(handler, body):  # no Content-Length: the bound holds while reading
            handler.send_response(200)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for _ in range(3):
                handler.wfile.write(b"800\r\n" + b"y" * 2048 + b"\r\n")
            handler.wfile.write(b"0\r\n\r\n")
            return None
        Stub.routes["GET /api/v1/files/content"] = chunked
        with self.assertRaises(codebox.CodeboxError):
            self.s.download("big", max_bytes=4096)

    def test_cleartext_to_another_host_warns(self):
        with self.assertWarns(codebox.InsecureTransportWarning):
            codebox.Client("http://10.1.2.3:3874", "tok")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for url in ("http://127.0.0.1:3874", "http://localhost:3874", "http://[::1]:3874", "https://10.1.2.3:3874"):
                codebox.Client(url, "tok")
        with self.assertRaises(ValueError):
            codebox.Client("http://127.0.0.1:1", "tok", cafile="/etc/ssl/certs/ca-certificates.crt")

    def test_token_from_environment(self):
        os.environ["AUTH_TOKEN"] = "from-env"
        try:
            self.assertEqual(codebox.Client("http://127.0.0.1:1").token, "from-env")
        finally:
            del os.environ["AUTH_TOKEN"]


if __name__ == "__main__":
    unittest.main()
