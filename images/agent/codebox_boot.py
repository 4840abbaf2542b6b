"""Starts the codebox agent in whatever image a worker runs.

codeboxd mounts this directory read-only into every worker and runs this file with the
image's own python3, so an image needs python3 >= 3.9 and IPython and nothing of codebox's.
It checks both first and exits with a code codeboxd turns into a message naming what is
missing (codeboxd's agent package lists them), before anything else can fail less clearly.

  codebox_boot.py          run the agent
  codebox_boot.py --check  print what the image offers (one JSON line) and exit 0

This file keeps to syntax old interpreters parse, so that they reach the version check.
"""
import os
import sys

EXIT_OLD_PYTHON = 3
EXIT_NO_IPYTHON = 4
EXIT_AGENT_BROKEN = 5

HERE = os.path.dirname(os.path.abspath(__file__))


def fail(code, message):
    sys.stderr.write("codebox-agent: " + message + "\n")
    sys.exit(code)


def languages():
    """The languages this image runs besides Python: JavaScript needs node with the acorn
    module (TypeScript also typescript), where the agent's driver finds them."""
    import shutil
    import subprocess
    found = ["python"]
    node = shutil.which("node")
    if node:
        env = dict(os.environ)
        env["NODE_PATH"] = ":".join(p for p in (env.get("NODE_PATH"), "/usr/share/nodejs") if p)
        for lang, modules in (("javascript", ["acorn"]), ("typescript", ["acorn", "typescript"])):
            script = "".join("require.resolve(%r);" % m for m in modules)
            try:
                ok = subprocess.run([node, "-e", script], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=20).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                found.append(lang)
    if shutil.which("bash"):
        found.append("bash")
    return found


def defer_terminal():
    """IPython's package imports its terminal for IPython.embed (prompt_toolkit and more:
    ~0.1 s of CPU and ~6 MB per worker start), which the agent never calls. A stand-in
    takes its place in sys.modules and loads it when anything of it is first used."""
    import importlib
    import types

    name = "IPython.terminal.embed"

    class Deferred(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):  # the import system's own questions
                raise AttributeError(attr)
            if sys.modules.get(name) is self:
                del sys.modules[name]
            return getattr(importlib.import_module(name), attr)

    stand_in = Deferred(name)
    stand_in.embed = lambda *args, **kwargs: Deferred.__getattr__(stand_in, "embed")(*args, **kwargs)
    sys.modules.setdefault(name, stand_in)


def main():
    if sys.version_info < (3, 9):
        fail(EXIT_OLD_PYTHON, "python3 %s is older than 3.9" % sys.version.split()[0])
    defer_terminal()
    try:
        import IPython
    except ImportError as exc:
        fail(EXIT_NO_IPYTHON, "IPython does not import: %r" % (exc,))
    # The agent's one dependency comes with it, under a name of its own (codebox_websockets),
    # so the image's own websockets, if any, is untouched.
    sys.path.append(os.path.join(HERE, "vendor"))
    if "--check" in sys.argv[1:]:
        import json
        import platform
        print(json.dumps({"python": platform.python_version(), "ipython": IPython.__version__,
                          "languages": languages()}))
        return 0
    try:
        import codebox_agent
    except Exception as exc:
        fail(EXIT_AGENT_BROKEN, "the agent does not load: %r" % (exc,))
    return codebox_agent.main()


if __name__ == "__main__":
    sys.exit(main())
