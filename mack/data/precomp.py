"""SCAN "precomp" layout: `{split}_ims.npy` region features and `{split}_caps.txt` captions.

Caption j belongs to image j // captions_per_image (5 for Flickr30k and MSCOCO). The features
file is opened with mmap_mode="r", so a 1.5 GB MSCOCO 5K test file costs no memory until read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mack.data import DataFormatError
from mack.io import atomic_write

logger = logging.getLogger(__name__)

FINITE_CHECK_ROWS = 64
_CHUNK_ROWS = 256


def precomp_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """Return the paths (root/{split}_ims.npy, root/{split}_caps.txt)."""
    root = Path(root)
    return root / f"{split}_ims.npy", root / f"{split}_caps.txt"


def load_precomp(
    root: str | os.PathLike,
    split: str,
    captions_per_image: int = 5,
    *,
    rows_per_image: int = 1,
    check_all_rows: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Open a precomp split and check it: returns (features, captions).

    features: (n_images, n_regions, F) float32, a read-only memmap (pass it to
    ImageRegions.from_dense). captions: n_images * captions_per_image strings.
    rows_per_image: 5 for files that repeat each image once per caption (some VSE++ train
    files); every 5th row is then kept. The finiteness check reads FINITE_CHECK_ROWS images
    (first, last and a seeded sample) unless check_all_rows.
    """
    ims_path, caps_path = precomp_paths(root, split)
    for path in (ims_path, caps_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: precomp file not found. Check root and split ({split!r})."
            )

    features = _open_features(ims_path)
    captions = read_captions(caps_path)
    features = _select_rows(features, rows_per_image, len(captions), captions_per_image, ims_path)
    _check_counts(len(features), len(captions), captions_per_image, ims_path, caps_path)
    _check_finite(features, ims_path, check_all_rows)

    logger.info(
        "precomp %s: %d images x %d regions x %d, %d captions",
        split,
        *features.shape,
        len(captions),
    )
    return features, captions


def _open_features(path: Path) -> np.ndarray:
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataFormatError(
            f"{path}: cannot read the .npy file ({error}). It may be truncated: re-download or re-export it."
        ) from error
    if features.ndim != 3:
        raise DataFormatError(
            f"{path}: shape {features.shape}, expected 3 dimensions (n_images, n_regions, F). "
            "Export the features as one (n_regions, F) block per image."
        )
    if features.dtype != np.float32:
        raise DataFormatError(
            f"{path}: dtype {features.dtype}, expected float32. "
            "Convert it with np.save(path, np.load(path).astype(np.float32))."
        )
    return features


def _select_rows(
    features: np.ndarray, rows_per_image: int, n_captions: int, captions_per_image: int, path: Path
) -> np.ndarray:
    if rows_per_image == 1 and captions_per_image > 1 and len(features) == n_captions:
        raise DataFormatError(
            f"{path}: {len(features)} feature rows, one per caption. "
            f"If each image is repeated once per caption, pass rows_per_image={captions_per_image}."
        )
    if rows_per_image == 1:
        return features
    if len(features) % rows_per_image:
        raise DataFormatError(
            f"{path}: {len(features)} feature rows is not a multiple of rows_per_image={rows_per_image}. "
            "Check rows_per_image."
        )
    return features[::rows_per_image]


def _check_counts(
    n_images: int, n_captions: int, per_image: int, ims_path: Path, caps_path: Path
) -> None:
    if n_captions != per_image * n_images:
        raise DataFormatError(
            f"{caps_path}: {n_captions} captions, but {ims_path} has {n_images} images and "
            f"{per_image} captions per image needs {per_image * n_images}. "
            "Check that both files come from the same split, and captions_per_image."
        )


def _check_finite(features: np.ndarray, path: Path, check_all_rows: bool) -> None:
    n_images = len(features)
    if check_all_rows or n_images <= FINITE_CHECK_ROWS:
        rows = np.arange(n_images)
    else:
        sample = (
            np.random.default_rng(0).choice(n_images - 2, FINITE_CHECK_ROWS - 2, replace=False) + 1
        )
        rows = np.unique(np.concatenate([[0, n_images - 1], sample]))

    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[start : start + _CHUNK_ROWS]
        finite = np.isfinite(features[chunk]).all(axis=(1, 2))
        if not finite.all():
            bad = int(chunk[np.flatnonzero(~finite)[0]])
            raise DataFormatError(
                f"{path}: image row {bad} contains NaN or infinite values. Re-extract that image's features."
            )


def read_captions(path: str | os.PathLike) -> list[str]:
    """Read one caption per line; the last line may lack its newline. Empty lines are errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(
            f"{path}, byte offset {error.start}: invalid UTF-8 ({error.reason}). Re-save the file as UTF-8."
        ) from error

    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    captions = [line.strip() for line in lines]
    for number, caption in enumerate(captions, start=1):
        if not caption:
            raise DataFormatError(
                f"{path}, line {number}: empty caption. Every line must hold one caption; "
                "remove blank lines (a blank line shifts every later caption to the wrong image)."
            )
    return captions


def write_precomp(
    root: str | os.PathLike,
    split: str,
    features: np.ndarray,
    captions: Sequence[str],
    captions_per_image: int = 5,
) -> tuple[Path, Path]:
    """Write `{split}_ims.npy` and `{split}_caps.txt` atomically and return their paths.

    features: (n_images, n_regions, F) float32, finite. captions: n_images * captions_per_image
    strings without line breaks, caption j describing image j // captions_per_image.
    """
    ims_path, caps_path = precomp_paths(root, split)
    features = np.asarray(features)
    if features.ndim != 3 or features.dtype != np.float32:
        raise ValueError(
            f"features for {ims_path}: shape {features.shape} dtype {features.dtype}, "
            "expected (n_images, n_regions, F) float32"
        )
    _check_finite(features, ims_path, check_all_rows=True)
    _check_counts(len(features), len(captions), captions_per_image, ims_path, caps_path)
    for index, caption in enumerate(captions):
        if (
            not isinstance(caption, str)
            or not caption.strip()
            or "\n" in caption
            or "\r" in caption
        ):
            raise ValueError(
                f"caption {index} for {caps_path} is {caption!r}: expected a non-empty string "
                "without line breaks"
            )

    with atomic_write(ims_path, "wb") as handle:
        np.save(handle, features, allow_pickle=False)
    with atomic_write(caps_path, "wb") as handle:
        handle.write("".join(f"{caption}\n" for caption in captions).encode("utf-8"))
    logger.info("wrote %s and %s (%d images)", ims_path, caps_path, len(features))
    return ims_path, caps_path
