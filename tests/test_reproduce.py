"""Tests of mack.reproduce: when a notebook run can be skipped."""

from __future__ import annotations

from pathlib import Path

from mack.reproduce import run_fingerprint


def write_package(root: Path, source: str) -> Path:
    package = root / "pkg"
    (package / "sub").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "module.py").write_text(source)
    return package


def test_fingerprint_follows_package_source(tmp_path: Path) -> None:
    notebook = tmp_path / "01_example.ipynb"
    notebook.write_text('{"cells": []}')
    package = write_package(tmp_path, "VALUE = 1\n")
    first = run_fingerprint(notebook, {"tier": "synthetic"}, package)

    assert run_fingerprint(notebook, {"tier": "synthetic"}, package) == first
    assert run_fingerprint(notebook, {"tier": "coco-mini"}, package) != first

    write_package(tmp_path, "VALUE = 2\n")
    assert run_fingerprint(notebook, {"tier": "synthetic"}, package) != first


def test_fingerprint_follows_notebook(tmp_path: Path) -> None:
    notebook = tmp_path / "01_example.ipynb"
    package = write_package(tmp_path, "VALUE = 1\n")
    notebook.write_text('{"cells": []}')
    first = run_fingerprint(notebook, {}, package)

    notebook.write_text('{"cells": [{"source": "1"}]}')

    assert run_fingerprint(notebook, {}, package) != first
