"""The documentation site builds with warnings as errors (API pages from the docstrings,
benchmark tables from benchmarks/results/)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason='the docs build needs the "docs" extra: pip install -e ".[docs]"')
    pytest.importorskip("mkdocstrings", reason='the docs build needs the "docs" extra')
    pytest.importorskip("pymdownx", reason='the docs build needs the "docs" extra')
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "api" / "index.html").stat().st_size > 10_000
