"""Static checks of every notebook in notebooks/: stored without outputs, one papermill parameters
cell with `tier`, a first cell naming the paper's Table or Figure, a closing pointer to
docs/fidelity.md, and no function definitions (computation belongs in the package)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from mack.config import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


def notebook_id(path: Path) -> str:
    return path.stem


def read(path: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    return notebook


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, f"no notebooks found in {PROJECT_ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_has_no_outputs(path: Path) -> None:
    notebook = read(path)

    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has outputs"
            assert cell.execution_count is None, f"cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_kernel_is_python3(path: Path) -> None:
    assert read(path).metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_has_one_parameters_cell_with_tier(path: Path) -> None:
    notebook = read(path)

    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]

    assert len(tagged) == 1
    assert tagged[0].cell_type == "code"
    assert re.search(r"^tier\s*=\s*\"synthetic\"", tagged[0].source, re.MULTILINE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_first_cell_names_table_or_figure(path: Path) -> None:
    first = read(path).cells[0]

    assert first.cell_type == "markdown"
    assert re.search(r"\b(Table|Figure) \d", first.source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_ends_with_fidelity_pointer(path: Path) -> None:
    last = read(path).cells[-1]

    assert last.cell_type == "markdown"
    assert "docs/fidelity.md" in last.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_defines_no_functions(path: Path) -> None:
    notebook = read(path)

    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert not re.search(r"^\s*(async\s+)?def ", cell.source, re.MULTILINE), (
                f"cell {index} defines a function; move it into the mack package"
            )
