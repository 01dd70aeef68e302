"""README.md: its commands are the ones CI and the docs give, and its Python runs as written.

The Python blocks run as one script in a fresh interpreter in an empty
temporary directory (see test_docs.py); the demo command of the first
block runs twice in a row, as a new user would.
"""

import re
import shutil
import subprocess
import sys

import pytest
from test_docs import DOCS, ROOT, run_units

README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(not README.exists(), reason="README.md is not next to tests/")

_FENCE = re.compile(r"^```(\w*)\s*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def fenced_blocks(text):
    """``(language, line, code)`` of each fenced block of a Markdown text."""
    return [(m.group(1).lower(), text.count("\n", 0, m.start(2)) + 1, m.group(2))
            for m in _FENCE.finditer(text)]


def first_commands():
    """The commands of the README's first block, without their comments."""
    language, _, code = fenced_blocks(README.read_text(encoding="utf-8"))[0]
    assert language in ("bash", "sh", "console")
    return [line.split("  #")[0].strip() for line in code.splitlines() if line.strip()]


def test_opens_with_install_demo_and_tests():
    assert first_commands() == [
        'pip install ".[all]" && astropsfmatch demo --overwrite',
        "python -m pip install tox && python -m tox -e py311-test",
    ]


def test_ci_and_install_page_run_the_same_commands():
    install, tests = first_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci
    page = (DOCS / "install.rst").read_text(encoding="utf-8")
    assert tests in page
    assert 'pip install ".[all]"' in page and "astropsfmatch demo --overwrite" in page


def test_every_block_is_known():
    languages = [language for language, _, _ in fenced_blocks(README.read_text(encoding="utf-8"))]
    assert set(languages) <= {"bash", "python"}
    assert languages.count("python") >= 1


def test_python_runs_as_written(tmp_path):
    text = README.read_text(encoding="utf-8")
    units = [{"file": str(README), "line": line, "code": code, "fresh": False, "raises": False,
              "output": None}
             for language, line, code in fenced_blocks(text) if language == "python"]
    result = run_units(units, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"


def test_demo_runs_twice_in_a_row(tmp_path):
    """The README's ``astropsfmatch demo --overwrite``, twice in one folder.

    On a small image and without the figures, which take most of the time
    (tests/test_demo.py draws them): what is tested here is that the second
    run replaces the first one's files.
    """
    command = first_commands()[0].split("&&")[1].split()
    assert command[0] == "astropsfmatch"
    executable = shutil.which("astropsfmatch")
    start = [executable] if executable else [sys.executable, "-m", "astropsfmatch"]
    for run in (1, 2):
        result = subprocess.run(start + command[1:] + ["--size", "128", "--no-figures"],
                                cwd=tmp_path, capture_output=True,
                                text=True, timeout=300, check=False)
        assert result.returncode == 0, f"run {run}: {result.stdout}\n{result.stderr}"
    written = sorted(p.name for p in (tmp_path / "astropsfmatch-demo").iterdir())
    assert {"science.fits", "psf.fits", "matched.fits", "kernel.fits"} <= set(written)
    assert "wrote" in result.stdout
