"""Results and figures written by the notebooks: JSON numbers, Markdown tables, PNG and PDF figures.

Layout: `results/<tier>/<notebook>.json`, `figures/<tier>/<name>.{png,pdf}` and `results/<tier>/SUMMARY.md`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mack import __version__
from mack.config import figures_root, results_root
from mack.io import atomic_write, write_json

logger = logging.getLogger(__name__)

TIERS = ("synthetic", "coco-mini", "paper")


def check_tier(tier: str) -> str:
    """Return `tier` unchanged, or raise ValueError listing the valid tiers."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}: use one of {', '.join(TIERS)}")
    return tier


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """Format a table as GitHub Markdown: whole-number columns as integers, other floats with
    `digits` significant digits, so that a small effect (0.674 against 0.720) stays visible."""
    table = table.copy()
    for column in table.columns:
        values = table[column]
        if pd.api.types.is_float_dtype(values) and values.notna().all():
            if (values == values.round()).all():
                table[column] = [str(int(value)) for value in values]
            else:
                table[column] = [f"{value:.{digits}g}" for value in values]
        elif pd.api.types.is_integer_dtype(values):
            table[column] = [str(value) for value in values]
    return table.to_markdown(stralign="right")


def save_results(
    tier: str,
    notebook: str,
    tables: Mapping[str, pd.DataFrame],
    values: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write a notebook's tables and scalar values to results/<tier>/<notebook>.json, atomically.

    Each table is stored with its index, columns and rows so that `load_results` rebuilds it exactly.
    """
    check_tier(tier)
    payload = {
        "notebook": notebook,
        "tier": tier,
        "mack_version": __version__,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tables": {
            name: json.loads(table.to_json(orient="split")) for name, table in tables.items()
        },
        "values": dict(values or {}),
        "notes": list(notes or []),
    }
    path = results_root(tier) / f"{notebook}.json"
    write_json(path, payload)
    logger.info("wrote %s", path)
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results JSON file; its tables come back as DataFrames."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        tables = payload["tables"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: not a mack results file ({error}); rerun its notebook"
        ) from error
    payload["tables"] = {
        name: pd.DataFrame(t["data"], index=t["index"], columns=t["columns"])
        for name, t in tables.items()
    }
    return payload


def save_figure(figure, tier: str, name: str) -> list[Path]:
    """Save a matplotlib figure as figures/<tier>/<name>.png (150 dpi) and .pdf, atomically."""
    check_tier(tier)
    paths = []
    # No creation date in the PDF, so that a rerun with the same results writes the same bytes.
    for extension, options in (
        ("png", {"dpi": 150}),
        ("pdf", {"metadata": {"CreationDate": None}}),
    ):
        path = figures_root(tier) / f"{name}.{extension}"
        with atomic_write(path, "wb") as handle:
            figure.savefig(handle, format=extension, bbox_inches="tight", **options)
        paths.append(path)
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def write_summary(tier: str) -> Path:
    """Gather every table of results/<tier>/*.json into results/<tier>/SUMMARY.md."""
    check_tier(tier)
    root = results_root(tier)
    sections = [f"# Results on the `{tier}` tier\n", "Each section is one notebook's output.\n"]
    for path in sorted(root.glob("*.json")):
        results = load_results(path)
        sections.append(f"## {results['notebook']}\n")
        for name, table in results["tables"].items():
            sections.append(f"### {name}\n\n{markdown_table(table)}\n")
        for note in results["notes"]:
            sections.append(f"- {note}")
        sections.append("")
    path = root / "SUMMARY.md"
    with atomic_write(path, "w") as handle:
        handle.write("\n".join(sections) + "\n")
    logger.info("wrote %s", path)
    return path
