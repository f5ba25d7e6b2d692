"""Locations of the data, the cache and the outputs, each overridable by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DATA_ENV = "MACK_DATA"
CACHE_ENV = "MACK_CACHE"

DATA_HELP = (
    "Set {env} or pass data_root= to the folder that holds the real sample data "
    "(coco-mini/, captions/, vg/, nltk_data/). For the full COCO download see "
    "`make data-coco-mini` and docs/data.md."
)


class DataNotFoundError(FileNotFoundError):
    """A required data file or folder does not exist where it was looked for."""


def data_root(path: str | os.PathLike | None = None, *, must_exist: bool = True) -> Path:
    """Return the real-data root: `path`, else $MACK_DATA, else ../shared/data beside the project.

    Raises DataNotFoundError naming every place looked at when `must_exist` and none exists.
    """
    candidates: list[Path] = []
    if path is not None:
        candidates.append(Path(path))
    elif os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]))
    else:
        candidates.append(PROJECT_ROOT.parent / "shared" / "data")

    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    if not must_exist:
        return candidates[0]
    looked = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(
        f"data folder not found (looked in: {looked}). " + DATA_HELP.format(env=DATA_ENV)
    )


def has_real_data(path: str | os.PathLike | None = None) -> bool:
    """Return True when the real-data root exists."""
    return data_root(path, must_exist=False).is_dir()


def cache_root(path: str | os.PathLike | None = None) -> Path:
    """Return the cache folder for derived artefacts (features, knowledge, W): `path`, $MACK_CACHE or data/cache."""
    if path is not None:
        root = Path(path)
    elif os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    else:
        root = PROJECT_ROOT / "data" / "cache"
    root.mkdir(parents=True, exist_ok=True)
    return root


def results_root(tier: str) -> Path:
    """Return results/<tier>/, created if needed."""
    root = PROJECT_ROOT / "results" / tier
    root.mkdir(parents=True, exist_ok=True)
    return root


def figures_root(tier: str) -> Path:
    """Return figures/<tier>/, created if needed."""
    root = PROJECT_ROOT / "figures" / tier
    root.mkdir(parents=True, exist_ok=True)
    return root
