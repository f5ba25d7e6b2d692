"""Tests of mack.reproduce: when a notebook run can be skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_failed_rerun_drops_old_success(tmp_path: Path, monkeypatch) -> None:
    """After a failed forced run, the next run must execute the notebook again."""
    from mack import reproduce as module

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_example.ipynb").write_text('{"cells": []}')
    monkeypatch.setattr(module, "notebook_paths", lambda: [notebooks / "01_example.ipynb"])
    monkeypatch.setattr(module, "BUILD_DIR", tmp_path / "build")
    monkeypatch.setattr(module, "write_summary", lambda tier: None)
    calls = []

    def fake_run(notebook, output, parameters, timeout, fail=False):
        calls.append(notebook.name)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("executed")
        if fail:
            raise module.NotebookFailedError("cell 1 failed")

    monkeypatch.setattr(module, "run_notebook", fake_run)
    module.reproduce("synthetic")
    assert calls == ["01_example.ipynb"]

    monkeypatch.setattr(module, "run_notebook", lambda *args: fake_run(*args, fail=True))
    with pytest.raises(module.NotebookFailedError):
        module.reproduce("synthetic", force=True)

    monkeypatch.setattr(module, "run_notebook", fake_run)
    records = module.reproduce("synthetic")
    assert records[0]["skipped"] is False
    assert calls == ["01_example.ipynb"] * 3


def test_saved_figure_bytes_repeat(tmp_path: Path, monkeypatch) -> None:
    """Saving the same figure twice writes the same PNG and PDF bytes (no creation date)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mack import report

    monkeypatch.setattr(report, "figures_root", lambda tier: tmp_path / tier)
    figure, axes = plt.subplots()
    axes.plot([1, 2, 3])

    first = [path.read_bytes() for path in report.save_figure(figure, "synthetic", "example")]
    second = [path.read_bytes() for path in report.save_figure(figure, "synthetic", "example")]
    plt.close(figure)

    assert first == second
    assert b"CreationDate" not in first[1]  # the PDF, where a date would change every run
