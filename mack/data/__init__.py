"""Loaders for the public file formats that MACK reads (COCO, Visual Genome, bottom-up TSV, SCAN precomp)."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data file is malformed, truncated or inconsistent. The message names the file and position."""


# Re-exports below the error class: the submodules import DataFormatError from this package.
from mack.data.bottomup import BottomUpRow, iter_bottomup_tsv, write_bottomup_tsv  # noqa: E402
from mack.data.coco import CocoBox, CocoImage, CocoSet, coco_mini_paths, load_coco  # noqa: E402
from mack.data.precomp import load_precomp, write_precomp  # noqa: E402
from mack.data.similarity import load_similarity, save_similarity  # noqa: E402
from mack.data.vg import (  # noqa: E402
    VGImage,
    VGObject,
    WordRegions,
    assign_words_to_detections,
    iter_vg_objects,
    load_image_data,
    word_regions,
)

__all__ = [
    "BottomUpRow",
    "CocoBox",
    "CocoImage",
    "CocoSet",
    "DataFormatError",
    "VGImage",
    "VGObject",
    "WordRegions",
    "assign_words_to_detections",
    "coco_mini_paths",
    "iter_bottomup_tsv",
    "iter_vg_objects",
    "load_coco",
    "load_image_data",
    "load_precomp",
    "load_similarity",
    "save_similarity",
    "word_regions",
    "write_bottomup_tsv",
    "write_precomp",
]
