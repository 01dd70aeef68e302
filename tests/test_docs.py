"""Every code example of the documentation runs: docs/*.rst (README.md: test_readme.py).

The doctests (``>>>`` lines) of docs/*.rst are run by pytest-doctestplus
(``--doctest-rst``). This module runs the *other* Python blocks of each page:
``.. code-block:: python`` blocks, ``::`` literal blocks that are Python, and
the code of ``.. plot::`` directives. Each page's blocks run in order, as one
script in a fresh interpreter in an empty temporary directory (as a reader
would paste them into a file), after the page's doctests before them (which
define what they use); warnings are errors, as in the rest of the suite. A
traceback names the page and the line of the block.

A block that cannot run where the tests do (it needs a cluster, or the
reader's own files) is marked with a comment just before it that gives the
reason, and is skipped::

    .. test-skip: needs the reader's exposures and a shared file system

    .. code-block:: python

A ``.. code-block:: text`` right after a Python block is what that block
prints: the printed output must match it (``...`` matches anything, and
whitespace differences do not count). Blocks in other languages
(``console``, ``toml``, ``text``, sample output in ``::`` blocks) are not run;
a ``::`` block that starts like Python (``import``, ``from``) must be Python.
"""

import ast
import doctest
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

pytestmark = pytest.mark.skipif(not (DOCS / "index.rst").exists(),
                                reason="docs/ is not next to tests/")

#: Blocks of pages whose owners have not marked them yet: {(page, first code line): reason}.
KNOWN_SKIPS = {}

#: Languages of code blocks that are not Python and are not run.
OTHER_LANGUAGES = {"console", "bash", "sh", "shell", "shell-session", "toml", "text", "none",
                   "ini", "cfg", "json", "yaml", "rst", "fits"}

_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+(code-block|code|sourcecode|plot)::\s*(\S*)\s*$")
_SKIP = re.compile(r"^\s*\.\.\s+test-skip:\s*(.+?)\s*$")


@dataclass
class Block:
    """One code block of a page."""

    page: str
    line: int        # 1-based line of the first code line
    kind: str        # 'python', 'plot' or another language ('console', 'text', ...)
    code: str
    skip: str = None  # the reason, when the block is skipped
    start: int = 0    # 0-based lines: where the block's directive or paragraph starts ...
    end: int = 0      # ... and the line after its last code line
    output: str = None  # a Python block's printed output, when a text block shows it

    @property
    def first_line(self):
        return next((line.strip() for line in self.code.splitlines() if line.strip()), "")


def _indented_block(lines, start, indent):
    """The lines after ``start`` indented more than ``indent`` (options skipped): (line, code)."""
    i = start
    n = len(lines)
    # directive options (":caption: ...") and their continuation lines, up to a blank line
    while i < n and lines[i].strip() and lines[i].strip().startswith(":"):
        i += 1
        while (i < n and lines[i].strip() and not lines[i].strip().startswith(":")
               and _indent(lines[i]) > indent + 3):
            i += 1
    while i < n and not lines[i].strip():
        i += 1
    first = i
    while i < n and (not lines[i].strip() or _indent(lines[i]) > indent):
        i += 1
    body = lines[first:i]
    while body and not body[-1].strip():
        body.pop()
    return first + 1, textwrap.dedent("\n".join(body)), i


def _indent(line):
    return len(line) - len(line.lstrip())


def _is_python(code):
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    # a bare name ("astropsfmatch") or a number parses too, but is no example
    return not (len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)
                and isinstance(tree.body[0].value, ast.Name | ast.Constant))


