"""Base-model similarity matrices: one (n_images, n_texts) .npy array per model and dataset.

Row i is image i and column j is caption j, in the same order as the precomp files, so caption j
belongs to image j // 5. Re-ranking (section 3.4 of the MACK paper) reads these matrices.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mack.data import DataFormatError
from mack.io import atomic_write

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 1024


def load_similarity(
    path: str | os.PathLike, n_images: int | None = None, n_texts: int | None = None
) -> np.ndarray:
    """Load and check a similarity matrix: returns sims (n_images, n_texts), float32 or float64.

    n_images / n_texts: expected sizes, checked when given. A matrix stored texts x images is
    reported as transposed. NaN or infinite scores are errors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: similarity matrix not found. Check the path.")
    try:
        sims = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataFormatError(
            f"{path}: cannot read the .npy file ({error}). It may be truncated: re-export it."
        ) from error

    _check_similarity(sims, str(path), n_images, n_texts)
    logger.info("similarity %s: %d images x %d texts", path, *sims.shape)
    return sims


def save_similarity(path: str | os.PathLike, sims: np.ndarray) -> Path:
    """Check sims (n_images, n_texts) and write it to a .npy file atomically; returns the path."""
    path = Path(path)
    sims = np.asarray(sims)
    _check_similarity(sims, f"similarity for {path}", None, None)
    with atomic_write(path, "wb") as handle:
        np.save(handle, sims, allow_pickle=False)
    return path


def _check_similarity(
    sims: np.ndarray, name: str, n_images: int | None, n_texts: int | None
) -> None:
    if sims.ndim != 2:
        raise DataFormatError(
            f"{name}: shape {sims.shape}, expected 2 dimensions (n_images, n_texts)."
        )
    if not np.issubdtype(sims.dtype, np.floating):
        raise DataFormatError(f"{name}: dtype {sims.dtype}, expected float32 or float64 scores.")

    expected = (
        n_images if n_images is not None else sims.shape[0],
        n_texts if n_texts is not None else sims.shape[1],
    )
    if sims.shape != expected:
        hint = (
            "Pass sims.T: the matrix looks stored texts x images."
            if sims.shape == expected[::-1]
            else ("Check that the matrix was computed on the same test split.")
        )
        raise DataFormatError(
            f"{name}: shape {sims.shape}, expected (n_images, n_texts) = {expected}. {hint}"
        )

    for start in range(0, len(sims), _CHUNK_ROWS):
        finite = np.isfinite(sims[start : start + _CHUNK_ROWS])
        if not finite.all():
            row, column = np.argwhere(~finite)[0]
            value = sims[start + row, column]
            raise DataFormatError(
                f"{name}: score at image {start + row}, text {column} is {value}. "
                "Recompute the matrix; NaN or infinite scores cannot be ranked."
            )
