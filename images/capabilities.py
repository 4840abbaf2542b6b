"""Prints the capability list of a worker image as Markdown, read from inside it.

`make test-image-full` runs this in a full worker through the API and writes the output to
docs/CAPABILITIES.md, so the list says what the built image holds, with the versions found
there, and says plainly what is absent and why. It needs only the standard library.
"""

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys

RECIPE = "/opt/codebox/recipe"  # the image's copy of its recipe (images/recipes/full)


def read_list(name):
    """Rows of a recipe list: its whitespace-separated columns, comments dropped."""
    try:
        with open(os.path.join(RECIPE, name)) as f:
            return [line.split() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except OSError:
        return []


def python_list():
    """(usual name, import name, where it comes from) of every Python library the recipe
    asks for."""
    rows = [("IPython", "IPython", "Debian python3-ipython")]
    for cols in read_list("debian-python-packages"):
        package, module = cols[0], cols[1]
        rows.append((" ".join(cols[2:]) or module, module, f"Debian {package}"))
    for cols in read_list("pypi-packages"):
        rows.append((cols[0], cols[1], "PyPI"))
    return rows


# (name, command, a pattern whose first group is the version, where it comes from)
TOOLS = [
    ("Python", ["python3", "--version"], r"Python (\S+)", "Debian python3"),
    ("Node.js", ["node", "--version"], r"v(\S+)", "Debian nodejs"),
    ("npm", ["npm", "--version"], r"(\S+)", "Debian npm"),
    ("LibreOffice (headless)", ["soffice", "--headless", "--version"], r"LibreOffice (\S+)", "Debian libreoffice-*-nogui"),
    ("Pandoc", ["pandoc", "--version"], r"pandoc (\S+)", "Debian pandoc"),
    ("FFmpeg", ["ffmpeg", "-version"], r"ffmpeg version (\S+)", "Debian ffmpeg"),
    ("ffprobe", ["ffprobe", "-version"], r"ffprobe version (\S+)", "Debian ffmpeg"),
    ("ImageMagick", ["convert", "-version"], r"ImageMagick (\S+)", "Debian imagemagick"),
    ("Tesseract", ["tesseract", "--version"], r"tesseract (\S+)", "Debian tesseract-ocr"),
    ("Poppler (pdftotext)", ["pdftotext", "-v"], r"pdftotext version (\S+)", "Debian poppler-utils"),
    ("Ghostscript", ["gs", "--version"], r"(\S+)", "Debian ghostscript"),
    ("Chromium", ["chromium", "--headless", "--no-sandbox", "--version"], r"Chromium (\S+)", "Debian chromium"),
    ("Graphviz", ["dot", "-V"], r"version (\S+)", "Debian graphviz"),
]


TESSERACT_LANGS = [("eng", "English"), ("chi_sim", "Chinese, simplified"), ("chi_tra", "Chinese, traditional")]
FONTS = [("Noto Sans CJK SC", "Debian fonts-noto-cjk"), ("WenQuanYi Micro Hei", "Debian fonts-wqy-microhei"),
         ("DejaVu Sans", "Debian fonts-dejavu-core"), ("Liberation Sans", "Debian fonts-liberation2")]

PROBE = """
import importlib, importlib.metadata, sys
m = importlib.import_module(sys.argv[1])
v = getattr(m, "__version__", None) or getattr(m, "VERSION", None)
if not isinstance(v, str):
    dists = importlib.metadata.packages_distributions().get(sys.argv[1].split(".")[0], [])
    v = importlib.metadata.version(dists[0]) if dists else "?"
print(v)
"""


def run(cmd, timeout=120):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    return p.returncode, (p.stdout + p.stderr).strip()


def build_notes():
    notes = {}
    try:
        with open("/opt/codebox/build-notes.txt") as f:
            for line in f:
                m = re.match(r"pypi (\S+): (.*)", line.strip())
                if m:
                    notes[m.group(1)] = m.group(2)
    except OSError:
        pass
    return notes


def python_rows(notes):
    rows = []
    for name, module, source in python_list():
        code, out = run([sys.executable, "-c", PROBE, module])
        if code == 0:
            rows.append((name, source, "yes", out.splitlines()[-1]))
        else:
            why = notes.get(name) or (out.splitlines() or ["import failed"])[-1]
            rows.append((name, source, "**absent**", why))
    return rows


def tool_rows():
    rows = []
    for name, cmd, pattern, source in TOOLS:
        code, out = run(cmd)
        m = re.search(pattern, out or "")
        if code == 0 and m:
            rows.append((name, source, "yes", m.group(1)))
        else:
            rows.append((name, source, "**absent**", (out or "not found").splitlines()[0][:80]))
    return rows


def npm_rows():
    root = os.environ.get("NODE_PATH", "/usr/local/lib/node_modules")
    rows = []
    for cols in read_list("npm-packages"):
        pkg = cols[0].rsplit("@", 1)[0] if cols[0].rfind("@") > 0 else cols[0]
        source = "npm registry"
        try:
            with open(os.path.join(root, pkg, "package.json")) as f:
                rows.append((pkg, source, "yes", json.load(f)["version"]))
        except (OSError, ValueError, KeyError):
            rows.append((pkg, source, "**absent**", f"not under {root}"))
    return rows


def data_rows():
    rows = []
    _, langs = run(["tesseract", "--list-langs"])
    have = set((langs or "").split())
    for code, name in TESSERACT_LANGS:
        rows.append((f"Tesseract data: {name} ({code})", f"Debian tesseract-ocr-{code.replace('_', '-')}",
                     "yes" if code in have else "**absent**", ""))
    _, fonts = run(["fc-list", ":", "family"])
    for family, source in FONTS:
        rows.append((f"Font: {family}", source, "yes" if family in (fonts or "") else "**absent**", ""))
    return rows


def table(title, rows):
    out = [f"## {title}", "", "| capability | from | present | version / why not |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out) + "\n"


def main():
    notes = build_notes()
    if not os.path.isdir(RECIPE):
        print(f"(no {RECIPE} in this image: the slim image lists its programs only)\n")
    sections = [
        ("Python libraries", python_rows(notes)),
        ("Programs", tool_rows()),
        ("Node.js packages (global, NODE_PATH)", npm_rows()),
        ("OCR languages and fonts", data_rows()),
    ]
    try:
        with open("/etc/os-release") as f:
            system = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line).get("PRETTY_NAME", "?").strip('"')
    except OSError:
        system = "?"
    print(f"Built on {system}, Python {platform.python_version()}.\n")
    rows = [r for _, rs in sections for r in rs]
    absent = [r for r in rows if r[2] != "yes"]
    print(f"{len(rows) - len(absent)} of {len(rows)} capabilities present; absent: "
          + (", ".join(r[0] for r in absent) or "none") + ".\n")
    for title, rs in sections:
        print(table(title, rs))


if __name__ == "__main__":
    main()
