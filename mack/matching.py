"""Knowledge-based unpaired matching (eq. 4): cosine of text units with image regions, then pooling.

A text is a list of units (a noun and its adjectives). A unit's feature is the plain mean of the
raw prototypes of its words. The score of an image and a text is the cosine between every unit and
every region, reduced over the image's regions and then over the text's units. The pooling name is
<reduction over regions>_<reduction over units>, so "max_mean" is the pooling rho of MACK
(Huang, Wang, Zeng and Wang, "MACK: Multimodal Aligned Conceptual Knowledge for Unpaired
Image-text Matching").

`score_matrix` is the fast exact path and `reference_score_matrix` is a per-pair loop kept as the
test oracle. Both define the cosine with a zero-norm unit or region as 0.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from mack.knowledge import Knowledge
    from mack.text import ParsedText, Unit

logger = logging.getLogger(__name__)

POOLINGS = ("max_mean", "mean_mean", "mean_max", "max_max")
PROTOTYPES = ("mean", "random_region")
TRANSFORMS = ("both", "words")
EMPTY_SCORE = -1.0

# Working memory that score_matrix and score_pairs aim for when chunk_size is None.
MEMORY_BUDGET_BYTES = 512 * 2**20

_NORM_UNITS_PER_STEP = 4096


class MatchingInputError(ValueError):
    """Invalid input to matching: unknown word, non-finite value, wrong shape or unknown option."""


@dataclass
class ImageRegions:
    """A padded batch of images.

    features: (n_images, max_regions, F) float32, may be a np.memmap. Rows at or beyond counts[i]
        are padding and never enter a score.
    counts: (n_images,) int64, number of valid regions per image.
    """

    features: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.features.ndim != 3:
            raise MatchingInputError(
                f"ImageRegions.features must be (n_images, max_regions, F), got shape {self.features.shape}"
            )
        counts = np.asarray(self.counts)
        n_images, max_regions, _ = self.features.shape
        if counts.shape != (n_images,) or not np.issubdtype(counts.dtype, np.integer):
            raise MatchingInputError(
                f"ImageRegions.counts must be ({n_images},) integers, got shape {counts.shape} "
                f"dtype {counts.dtype}"
            )
        bad = np.flatnonzero((counts < 0) | (counts > max_regions))
        if bad.size:
            raise MatchingInputError(
                f"ImageRegions.counts[{bad[0]}] = {counts[bad[0]]} is outside 0..{max_regions} "
                "(max_regions). Fix the counts or the padding of features"
            )
        self.counts = counts.astype(np.int64)

    @classmethod
    def from_list(cls, arrays: Sequence[np.ndarray]) -> ImageRegions:
        """Pad per-image arrays `(n_i, F)` into one float32 batch. An array may have 0 rows."""
        if len(arrays) == 0:
            raise MatchingInputError("ImageRegions.from_list needs at least one image array")
        arrays = [np.asarray(array) for array in arrays]
        for i, array in enumerate(arrays):
            if array.ndim != 2 or array.shape[1] != arrays[0].shape[1]:
                raise MatchingInputError(
                    f"image {i} has regions of shape {array.shape}, expected (n_regions, "
                    f"{arrays[0].shape[1]}) like image 0"
                )
        counts = np.array([len(array) for array in arrays], dtype=np.int64)

        features = np.zeros((len(arrays), counts.max(), arrays[0].shape[1]), dtype=np.float32)
        for i, array in enumerate(arrays):
            features[i, : len(array)] = array
        return cls(features, counts)

    @classmethod
    def from_dense(cls, features: np.ndarray) -> ImageRegions:
        """Wrap `(n_images, n_regions, F)` features in which every region is valid."""
        features = np.asarray(features)
        if features.ndim != 3:
            raise MatchingInputError(
                f"from_dense needs (n_images, n_regions, F) features, got shape {features.shape}"
            )
        counts = np.full(features.shape[0], features.shape[1], dtype=np.int64)
        return cls(features, counts)

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    @property
    def max_regions(self) -> int:
        return self.features.shape[1]

    def valid_regions(self, i: int) -> np.ndarray:
        """Return the `(counts[i], F)` valid region features of image `i`."""
        return np.asarray(self.features[i, : self.counts[i]])


# ---------------------------------------------------------------- options and text units


def _check_options(
    knowledge: Knowledge,
    images: ImageRegions,
    pooling: str,
    prototype: str,
    W: np.ndarray | None,
    transform: str,
) -> tuple[str, str]:
    """Validate the options and return (reduction over regions, reduction over units)."""
    if pooling not in POOLINGS:
        raise MatchingInputError(f"pooling={pooling!r} is not one of {POOLINGS}")
    if prototype not in PROTOTYPES:
        raise MatchingInputError(f"prototype={prototype!r} is not one of {PROTOTYPES}")
    if transform not in TRANSFORMS:
        raise MatchingInputError(f"transform={transform!r} is not one of {TRANSFORMS}")
    if images.dim != knowledge.dim:
        raise MatchingInputError(
            f"image regions have {images.dim} dims but the knowledge prototypes have "
            f"{knowledge.dim}. Use region features from the encoder that built the knowledge"
        )
    if W is not None:
        W = np.asarray(W)
        if W.shape != (knowledge.dim, knowledge.dim):
            raise MatchingInputError(
                f"W has shape {W.shape}, expected ({knowledge.dim}, {knowledge.dim}) to match the "
                "knowledge dim"
            )
        if not np.isfinite(W).all():
            raise MatchingInputError("W contains NaN or inf. Retrain or reload the fine-tuned W")
    region_reduction, unit_reduction = pooling.split("_")
    return region_reduction, unit_reduction


def _prototype_table(knowledge: Knowledge, prototype: str) -> np.ndarray:
    """Return the (K, F) table whose rows represent the words: prototypes or random regions."""
    if prototype == "mean":
        return knowledge.prototypes
    if knowledge.random_regions is None:
        raise MatchingInputError(
            "prototype='random_region' needs knowledge.random_regions, which this knowledge did not "
            "record. Rebuild the knowledge with KnowledgeBuilder"
        )
    return knowledge.random_regions


def _unit_words(unit: Unit, use_adjectives: bool) -> tuple[str, ...]:
    if use_adjectives:
        return (unit.noun, *unit.adjectives)
    return (unit.noun,)


def _word_row(index: dict[str, int], word: str, text_id: int | None) -> int:
    row = index.get(word)
    if row is None:
        location = "" if text_id is None else f" (text {text_id})"
        raise MatchingInputError(
            f"unit word {word!r}{location} is not in the knowledge. Parse the texts with a "
            "TextParser built from this same knowledge"
        )
    return row


def _check_finite_words(vectors: np.ndarray, words: Sequence[str], table_name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise MatchingInputError(
            f"the {table_name} of word {words[bad[0]]!r} contains NaN or inf "
            f"({bad.size} such words). Rebuild the knowledge"
        )


def unit_features(
    knowledge: Knowledge,
    parsed: ParsedText,
    *,
    use_adjectives: bool = True,
    prototype: str = "mean",
) -> np.ndarray:
    """Return the `(L, F)` float32 unit features of one text: mean of raw noun + adjective prototypes.

    prototype="mean" uses the prototypes v_k, "random_region" the one random region per word
    (knowledge.random_regions). use_adjectives=False gives the noun's prototype alone.
    """
    if prototype not in PROTOTYPES:
        raise MatchingInputError(f"prototype={prototype!r} is not one of {PROTOTYPES}")
    table = _prototype_table(knowledge, prototype)
    index = knowledge.index
    features = np.zeros((len(parsed.units), knowledge.dim), dtype=np.float32)

    for u, unit in enumerate(parsed.units):
        words = _unit_words(unit, use_adjectives)
        rows = [_word_row(index, word, None) for word in words]
        vectors = np.asarray(table[rows], dtype=np.float64)
        _check_finite_words(vectors, words, prototype)
        features[u] = vectors.mean(axis=0)
    return features


def empty_counts(texts: Sequence[ParsedText], images: ImageRegions) -> dict[str, int]:
    """Count texts without a unit and images without a region; both get EMPTY_SCORE."""
    return {
        "texts_without_units": sum(1 for parsed in texts if len(parsed.units) == 0),
        "images_without_regions": int((images.counts == 0).sum()),
    }


def _log_empty(texts: Sequence[ParsedText], images: ImageRegions) -> None:
    counts = empty_counts(texts, images)
    logger.info(
        "%d of %d texts have no unit and %d of %d images have no region. They score EMPTY_SCORE=%s",
        counts["texts_without_units"],
        len(texts),
        counts["images_without_regions"],
        len(images),
        EMPTY_SCORE,
    )


@dataclass
class _TextUnits:
    """The units of a list of texts, each distinct unit (same words in the same order) stored once.

    words: distinct words the units use, in first-use order.
    rows: (n_words,) knowledge rows of the words.
    unit_ptr: (n_texts + 1,) the unit occurrences of text t are unit_ptr[t]:unit_ptr[t + 1].
    occurrence_unit: (n_occurrences,) distinct unit of each occurrence, in text order.
    entry_ptr: (n_units + 1,) the word entries of distinct unit u are entry_ptr[u]:entry_ptr[u + 1].
    entry_word: (n_entries,) index into words.
    entry_weight: (n_entries,) a_j = 1 / (number of words in the unit).
    """

    words: list[str]
    rows: np.ndarray
    unit_ptr: np.ndarray
    occurrence_unit: np.ndarray
    entry_ptr: np.ndarray
    entry_word: np.ndarray
    entry_weight: np.ndarray

    @property
    def n_units(self) -> int:
        return len(self.entry_ptr) - 1

    @property
    def n_texts(self) -> int:
        return len(self.unit_ptr) - 1


def _index_units(
    knowledge: Knowledge, texts: Sequence[ParsedText], use_adjectives: bool
) -> _TextUnits:
    index = knowledge.index
    word_ids: dict[str, int] = {}
    unit_ids: dict[tuple[str, ...], int] = {}
    rows: list[int] = []
    unit_ptr, occurrence_unit = [0], []
    entry_ptr, entry_word, entry_weight = [0], [], []

    for t, parsed in enumerate(texts):
        for unit in parsed.units:
            words = _unit_words(unit, use_adjectives)
            unit_id = unit_ids.get(words)
            if unit_id is None:
                unit_id = unit_ids[words] = len(unit_ids)
                for word in words:
                    if word not in word_ids:
                        rows.append(_word_row(index, word, t))
                        word_ids[word] = len(word_ids)
                    entry_word.append(word_ids[word])
                    entry_weight.append(1.0 / len(words))
                entry_ptr.append(len(entry_word))
            occurrence_unit.append(unit_id)
        unit_ptr.append(len(occurrence_unit))

    return _TextUnits(
        words=list(word_ids),
        rows=np.array(rows, dtype=np.int64),
        unit_ptr=np.array(unit_ptr, dtype=np.int64),
        occurrence_unit=np.array(occurrence_unit, dtype=np.int64),
        entry_ptr=np.array(entry_ptr, dtype=np.int64),
        entry_word=np.array(entry_word, dtype=np.int64),
        entry_weight=np.array(entry_weight, dtype=np.float64),
    )


def _word_vectors(
    knowledge: Knowledge, units: _TextUnits, prototype: str, W: np.ndarray | None
) -> np.ndarray:
    """Return the `(n_words, F)` float32 vectors of the used words, transformed by W if given."""
    table = _prototype_table(knowledge, prototype)
    vectors = np.asarray(table[units.rows], dtype=np.float32)
    _check_finite_words(vectors, units.words, prototype)
    if W is not None:
        vectors = vectors @ np.asarray(W, dtype=np.float32).T
    return vectors


def _unit_word_weights(units: _TextUnits, vectors: np.ndarray) -> sp.csr_array:
    """Return the sparse `(n_units, n_words)` float32 matrix of weights a_j / |u|.

    Row u times the word-region cosine numerators gives cos(unit u, region). Its indptr, indices
    and data are entry_ptr, entry_word and the scaled entry weights, in entry order. A zero-norm
    unit gets an all-zero row, so its cosine with every region is 0.
    """
    shape = (units.n_units, len(units.words))
    means = sp.csr_array((units.entry_weight, units.entry_word, units.entry_ptr), shape=shape)
    norms = np.zeros(units.n_units, dtype=np.float64)
    for start in range(0, units.n_units, _NORM_UNITS_PER_STEP):
        stop = min(start + _NORM_UNITS_PER_STEP, units.n_units)
        unit_vectors = (means[start:stop] @ vectors).astype(np.float64)
        norms[start:stop] = np.sqrt(np.einsum("uf,uf->u", unit_vectors, unit_vectors))

    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    entry_unit = np.repeat(np.arange(units.n_units), np.diff(units.entry_ptr))
    scaled = (units.entry_weight * inverse[entry_unit]).astype(np.float32)
    return sp.csr_array((scaled, units.entry_word, units.entry_ptr), shape=shape)


@dataclass
class _UnitPlan:
    """The word vectors and unit weights shared by score_matrix and score_pairs.

    vectors: (n_words, F) float32 word vectors (W applied when given).
    weights: (n_units, n_words) float32 sparse a_j / |u| of every distinct unit.
    single_units, single_words: (n_single,) distinct units made of one word entry, and that word.
    single_scale: (n_single,) float32 1 / |v_j|, or 0 for a zero vector.
    multi_units: (n_multi,) the other distinct units; multi_weights: their rows of weights.
    unit_word, unit_scale: (n_units,) the word and scale of a one-word unit, -1 and 0 otherwise.
    """

    vectors: np.ndarray
    weights: sp.csr_array
    single_units: np.ndarray
    single_words: np.ndarray
    single_scale: np.ndarray
    multi_units: np.ndarray
    multi_weights: sp.csr_array
    unit_word: np.ndarray
    unit_scale: np.ndarray

    @property
    def n_units(self) -> int:
        return self.weights.shape[0]


def _unit_plan(
    knowledge: Knowledge, units: _TextUnits, prototype: str, W: np.ndarray | None
) -> _UnitPlan:
    vectors = _word_vectors(knowledge, units, prototype, W)
    weights = _unit_word_weights(units, vectors)
    entries_per_unit = np.diff(weights.indptr)
    single_units = np.flatnonzero(entries_per_unit == 1)
    multi_units = np.flatnonzero(entries_per_unit != 1)
    first_entry = weights.indptr[single_units]
    single_words = weights.indices[first_entry].astype(np.int64)
    single_scale = weights.data[first_entry].astype(np.float32)

    unit_word = np.full(units.n_units, -1, dtype=np.int64)
    unit_word[single_units] = single_words
    unit_scale = np.zeros(units.n_units, dtype=np.float32)
    unit_scale[single_units] = single_scale
    return _UnitPlan(
        vectors=vectors,
        weights=weights,
        single_units=single_units,
        single_words=single_words,
        single_scale=single_scale,
        multi_units=multi_units,
        multi_weights=weights[multi_units],
        unit_word=unit_word,
        unit_scale=unit_scale,
    )


# ---------------------------------------------------------------- image side and reductions


def _inverse_norms(
    rows: np.ndarray, valid: np.ndarray | None, image_of_row: Callable[[int], int], what: str
) -> np.ndarray:
    """Return `(n,)` float32 1 / |row| for the valid rows of `(n, F)` rows, 0 for zero or invalid.

    valid: (n,) bool or None for all rows. Invalid rows may hold anything. Raises
    MatchingInputError naming image_of_row(row) for a valid row with a NaN or inf; `what` names
    the values in that message.
    """
    squared = np.einsum("rf,rf->r", rows, rows)
    suspects = ~np.isfinite(squared)
    if valid is not None:
        squared[~valid] = 0.0
        suspects &= valid
    suspects = np.flatnonzero(suspects)
    if suspects.size:
        bad = suspects[~np.isfinite(rows[suspects]).all(axis=1)]
        if bad.size:
            raise MatchingInputError(
                f"image {image_of_row(int(bad[0]))} has NaN or inf in its {what}. Recompute its "
                "features or drop the image"
            )

    # A float32 sum of squares overflows above about 1.8e19; such rows are redone in float64.
    norms = np.sqrt(squared.astype(np.float64))
    norms[suspects] = np.linalg.norm(rows[suspects].astype(np.float64), axis=1)
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return inverse.astype(np.float32)


def _transformed_rows(
    rows: np.ndarray, W: np.ndarray | None, transform: str, valid, image_of_row
) -> tuple[np.ndarray, np.ndarray]:
    """Return `(n, F)` rows (W r when transform="both") and their `(n,)` inverse norms.

    The raw rows are checked for NaN and inf first. Without a transform the rows are returned as
    they came, so they may be a view of the caller's features.
    """
    inverse = _inverse_norms(rows, valid, image_of_row, "region features")
    if W is not None and transform == "both":
        rows = rows @ np.asarray(W, dtype=np.float32).T
        inverse = _inverse_norms(rows, valid, image_of_row, "region features after W")
    return rows, inverse


def _pair_regions(
    images: ImageRegions, image_ids: np.ndarray, W: np.ndarray | None, transform: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return `(c, I, F)` float32 regions of the sorted `image_ids` and `(c, I)` inverse norms.

    The regions are a view of images.features, not a copy, when the ids are consecutive, the
    features are float32 and W does not transform them. Padding rows may hold anything; their
    inverse norm is 0.
    """
    consecutive = image_ids[-1] - image_ids[0] + 1 == len(image_ids)
    if consecutive:
        regions = images.features[image_ids[0] : image_ids[-1] + 1]
    else:
        regions = images.features[image_ids]
    regions = np.asarray(regions, dtype=np.float32)
    n_images, n_regions, dim = regions.shape
    valid = np.arange(n_regions)[None, :] < images.counts[image_ids][:, None]

    rows, inverse = _transformed_rows(
        regions.reshape(-1, dim), W, transform, valid.ravel(),
        lambda row: image_ids[row // n_regions],
    )  # fmt: skip
    return rows.reshape(n_images, n_regions, -1), inverse.reshape(n_images, n_regions)


def _region_major_regions(
    images: ImageRegions, start: int, stop: int, W: np.ndarray | None, transform: str
) -> np.ndarray:
    """Return `(max_regions, c, F)` float32 unit-norm regions of images start:stop, region-major.

    Row [i, m] is region i of image start + m, so a reduction over regions runs over the middle
    axis of a (rows, I, c) product, on contiguous rows of length c. Padding rows are zero.
    """
    n_images = stop - start
    regions = np.empty((images.max_regions, n_images, images.dim), dtype=np.float32)
    regions[...] = np.swapaxes(images.features[start:stop], 0, 1)
    padding = np.arange(images.max_regions)[:, None] >= images.counts[None, start:stop]
    if padding.any():
        regions[padding] = 0.0

    rows, inverse = _transformed_rows(
        regions.reshape(-1, images.dim), W, transform, None, lambda row: start + row % n_images
    )
    rows *= inverse[:, None]
    return rows.reshape(images.max_regions, n_images, -1)


def _reduce_regions(scores: np.ndarray, counts: np.ndarray, reduction: str) -> np.ndarray:
    """Reduce `(..., I)` unit-region cosines over each image's valid regions -> `(...)`.

    counts broadcasts against scores.shape[:-1]. Padding cosines are already 0 because padding
    regions are zero vectors. An image with no region gives 0 here and EMPTY_SCORE at the end.
    """
    n_regions = scores.shape[-1]
    if reduction == "mean":
        return scores.sum(axis=-1) / np.maximum(counts, 1).astype(scores.dtype)

    padding = np.arange(n_regions) >= counts[..., None]
    if padding.any():
        np.copyto(scores, -np.inf, where=padding)
    reduced = scores.max(axis=-1)
    np.copyto(reduced, 0.0, where=counts == 0)
    return reduced


def _reduce_region_axis(scores: np.ndarray, counts: np.ndarray, reduction: str) -> np.ndarray:
    """Reduce `(n_rows, I, c)` region-major cosines over axis 1 -> `(n_rows, c)`.

    counts: (c,) valid regions per image. Padding cosines are 0 because padding regions are zero
    vectors, and "max" overwrites them with -inf in place. An image with no region gives 0.
    """
    if reduction == "mean":
        return scores.sum(axis=1) / np.maximum(counts, 1).astype(np.float32)

    padding = np.arange(scores.shape[1])[:, None] >= counts[None, :]
    if padding.any():
        np.copyto(scores, -np.inf, where=padding)
    reduced = scores.max(axis=1)
    reduced[:, counts == 0] = 0.0
    return reduced


def _reduce_units(per_unit: np.ndarray, unit_ptr: np.ndarray, reduction: str) -> np.ndarray:
    """Reduce `(n_units, ...)` scores over each text's units -> `(n_texts, ...)`.

    Units are sorted by text and text t owns unit_ptr[t]:unit_ptr[t + 1]. A text with no unit
    gets EMPTY_SCORE.
    """
    lengths = np.diff(unit_ptr)
    reduced = np.full((len(lengths), *per_unit.shape[1:]), EMPTY_SCORE, dtype=np.float32)
    has_units = lengths > 0
    if not has_units.any():
        return reduced

    starts = unit_ptr[:-1][has_units]
    if reduction == "max":
        reduced[has_units] = np.maximum.reduceat(per_unit, starts, axis=0)
    else:
        sums = np.add.reduceat(per_unit, starts, axis=0)
        shape = (-1,) + (1,) * (per_unit.ndim - 1)
        reduced[has_units] = sums / lengths[has_units].reshape(shape).astype(np.float32)
    return reduced


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise MatchingInputError(
            f"chunk_size={chunk_size!r} is invalid. Pass a positive number of images or None"
        )


def _auto_chunk_size(n_rows_per_region: int, images: ImageRegions, extra_per_image: int) -> int:
    """Pick how many images fit MEMORY_BUDGET_BYTES (an estimate, see score_pairs)."""
    per_image = 4 * images.max_regions * (2 * images.dim + n_rows_per_region) + 4 * extra_per_image
    return int(max(1, min(len(images), MEMORY_BUDGET_BYTES // max(per_image, 1))))


# ---------------------------------------------------------------- score matrix


@dataclass
class _TextPooling:
    """Reduction of per-unit scores over each text's units, for score_matrix.

    has_units: (n_texts,) bool. A text with no unit gets EMPTY_SCORE.
    weights ("mean"): (n_texts, n_units) float32 sparse, 1 / (units of the text) for each
    occurrence of a unit, repeats summed, so weights @ per_unit is the mean over units.
    text_units, starts ("max"): the distinct units of each text with units, text after text.
    The k-th text that has units owns text_units[starts[k]:starts[k + 1]].
    """

    reduction: str
    has_units: np.ndarray
    weights: sp.csr_array | None = None
    text_units: np.ndarray | None = None
    starts: np.ndarray | None = None

    @classmethod
    def build(cls, units: _TextUnits, reduction: str) -> _TextPooling:
        lengths = np.diff(units.unit_ptr)
        occurrence_text = np.repeat(np.arange(units.n_texts), lengths)
        has_units = lengths > 0
        if reduction == "mean":
            shares = 1.0 / lengths[occurrence_text]
            shape = (units.n_texts, units.n_units)
            weights = sp.csr_array((shares, (occurrence_text, units.occurrence_unit)), shape=shape)
            weights.sum_duplicates()
            return cls(reduction, has_units, weights=weights.astype(np.float32))

        codes = np.unique(occurrence_text * units.n_units + units.occurrence_unit)
        text_of_code, text_units = np.divmod(codes, max(units.n_units, 1))
        starts = np.searchsorted(text_of_code, np.flatnonzero(has_units))
        return cls(reduction, has_units, text_units=text_units, starts=starts)

    @property
    def rows_per_image(self) -> int:
        """Temporary values per image in reduce: the output and, for max, the gathered units."""
        n_texts = len(self.has_units)
        return n_texts if self.text_units is None else n_texts + len(self.text_units)

    def reduce(self, per_unit: np.ndarray) -> np.ndarray:
        """Reduce `(n_units, c)` scores -> `(n_texts, c)` float32."""
        if self.reduction == "mean":
            reduced = np.asarray(self.weights @ per_unit, dtype=np.float32)
            reduced[~self.has_units] = EMPTY_SCORE
            return reduced

        reduced = np.full((len(self.has_units), per_unit.shape[1]), EMPTY_SCORE, dtype=np.float32)
        if self.starts.size:
            gathered = per_unit[self.text_units]
            reduced[self.has_units] = np.maximum.reduceat(gathered, self.starts, axis=0)
        return reduced


def _bytes_per_image(plan: _UnitPlan, pooling: _TextPooling, n_regions: int, region_dim: int):
    """Working memory of one image in a score_matrix chunk (see its docstring)."""
    n_words, n_multi = len(plan.vectors), len(plan.multi_units)
    per_region = region_dim + n_words + n_multi
    per_image = n_words + n_multi + plan.n_units + pooling.rows_per_image
    return 4 * (n_regions * per_region + per_image)


def _score_chunk(
    plan: _UnitPlan,
    pooling: _TextPooling,
    regions: np.ndarray,
    counts: np.ndarray,
    reduction: str,
) -> np.ndarray:
    """Score one chunk of images against all texts -> `(n_texts, c)` float32.

    regions: (I, c, F) region-major unit-norm regions; counts: (c,) valid regions per image.
    cos(u, r) = sum_j (a_j / |u|) (v_j . r): a one-word unit is the word's row scaled by
    1 / |v_j| >= 0, which commutes with max and mean, so only multi-word units need the sparse
    product. The multi-word rows are taken before the word rows are masked for "max".
    """
    n_regions, n_images, dim = regions.shape
    word_region = plan.vectors @ regions.reshape(-1, dim).T
    multi_region = plan.multi_weights @ word_region
    shape = (-1, n_regions, n_images)

    per_unit = np.empty((plan.n_units, n_images), dtype=np.float32)
    per_word = _reduce_region_axis(word_region.reshape(shape), counts, reduction)
    per_unit[plan.single_units] = per_word[plan.single_words] * plan.single_scale[:, None]
    per_unit[plan.multi_units] = _reduce_region_axis(multi_region.reshape(shape), counts, reduction)
    return pooling.reduce(per_unit)


def score_matrix(
    knowledge: Knowledge,
    texts: Sequence[ParsedText],
    images: ImageRegions,
    *,
    pooling: str = "max_mean",
    use_adjectives: bool = True,
    prototype: str = "mean",
    W: np.ndarray | None = None,
    transform: str = "both",
    chunk_size: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Score every image against every text with eq. 4 -> `(n_images, n_texts)` float32.

    A unit is a mean of word vectors, so cos(u, r) = sum_j (a_j / |u|) (v_j . r_hat). Per chunk
    of images, the word x region products D = P_words @ R_hat^T are one matrix product. Repeated
    units are scored once. A one-word unit is a scaled row of D; a sparse (multi-word units x
    words) product gives the other unit-region cosines. Both are reduced over each image's
    regions, then over each text's units.

    W: (F, F) fine-tuned matrix or None. transform="both" scores W v against W r, and "words"
    scores W v against the raw r. chunk_size: images per chunk; None picks the largest chunk
    whose working memory fits MEMORY_BUDGET_BYTES.

    Peak memory in bytes, beyond the input features, is about
    4 * (n_images * n_texts + n_words * F + c * I * (F_r + n_words + n_multi)
    + c * (n_words + n_single + 2 * n_multi + n_texts + g)),
    with c = chunk size, I = images.max_regions, n_words the distinct words of the units,
    n_single and n_multi the distinct one-word and multi-word units, F_r = 2 * F when W
    transforms the regions and F otherwise, and g = 0 for "*_mean" pooling or the number of
    distinct (text, unit) pairs for "*_max".

    NOTE: the products run in float32, so a unit whose word vectors nearly cancel (|u| much
    smaller than |v_j|) gets an absolute cosine error of about 1e-7 * max_j |v_j| / |u|. With
    F = 2048 the measured error was 2e-7 for random units and 2e-5 for a ratio of 200.
    """
    region_reduction, unit_reduction = _check_options(
        knowledge, images, pooling, prototype, W, transform
    )
    _check_chunk_size(chunk_size)
    units = _index_units(knowledge, texts, use_adjectives)
    plan = _unit_plan(knowledge, units, prototype, W)
    pooling = _TextPooling.build(units, unit_reduction)
    _log_empty(texts, images)

    if chunk_size is None:
        region_dim = 2 * images.dim if W is not None and transform == "both" else images.dim
        per_image = _bytes_per_image(plan, pooling, images.max_regions, region_dim)
        chunk_size = int(max(1, min(len(images), MEMORY_BUDGET_BYTES // max(per_image, 1))))
    scores = np.empty((len(images), len(texts)), dtype=np.float32)
    starts = range(0, len(images), chunk_size)

    for start in tqdm(starts, desc="score_matrix", unit="chunk", disable=not progress):
        stop = min(start + chunk_size, len(images))
        regions = _region_major_regions(images, start, stop, W, transform)
        counts = images.counts[start:stop]
        scores[start:stop] = _score_chunk(plan, pooling, regions, counts, region_reduction).T
        del regions  # frees the chunk before the next one is read

    scores[images.counts == 0] = EMPTY_SCORE
    return scores


# ---------------------------------------------------------------- pairs


def _concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Return concat(arange(s, s + n) for s, n in zip(starts, lengths)) without a Python loop."""
    total = int(lengths.sum())
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return offsets + np.arange(total)


def _check_pairs(
    image_idx: np.ndarray, text_idx: np.ndarray, n_images: int, n_texts: int
) -> tuple[np.ndarray, np.ndarray]:
    image_idx = np.asarray(image_idx)
    text_idx = np.asarray(text_idx)
    if image_idx.ndim != 1 or image_idx.shape != text_idx.shape:
        raise MatchingInputError(
            f"image_idx {image_idx.shape} and text_idx {text_idx.shape} must be 1-d of equal length"
        )
    for name, idx, n in (("image_idx", image_idx, n_images), ("text_idx", text_idx, n_texts)):
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise MatchingInputError(f"{name} must contain integers, got dtype {idx.dtype}")
        bad = np.flatnonzero((idx < 0) | (idx >= n))
        if bad.size:
            raise MatchingInputError(f"{name}[{bad[0]}] = {idx[bad[0]]} is outside 0..{n - 1}")
    return image_idx.astype(np.int64), text_idx.astype(np.int64)


def _word_region_blocks(
    vectors: np.ndarray,
    regions: np.ndarray,
    inverse_norms: np.ndarray,
    counts: np.ndarray,
    key_images: np.ndarray,
    key_words: np.ndarray,
) -> np.ndarray:
    """Return `(n_keys, I)` cosine numerators of word key_words[k] with image key_images[k].

    regions: (c, I, F) raw regions; inverse_norms: (c, I), 0 for padding; counts: (c,). Row k is
    (v . r) / |r| over the image's regions, and 0 at padding regions.

    Keys are sorted by image, so each image is one matrix product over only the words it needs,
    about 100 to 200 x F x I. These run through torch (MKL) with its own threads: on 2 shared cores,
    5,000 products of 174 x 2048 x 36 ran at 35 GFLOP/s, against 21 to 28 GFLOP/s for NumPy's
    OpenBLAS on one or two threads (measured 2026-12-04).
    """
    n_images, n_regions, _ = regions.shape
    bounds = np.searchsorted(key_images, np.arange(n_images + 1)).tolist()
    products = torch.empty((len(key_words), n_regions), dtype=torch.float32)
    words_table = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    word_ids = torch.from_numpy(np.ascontiguousarray(key_words, dtype=np.int64))
    with warnings.catch_warnings():  # read-only inputs (a memmap) are only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        region_table = torch.from_numpy(np.ascontiguousarray(regions, dtype=np.float32))
    inverse_table = torch.from_numpy(np.ascontiguousarray(inverse_norms, dtype=np.float32))
    counts = np.asarray(counts).tolist()
    max_words = int(np.diff(bounds).max(initial=0))
    words = torch.empty((max_words, words_table.shape[1]), dtype=torch.float32)
    for image in range(n_images):
        start, stop = bounds[image], bounds[image + 1]
        if start < stop:
            block = products[start:stop]
            torch.index_select(words_table, 0, word_ids[start:stop], out=words[: stop - start])
            torch.mm(words[: stop - start], region_table[image].T, out=block)
            block *= inverse_table[image]
            if counts[image] < n_regions:
                # Padding rows may hold NaN, and NaN * 0 is NaN, so their columns are zeroed.
                block[:, counts[image] :] = 0.0
    return products.numpy()


def _score_image_units(
    plan: _UnitPlan,
    regions: np.ndarray,
    inverse_norms: np.ndarray,
    counts: np.ndarray,
    key_images: np.ndarray,
    key_units: np.ndarray,
    reduction: str,
) -> np.ndarray:
    """Return `(n_keys,)` float32 cosines of unit key_units[k] reduced over image key_images[k].

    regions: (c, I, F) raw regions; inverse_norms: (c, I); counts: (c,). Each (image, word)
    product is computed once. A one-word unit is its word's reduced row times 1 / |v_j|; a
    multi-word unit sums its weighted word rows first, before the word rows are masked.
    """
    n_words = len(plan.vectors)
    single = plan.unit_word[key_units] >= 0
    multi_keys = np.flatnonzero(~single)
    multi_units = key_units[multi_keys]
    entry_counts = np.diff(plan.weights.indptr)[multi_units]
    entries = _concatenated_ranges(plan.weights.indptr[multi_units], entry_counts)
    entry_images = np.repeat(key_images[multi_keys], entry_counts)

    single_codes = key_images[single] * n_words + plan.unit_word[key_units[single]]
    entry_codes = entry_images * n_words + plan.weights.indices[entries]
    codes, code_rows = np.unique(np.concatenate([single_codes, entry_codes]), return_inverse=True)
    code_images, code_words = np.divmod(codes, n_words)
    products = _word_region_blocks(
        plan.vectors, regions, inverse_norms, counts, code_images, code_words
    )

    per_key = np.empty(len(key_units), dtype=np.float32)
    if multi_keys.size:
        rows = code_rows[len(single_codes) :]
        contributions = plan.weights.data[entries, None] * products[rows]
        starts = np.cumsum(entry_counts) - entry_counts
        unit_region = np.add.reduceat(contributions, starts, axis=0)
        multi_counts = counts[key_images[multi_keys]]
        per_key[multi_keys] = _reduce_regions(unit_region, multi_counts, reduction)

    per_code = _reduce_regions(products, counts[code_images], reduction)
    single_values = per_code[code_rows[: len(single_codes)]]
    per_key[single] = single_values * plan.unit_scale[key_units[single]]
    return per_key


def _score_pair_chunk(
    plan: _UnitPlan,
    units: _TextUnits,
    regions: np.ndarray,
    inverse_norms: np.ndarray,
    counts: np.ndarray,
    pair_images: np.ndarray,
    pair_texts: np.ndarray,
    region_reduction: str,
    unit_reduction: str,
) -> np.ndarray:
    """Score pairs whose images all lie in one chunk -> `(n_pairs,)` float32.

    regions: (c, I, F) raw regions; inverse_norms: (c, I); counts: (c,); pair_images: (n_pairs,)
    index into the chunk; pair_texts: (n_pairs,) text ids. Each distinct (image, unit) is scored
    once.
    """
    unit_counts = np.diff(units.unit_ptr)[pair_texts]
    occurrences = _concatenated_ranges(units.unit_ptr[pair_texts], unit_counts)
    occurrence_images = np.repeat(pair_images, unit_counts)
    occurrence_codes = occurrence_images * plan.n_units + units.occurrence_unit[occurrences]
    keys, occurrence_keys = np.unique(occurrence_codes, return_inverse=True)
    key_images, key_units = np.divmod(keys, plan.n_units)

    per_key = _score_image_units(
        plan, regions, inverse_norms, counts, key_images, key_units, region_reduction
    )
    pair_ptr = np.concatenate([[0], np.cumsum(unit_counts)])
    return _reduce_units(per_key[occurrence_keys], pair_ptr, unit_reduction)


def score_pairs(
    knowledge: Knowledge,
    texts: Sequence[ParsedText],
    images: ImageRegions,
    image_idx: np.ndarray,
    text_idx: np.ndarray,
    *,
    pooling: str = "max_mean",
    use_adjectives: bool = True,
    prototype: str = "mean",
    W: np.ndarray | None = None,
    transform: str = "both",
    chunk_size: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Score only the listed (image, text) pairs -> `(P,)` float32, equal to score_matrix entries.

    image_idx, text_idx: (P,) integer ids. Pairs are grouped by image, so each image's regions are
    read and normalised once, and multiplied only with the words of its own pairs. chunk_size is
    the number of distinct images per chunk, picked from MEMORY_BUDGET_BYTES when None. With E word
    entries (units x their words) over the pairs of one image, the peak in bytes is about
    4 * chunk * I * (2 * F + 3 * E) on top of the word vectors. Options are those of score_matrix.
    """
    region_reduction, unit_reduction = _check_options(
        knowledge, images, pooling, prototype, W, transform
    )
    image_idx, text_idx = _check_pairs(image_idx, text_idx, len(images), len(texts))
    _check_chunk_size(chunk_size)
    units = _index_units(knowledge, texts, use_adjectives)
    plan = _unit_plan(knowledge, units, prototype, W)

    order = np.argsort(image_idx, kind="stable")
    distinct, first_pair = np.unique(image_idx[order], return_index=True)
    pair_bounds = np.append(first_pair, len(order))
    if chunk_size is None:
        n_entries = int(np.diff(plan.weights.indptr)[units.occurrence_unit].sum())
        entries_per_image = n_entries * len(order) // max(len(texts) * len(distinct), 1)
        chunk_size = _auto_chunk_size(3 * entries_per_image, images, 0)
    scores = np.empty(len(order), dtype=np.float32)

    starts = range(0, len(distinct), chunk_size)
    for start in tqdm(starts, desc="score_pairs", unit="chunk", disable=not progress):
        stop = min(start + chunk_size, len(distinct))
        image_ids = distinct[start:stop]
        pairs = order[pair_bounds[start] : pair_bounds[stop]]
        regions, inverse_norms = _pair_regions(images, image_ids, W, transform)
        pair_images = np.searchsorted(image_ids, image_idx[pairs])
        scores[pairs] = _score_pair_chunk(
            plan, units, regions, inverse_norms, images.counts[image_ids], pair_images,
            text_idx[pairs], region_reduction, unit_reduction,
        )  # fmt: skip
        del regions  # frees the chunk before the next one is read

    scores[images.counts[image_idx] == 0] = EMPTY_SCORE
    return scores


# ---------------------------------------------------------------- reference oracle


def _unit_norm_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def reference_score_matrix(
    knowledge: Knowledge,
    texts: Sequence[ParsedText],
    images: ImageRegions,
    *,
    pooling: str = "max_mean",
    use_adjectives: bool = True,
    prototype: str = "mean",
    W: np.ndarray | None = None,
    transform: str = "both",
    chunk_size: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Score every pair with a plain float64 loop -> `(n_images, n_texts)`, the oracle of the tests.

    Per pair: unit_features, W, unit-normalise, U @ R.T, pool. chunk_size is accepted for the
    shared signature and ignored. Slow: use score_matrix for real work.
    """
    region_reduction, unit_reduction = _check_options(
        knowledge, images, pooling, prototype, W, transform
    )
    reduce_regions = np.max if region_reduction == "max" else np.mean
    reduce_units = np.max if unit_reduction == "max" else np.mean
    W64 = None if W is None else np.asarray(W, dtype=np.float64)

    text_units = []
    for parsed in texts:
        unit_vectors = unit_features(
            knowledge, parsed, use_adjectives=use_adjectives, prototype=prototype
        )
        unit_vectors = unit_vectors.astype(np.float64)
        if W64 is not None:
            unit_vectors = unit_vectors @ W64.T
        text_units.append(_unit_norm_rows(unit_vectors))

    scores = np.full((len(images), len(texts)), EMPTY_SCORE, dtype=np.float64)
    for i in tqdm(range(len(images)), desc="reference_score_matrix", disable=not progress):
        regions = images.valid_regions(i).astype(np.float64)
        if not np.isfinite(regions).all():
            raise MatchingInputError(
                f"image {i} has NaN or inf in its region features. Recompute its features or drop "
                "the image"
            )
        if W64 is not None and transform == "both":
            regions = regions @ W64.T
        regions = _unit_norm_rows(regions)

        for t, unit_vectors in enumerate(text_units):
            if len(unit_vectors) == 0 or len(regions) == 0:
                continue
            cosines = unit_vectors @ regions.T
            scores[i, t] = reduce_units(reduce_regions(cosines, axis=1))
    return scores
