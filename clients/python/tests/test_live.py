"""The client against a live codeboxd (run by e2e/python_test.go, which starts one with at
most two workers): CODEBOX_URL and CODEBOX_TOKEN name it; without them this fails."""

import io
import os
import time
import unittest

import codebox

URL = os.environ.get("CODEBOX_URL")
TOKEN = os.environ.get("CODEBOX_TOKEN")


def setUpModule():
    if not URL or not TOKEN:
        raise RuntimeError("CODEBOX_URL and CODEBOX_TOKEN must name a live codeboxd")


class LiveTest(unittest.TestCase):
    def setUp(self):
        self.client = codebox.Client(URL, TOKEN)
        self.s = self.client.session()

    def tearDown(self):
        self.s.release()
        self.client.close()

    def test_the_seeds_example(self):
        # The seed's README example, with this client.
        with self.client.session() as s:
            s.run("a = 100")
            r = s.run("b = a * 5\nprint(b)")
            self.assertEqual(r.text, "500\n")
            r = s.run("import matplotlib.pyplot as plt\nimport numpy as np\nx = np.linspace(0, 2 * np.pi, 200)\n"
                      "plt.plot(x, np.sin(x))\nplt.title('Sine Wave')\nplt.show()")
            self.assertEqual(len(r.images), 1)
            self.assertTrue(r.images[0].startswith(b"\x89PNG\r\n\x1a\n"))

    def test_state_results_and_errors(self):
        r = self.s.run("x = 41\nprint('hello')")
        self.assertEqual((r.stdout, r.new_session), ("hello\n", True))
        r = self.s.run("x + 1")
        self.assertEqual((r.text, r.results, r.new_session), ("42", [{"text/plain": "42"}], False))
        r = self.s.run("1 / 0")
        self.assertEqual(r.error["ename"], "ZeroDivisionError")
        with self.assertRaises(codebox.CodeError):
            r.raise_for_error()
        self.assertEqual(self.s.run("print(x)").stdout, "41\n")
        self.assertEqual(self.s.run("echo $((6 * 7))", language="bash").stdout, "42\n")
        self.assertEqual(self.s.run("[1, 2].map(v => v * 21)", language="javascript").text, "[ 21, 42 ]")

    def test_refusals(self):
        with self.assertRaises(codebox.BadRequestError) as cm:
            self.s.run("1", language="cobol")
        self.assertIn("cobol", cm.exception.detail)
        with self.assertRaises(codebox.BadRequestError):
            self.client.session("not a valid id").run("1")
        with codebox.Client(URL, "wrong") as wrong, self.assertRaises(codebox.AuthenticationError):
            wrong.session("x").run("1")
        with self.assertRaises(codebox.NotFoundError):
            self.client.session().download("nothing.txt")

    def test_timeout_keeps_state(self):
        self.s.run("kept = 1")
        with self.assertRaises(codebox.ExecutionTimeoutError) as cm:
            self.s.run("import time\ntime.sleep(30)", timeout=1)
        self.assertIs(cm.exception.state_preserved, True)
        self.assertEqual(self.s.run("print(kept)").stdout, "1\n")

    def test_stream(self):
        start = time.monotonic()
        seen = []
        for ev in self.s.stream("import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.5)"):
            seen.append((time.monotonic() - start, ev))
        kinds = [e.type for _, e in seen]
        self.assertEqual(kinds[-1], "done")
        self.assertEqual(seen[-1][1].status, "ok")
        self.assertEqual("".join(e.text for _, e in seen if e.type == "stdout"), "tick 0\ntick 1\ntick 2\n")
        first = next(t for t, e in seen if e.type == "stdout")
        self.assertGreater(seen[-1][0] - first, 0.8, "the first line did not arrive while the code ran")
        # Leaving a stream early interrupts its code; the session goes on.
        for ev in self.s.stream("import time\nprint('x', flush=True)\ntime.sleep(60)"):
            break
        self.assertEqual(self.s.run("print('after')").stdout, "after\n")

    def test_files(self):
        self.assertEqual(self.s.upload("data/in.csv", "a,b\n1,2\n"), 8)
        self.s.upload("/sandbox/blob.bin", io.BytesIO(bytes(range(256)) * 4096))
        self.assertEqual(self.s.run("import pandas as pd\nprint(pd.read_csv('data/in.csv').b.sum())").stdout, "2\n")
        names = {e.name: e for e in self.s.list()}
        self.assertEqual((names["data"].type, names["blob.bin"].size), ("directory", 1 << 20))
        self.assertEqual(self.s.download("data/in.csv"), b"a,b\n1,2\n")
        buf = io.BytesIO()
        self.assertEqual(self.s.download("blob.bin", to=buf), 1 << 20)
        self.assertEqual(buf.getvalue(), bytes(range(256)) * 4096)
        self.s.delete("blob.bin")
        self.assertNotIn("blob.bin", {e.name for e in self.s.list()})
        with self.assertRaises(codebox.CodeboxError):
            self.s.delete("blob.bin")

    def test_release_and_status(self):
        self.s.run("gone = 1")
        self.s.release()
        r = self.s.run("print(gone)")
        self.assertTrue(r.new_session)
        self.assertEqual(r.error["ename"], "NameError")
        st = self.client.status()
        self.assertEqual(st.max_total_workers, 2)
        self.assertTrue(self.client.healthy())

    def test_sessions_as_resources(self):
        s = self.client.create_session(memory_mb=256, timeout=600, metadata={"suite": "py", "run": "1"}, env={"GREETING": "hi"})
        try:
            self.assertEqual(s.info.limits["memory_mb"], 256)
            self.assertEqual(s.info.env_names, ["GREETING"])
            self.assertTrue(s.info.access_token.startswith("cbs_"))
            self.assertEqual(s.run("import os; print(os.environ['GREETING'])").stdout, "hi\n")
            self.assertEqual([i.session_id for i in self.client.sessions(metadata={"suite": "py"})], [s.user_uuid])
            envs = self.client.environments()
            self.assertEqual((envs[0].name, envs[0].available, s.info.environment), ("default", True, "default"))
            self.assertIn("python", envs[0].languages)
            info = s.refresh()
            self.assertGreater(info.usage["disk_total_bytes"], 0)
            self.assertIsNotNone(s.extend(1200).expires_at)
            with self.assertRaises(codebox.ConflictError):
                self.client.create_session(s.user_uuid)
            with self.assertRaises(codebox.BadRequestError) as cm:
                self.client.create_session(memory_mb=10 ** 9)
            self.assertEqual(cm.exception.body.get("field"), "limits.memory_mb")
            # The session's access token reaches it, and nothing else.
            tok = codebox.Client(URL, s.info.access_token)
            self.assertEqual(tok.session(s.user_uuid).run("1 + 1").text, "2")
            with self.assertRaises(codebox.ForbiddenError):
                list(tok.sessions())
            tok.close()
        finally:
            self.client.delete_session(s.user_uuid)
        ended = self.client.get_session(s.user_uuid)
        self.assertEqual((ended.state, ended.ended_reason), ("ended", "released"))
        r = s.run("1")
        self.assertEqual(r.previous_session["ended_reason"], "released")
        s.release()

    def test_snapshot_and_fork(self):
        src = self.client.create_session(metadata={"test": "snapshot"})
        try:
            src.run("open('/sandbox/kept.txt', 'w').write('kept')\nx = 1")
            snap = src.snapshot("py-snap")
            self.assertFalse(snap["memory"])
            self.assertIn("py-snap", [s["snapshot_id"] for s in self.client.snapshots()])
            (fork,) = src.fork("py-fork-1")
            try:
                r = fork.run("print(open('/sandbox/kept.txt').read(), 'x' in globals())")
                self.assertEqual(r.text, "kept False\n")  # files kept, variables not
            finally:
                fork.release()
        finally:
            src.release()
            self.client.delete_snapshot("py-snap")
        with self.assertRaises(codebox.NotFoundError):
            self.client.get_snapshot("py-snap")

    def test_unavailable_carries_retry_after(self):
        # This daemon keeps at most two workers: two sessions hold them, a third waits.
        others = [self.client.session(), self.client.session()]
        try:
            for o in others:
                o.run("1")
            with self.assertRaises(codebox.UnavailableError) as cm:
                self.s.run("1")
            self.assertGreater(cm.exception.retry_after, 0)
        finally:
            for o in others:
                o.release()


if __name__ == "__main__":
    unittest.main()
