"""Skip markers and checks shared by the test modules, for the data a test needs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mack import config

needs_real_data = pytest.mark.skipif(
    not config.has_real_data(), reason="real sample data folder not found"
)


def require_tagger() -> Callable:
    """Return the project's cached POS tagger's tag function, or skip without NLTK data."""
    from mack.text import NLTKDataMissingError, load_tagger

    try:
        return load_tagger().tag
    except NLTKDataMissingError:
        pytest.skip("NLTK tagger data missing; set NLTK_DATA to the folder that contains it")


def vg_samples() -> Path:
    """Return the folder of the real Visual Genome sample files."""
    return config.data_root() / "vg" / "samples"
