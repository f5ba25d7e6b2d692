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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits
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
    """All units of a list of texts, as ranges of word entries.

    words: distinct words the units use, in first-use order.
    rows: (n_words,) knowledge rows of the words.
    unit_ptr: (n_texts + 1,) the units of text t are unit_ptr[t]:unit_ptr[t + 1].
    entry_ptr: (n_units + 1,) the word entries of unit u are entry_ptr[u]:entry_ptr[u + 1].
    entry_word: (n_entries,) index into words.
    entry_weight: (n_entries,) a_j = 1 / (number of words in the unit).
    """

    words: list[str]
    rows: np.ndarray
    unit_ptr: np.ndarray
    entry_ptr: np.ndarray
    entry_word: np.ndarray
    entry_weight: np.ndarray

    @property
    def n_units(self) -> int:
        return len(self.entry_ptr) - 1


def _index_units(
    knowledge: Knowledge, texts: Sequence[ParsedText], use_adjectives: bool
) -> _TextUnits:
    index = knowledge.index
    word_ids: dict[str, int] = {}
    rows: list[int] = []
    unit_ptr, entry_ptr = [0], [0]
    entry_word: list[int] = []
    entry_weight: list[float] = []

    for t, parsed in enumerate(texts):
        for unit in parsed.units:
            words = _unit_words(unit, use_adjectives)
            for word in words:
                if word not in word_ids:
                    rows.append(_word_row(index, word, t))
                    word_ids[word] = len(word_ids)
                entry_word.append(word_ids[word])
                entry_weight.append(1.0 / len(words))
            entry_ptr.append(len(entry_word))
        unit_ptr.append(len(entry_ptr) - 1)

    return _TextUnits(
        words=list(word_ids),
        rows=np.array(rows, dtype=np.int64),
        unit_ptr=np.array(unit_ptr, dtype=np.int64),
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


# ---------------------------------------------------------------- image side and reductions


def _normalised_regions(
    images: ImageRegions, image_ids: np.ndarray, W: np.ndarray | None, transform: str
) -> np.ndarray:
    """Return `(c, max_regions, F)` float32 unit-norm regions of `image_ids`, with zero padding rows.

    Raises MatchingInputError naming the first image with a NaN or inf in a valid region.
    """
    regions = np.array(images.features[image_ids], dtype=np.float32)
    counts = images.counts[image_ids]
    padding = np.arange(images.max_regions)[None, :] >= counts[:, None]
    regions[padding] = 0.0

    finite = np.isfinite(regions).all(axis=(1, 2))
    if not finite.all():
        bad = int(image_ids[np.flatnonzero(~finite)[0]])
        raise MatchingInputError(
            f"image {bad} has NaN or inf in its region features. Recompute its features "
            "or drop the image"
        )

    if W is not None and transform == "both":
        regions = regions @ np.asarray(W, dtype=np.float32).T
    norms = np.linalg.norm(regions, axis=2, keepdims=True)
    np.divide(regions, norms, out=regions, where=norms > 0)
    return regions


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
    """Pick how many images fit MEMORY_BUDGET_BYTES (an estimate, see score_matrix)."""
    per_image = 4 * images.max_regions * (2 * images.dim + n_rows_per_region) + 4 * extra_per_image
    return int(max(1, min(len(images), MEMORY_BUDGET_BYTES // max(per_image, 1))))


# ---------------------------------------------------------------- score matrix


def _score_chunk(
    vectors: np.ndarray,
    weights: sp.csr_array,
    unit_ptr: np.ndarray,
    regions: np.ndarray,
    counts: np.ndarray,
    region_reduction: str,
    unit_reduction: str,
) -> np.ndarray:
    """Score one chunk of images against all texts -> `(n_texts, c)` float32.

    vectors: (n_words, F) word vectors; weights: (n_units, n_words) a_j / |u|;
    regions: (c, I, F) unit-norm regions; counts: (c,) valid regions per image.
    """
    n_images, n_regions, dim = regions.shape
    word_region = vectors @ regions.reshape(n_images * n_regions, dim).T
    unit_region = weights @ word_region
    unit_region = unit_region.reshape(weights.shape[0], n_images, n_regions)

    per_unit = _reduce_regions(unit_region, counts, region_reduction)
    return _reduce_units(per_unit, unit_ptr, unit_reduction)


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

    A unit is a mean of word vectors, so cos(u, r) = sum_j (a_j / |u|) (v_j . r_hat). The word x
    region products D = P_words @ R_hat^T are one matrix product per chunk of images. A sparse
    (units x words) matrix turns D into unit-region cosines, which are reduced over each image's
    regions and then over each text's units.

    W: (F, F) fine-tuned matrix or None. transform="both" scores W v against W r, and "words"
    scores W v against the raw r. chunk_size: images per chunk. When it is None, the size is
    picked so that the peak working memory stays near MEMORY_BUDGET_BYTES. The peak in bytes is
    about 4 * (n_images * n_texts + n_words * F + chunk * I * (2 * F + n_words + n_units)
    + chunk * (n_units + n_texts)), where I = images.max_regions.

    NOTE: the products run in float32, so a unit whose word vectors nearly cancel (|u| much
    smaller than |v_j|) gets an absolute cosine error of about 1e-7 * max_j |v_j| / |u|. With
    F = 2048 the measured error was 2e-7 for random units and 2e-5 for a ratio of 200.
    """
    region_reduction, unit_reduction = _check_options(
        knowledge, images, pooling, prototype, W, transform
    )
    _check_chunk_size(chunk_size)
    units = _index_units(knowledge, texts, use_adjectives)
    vectors = _word_vectors(knowledge, units, prototype, W)
    weights = _unit_word_weights(units, vectors)
    _log_empty(texts, images)

    if chunk_size is None:
        n_rows = len(units.words) + units.n_units
        chunk_size = _auto_chunk_size(n_rows, images, units.n_units + len(texts))
    scores = np.empty((len(images), len(texts)), dtype=np.float32)
    starts = range(0, len(images), chunk_size)

    for start in tqdm(starts, desc="score_matrix", unit="chunk", disable=not progress):
        image_ids = np.arange(start, min(start + chunk_size, len(images)))
        regions = _normalised_regions(images, image_ids, W, transform)
        counts = images.counts[image_ids]
        chunk = _score_chunk(
            vectors, weights, units.unit_ptr, regions, counts, region_reduction, unit_reduction
        )
        scores[image_ids] = chunk.T

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
    vectors: np.ndarray, regions: np.ndarray, key_images: np.ndarray, key_words: np.ndarray
) -> np.ndarray:
    """Return `(n_keys, I)` products of word key_words[k] with the regions of image key_images[k].

    Keys are sorted by image, so each image is one matrix product over only the words it needs.
    The products are small (about 100 x F x I), so they run on one BLAS thread. On 2 shared cores
    (load about 7) with OpenBLAS 0.3.31, 200 products of 135 x 2048 x 36 took 0.8 s on one thread
    and 4.8 s on two.
    """
    n_images, n_regions, _ = regions.shape
    bounds = np.searchsorted(key_images, np.arange(n_images + 1))
    products = np.empty((len(key_words), n_regions), dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        for image in range(n_images):
            start, stop = bounds[image], bounds[image + 1]
            if start < stop:
                products[start:stop] = vectors[key_words[start:stop]] @ regions[image].T
    return products


def _score_pair_chunk(
    vectors: np.ndarray,
    weights: sp.csr_array,
    units: _TextUnits,
    regions: np.ndarray,
    counts: np.ndarray,
    pair_images: np.ndarray,
    pair_texts: np.ndarray,
    region_reduction: str,
    unit_reduction: str,
) -> np.ndarray:
    """Score pairs whose images all lie in one chunk -> `(n_pairs,)` float32.

    regions: (c, I, F) unit-norm regions; counts: (c,); pair_images: (n_pairs,) index into the
    chunk; pair_texts: (n_pairs,) text ids. Each (pair, unit) row sums its word entries.
    """
    unit_counts = np.diff(units.unit_ptr)[pair_texts]
    pair_units = _concatenated_ranges(units.unit_ptr[pair_texts], unit_counts)
    pair_unit_image = np.repeat(pair_images, unit_counts)

    entry_counts = np.diff(weights.indptr)[pair_units]
    entries = _concatenated_ranges(weights.indptr[pair_units], entry_counts)
    entry_keys = np.repeat(pair_unit_image, entry_counts) * len(vectors) + weights.indices[entries]
    keys, entry_rows = np.unique(entry_keys, return_inverse=True)

    word_region = _word_region_blocks(vectors, regions, keys // len(vectors), keys % len(vectors))
    contributions = weights.data[entries, None] * word_region[entry_rows]
    entry_starts = np.cumsum(entry_counts) - entry_counts
    unit_region = (
        np.add.reduceat(contributions, entry_starts, axis=0) if entries.size else contributions
    )

    per_unit = _reduce_regions(unit_region, counts[pair_unit_image], region_reduction)
    pair_ptr = np.concatenate([[0], np.cumsum(unit_counts)])
    return _reduce_units(per_unit, pair_ptr, unit_reduction)


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
    vectors = _word_vectors(knowledge, units, prototype, W)
    weights = _unit_word_weights(units, vectors)

    order = np.argsort(image_idx, kind="stable")
    distinct, first_pair = np.unique(image_idx[order], return_index=True)
    pair_bounds = np.append(first_pair, len(order))
    if chunk_size is None:
        entries_per_image = len(weights.data) * len(order) // max(len(texts) * len(distinct), 1)
        chunk_size = _auto_chunk_size(3 * entries_per_image, images, 0)
    scores = np.empty(len(order), dtype=np.float32)

    starts = range(0, len(distinct), chunk_size)
    for start in tqdm(starts, desc="score_pairs", unit="chunk", disable=not progress):
        stop = min(start + chunk_size, len(distinct))
        image_ids = distinct[start:stop]
        pairs = order[pair_bounds[start] : pair_bounds[stop]]
        regions = _normalised_regions(images, image_ids, W, transform)
        pair_images = np.searchsorted(image_ids, image_idx[pairs])
        scores[pairs] = _score_pair_chunk(
            vectors, weights, units, regions, images.counts[image_ids], pair_images,
            text_idx[pairs], region_reduction, unit_reduction,
        )  # fmt: skip

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