def page_blocks(path):
    """The code blocks of an rst page, in order (doctest ``>>>`` lines excluded)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    blocks, skip, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        marked = _SKIP.match(line)
        if marked:
            skip = marked.group(1)
            i += 1
            continue
        directive = _DIRECTIVE.match(line)
        literal = (not directive and line.rstrip().endswith("::")
                   and not line.lstrip().startswith(".."))
        if not (directive or literal):
            i += 1
            continue
        opening = i
        if directive:
            indent, name, argument = directive.groups()
            indent = len(indent)
            if name == "plot" and argument:  # a plot made by a file: not a block here
                i += 1
                continue
            kind = "plot" if name == "plot" else (argument.lower() or "python")
        else:
            indent, kind = _indent(line), None
        start, code, i = _indented_block(lines, i + 1, indent)
        end = start + len(code.splitlines()) - 1
        if not code.strip() or code.lstrip().startswith(">>>"):
            skip = None
            continue
        if kind is None:  # a literal block: Python if it is
            starts_like_python = re.match(r"(from|import)\s+\w", code.lstrip())
            kind = "python" if _is_python(code) or starts_like_python else "text"
        elif kind in ("python", "python3", "py", "pycon"):
            kind = "python"
        blocks.append(Block(Path(path).name, start, kind, code, skip, opening, end))
        skip = None
    for block in blocks:
        if block.skip is None:
            block.skip = KNOWN_SKIPS.get((block.page, block.first_line))
    # a ".. code-block:: text" right after a Python block shows what it prints
    for block, following in pairwise(blocks):
        between = lines[block.end:following.start]
        if (block.kind == "python" and following.kind == "text"
                and lines[following.start].lstrip().startswith(".. code-block::")
                and not any(line.strip() for line in between)):
            block.output = following.code + "\n"
    return blocks


def doctest_examples(path):
    """``(line, source, raises)`` of each doctest example of a page that doctest would run.

    ``raises`` is True for an example whose expected output is a traceback.
    """
    text = Path(path).read_text(encoding="utf-8")
    examples = doctest.DocTestParser().get_examples(text)
    return [(e.lineno + 1, e.source, e.exc_msg is not None) for e in examples
            if not e.options.get(doctest.SKIP)]


def page_script(path):
    """The runnable units of a page: ``[{'file', 'line', 'code', 'fresh', 'raises'}]``.

    Doctest examples are included only before the page's last runnable
    literal or code block (they define what those blocks use); the code of
    a plot directive runs in a namespace of its own, as the directive runs it.
    The units are in page order.
    """
    blocks = [b for b in page_blocks(path) if b.kind in ("python", "plot") and not b.skip]
    if not blocks:
        return []
    shared = [b for b in blocks if b.kind == "python"]
    last = shared[-1].line if shared else 0
    path = Path(path).resolve()
    units = [{"file": str(path), "line": line, "code": source, "fresh": False, "raises": raises,
              "output": None} for line, source, raises in doctest_examples(path) if line < last]
    units += [{"file": str(path), "line": b.line, "code": b.code, "fresh": b.kind == "plot",
               "raises": False, "output": b.output} for b in blocks]
    return sorted(units, key=lambda unit: unit["line"])


RUNNER = '''\
import contextlib, io, json, os, sys


def run_one(unit, namespace):
    # blank lines first, so that a traceback gives the line in the page
    code = compile("\\n" * (unit["line"] - 1) + unit["code"], unit["file"], "exec")
    here = os.getcwd()
    if unit["fresh"]:  # a plot: its own namespace, in the page's folder, as Sphinx runs it
        namespace = {"__name__": "__main__"}
        os.chdir(os.path.dirname(unit["file"]))
    try:
        exec(code, namespace)
    except Exception:
        if not unit["raises"]:  # a doctest that shows a traceback raises
            raise
    else:
        if unit["raises"]:
            raise AssertionError(f"{unit['file']}, line {unit['line']}: no exception")
    finally:
        os.chdir(here)
    if unit["fresh"]:
        import matplotlib.pyplot as plt
        plt.close("all")


def run(units):
    namespace = {"__name__": "__main__"}
    printed = []
    for unit in units:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                run_one(unit, namespace)
        finally:
            sys.stdout.write(out.getvalue())
        printed.append(out.getvalue())
    return printed


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        printed = run(json.load(f))
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(printed, f)
'''


def run_units(units, directory, *, timeout=300):
    """Run the units as one script in a fresh interpreter in ``directory``."""
    directory = Path(directory)
    (directory / "units.json").write_text(json.dumps(units), encoding="utf-8")
    (directory / "run_examples.py").write_text(RUNNER, encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, "-W", "error", "run_examples.py", "units.json",
                             "printed.json"], cwd=directory, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    if result.returncode == 0:
        printed = json.loads((directory / "printed.json").read_text(encoding="utf-8"))
        checker = doctest.OutputChecker()
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        for unit, got in zip(units, printed, strict=True):
            want = unit.get("output")
            if want is not None and not checker.check_output(want, got, flags):
                result.returncode = 1
                result.stderr += (f"{unit['file']}, line {unit['line']}: the block printed\n"
                                  f"{got}\nbut the page shows\n{want}")
    return result


PAGES = sorted(DOCS.glob("*.rst")) if DOCS.exists() else []
RUNNABLE = [page for page in PAGES if page_script(page)]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.name)
def test_page_examples_run(page, tmp_path):
    """The page's Python blocks run, in order, in a fresh interpreter."""
    result = run_units(page_script(page), tmp_path)
    assert result.returncode == 0, (
        f"the examples of docs/{page.name} failed:\n{result.stdout}\n{result.stderr}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_skips_have_reasons_and_python_parses(page):
    for block in page_blocks(page):
        if block.skip is not None:
            assert len(block.skip) > 10, f"{page.name}:{block.line}: say why it is skipped"
        if block.kind in ("python", "plot"):
            ast.parse(block.code, filename=f"{page.name}:{block.line}")
        else:
            assert block.kind in OTHER_LANGUAGES | {"text"}, (
                f"{page.name}:{block.line}: unknown language {block.kind!r}")


def test_few_blocks_skipped():
    skipped = [(b.page, b.line, b.skip) for page in PAGES for b in page_blocks(page) if b.skip]
    assert len(skipped) <= 2, skipped


def test_known_skips_still_exist():
    """KNOWN_SKIPS names blocks that exist (drop an entry when its block is gone or fixed)."""
    for page, first_line in KNOWN_SKIPS:
        if not (DOCS / page).exists():
            continue
        firsts = [b.first_line for b in page_blocks(DOCS / page)]
        assert first_line in firsts, f"{page}: no block starts with {first_line!r}"


class TestParser:
    """The block finder itself, on a small page."""

    PAGE = textwrap.dedent("""\
        Title
        =====

        >>> x = 1

        Use it::

            y = x + 1

        Output::

            astropsfmatch 0.1 demo: 1024x1024 synthetic exposure

        .. code-block:: console

            $ astropsfmatch demo

        .. test-skip: needs a cluster of our own

        .. code-block:: python
           :caption: cluster

           from dask.distributed import Client
           client = Client("tcp://scheduler:8786")

        .. plot::
           :include-source: false

           import matplotlib.pyplot as plt
           plt.plot([y, 2])

        ::

            assert y == 2
        """)

    def test_blocks(self, tmp_path):
        path = tmp_path / "page.rst"
        path.write_text(self.PAGE)
        blocks = page_blocks(path)
        assert [(b.kind, b.line, b.skip is not None) for b in blocks] == [
            ("python", 8, False), ("text", 12, False), ("console", 16, False),
            ("python", 23, True), ("plot", 29, False), ("python", 34, False)]
        assert blocks[3].skip == "needs a cluster of our own"
        assert blocks[3].code.startswith("from dask")

    def test_script_runs_and_failures_name_the_line(self, tmp_path):
        path = tmp_path / "page.rst"
        page = self.PAGE.replace("plt.plot([y, 2])", "plt.plot([1, 2])")
        path.write_text(page)
        assert run_units(page_script(path), tmp_path).returncode == 0
        path.write_text(page.replace("assert y == 2", "assert y == 3"))
        result = run_units(page_script(path), tmp_path)
        assert result.returncode == 1
        assert f'File "{path.resolve()}", line 34' in result.stderr

    def test_shown_output_is_checked(self, tmp_path):
        page = textwrap.dedent("""\
            .. code-block:: python

                print(f"{2 / 3:.3f}", "and", list(range(5)))

            .. code-block:: text

                0.667 and [0, 1, ...]
            """)
        path = tmp_path / "page.rst"
        path.write_text(page)
        assert page_blocks(path)[0].output == "0.667 and [0, 1, ...]\n"
        assert run_units(page_script(path), tmp_path).returncode == 0
        path.write_text(page.replace("0.667", "0.666"))
        result = run_units(page_script(path), tmp_path)
        assert result.returncode == 1
        assert "but the page shows\n0.666 and [0, 1, ...]" in result.stderr
