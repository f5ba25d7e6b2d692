"""Re-rank a base model's top-k candidates by base + lam * MACK score (MACK paper, section 3.4).

Both directions are re-ranked: image_to_text re-orders each image's top-k texts, text_to_image each
text's top-k images. The re-ranked top-k stay above the other candidates, which keep their base order.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

logger = logging.getLogger(__name__)

PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
_QUERY_BLOCK = 4096  # queries per top-k step, bounds the transposed copy to 4096 x n_candidates
_TILE = 1024  # columns per step of a transposed copy


@dataclass
class RerankResult:
    """A re-ranking: each query's top-k candidates and their combined scores, over the base matrix.

    base: the caller's (n_images, n_texts) matrix, checked but not copied. Do not change it while
    the result is in use.
    top_texts, combined_i2t: (n_images, k) each image's top-k texts by base score (int64) and their
    base + lam * MACK scores (float64). top_images, combined_t2i: the same per text, (n_texts, k).
    image_idx, text_idx: (P,) int64, the pairs given to the pair scorer (empty when not called).
    pair_scores: (P,) float64, the scorer's MACK score of each pair.

    image_to_text and text_to_image are the matrices to pass to metrics.evaluate. Each is built on
    first use as a float64 copy of base in which the re-ranked entries are replaced (see rerank).
    On COCO 5K that is 1 GB per direction, which re-ranking itself does not need.
    """

    base: np.ndarray
    top_texts: np.ndarray
    combined_i2t: np.ndarray
    top_images: np.ndarray
    combined_t2i: np.ndarray
    image_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    text_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pair_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    @cached_property
    def image_to_text(self) -> np.ndarray:
        """(n_images, n_texts) float64 whose order within each row is the re-ranked order."""
        scores = self.base.astype(np.float64)
        if self.top_texts.size:
            images = np.arange(len(self.base))[:, None]
            scores[images, self.top_texts] = _reranked_scores(
                scores[images, self.top_texts], self.combined_i2t
            )
        return scores

    @cached_property
    def text_to_image(self) -> np.ndarray:
        """(n_images, n_texts) float64 whose order within each column is the re-ranked order."""
        scores = self.base.astype(np.float64)
        if self.top_images.size:
            texts = np.arange(self.base.shape[1])[:, None]
            scores[self.top_images, texts] = _reranked_scores(
                scores[self.top_images, texts], self.combined_t2i
            )
        return scores


def rerank(
    base: np.ndarray, pair_scorer: PairScorer, k: int = 15, lam: float = 0.1
) -> RerankResult:
    """Re-order each query's top-k base candidates by base + lam * MACK score, in both directions.

    base: (n_images, n_texts) base-model similarities, finite.
    pair_scorer: called once as pair_scorer(image_idx (P,), text_idx (P,)) -> (P,) MACK scores, with
    the deduplicated union of the top-k pairs of both directions. For MACK's eq. 4, wrap
    mack.matching.score_pairs, for example
    `lambda i, t: score_pairs(knowledge, texts, images, i, t)`, or use
    mack.experiments.mack_pair_scorer, which also caches the scores.
    k: candidates re-ranked per query, at most min(n_images, n_texts). The top-k are the k highest
    base scores, ties at the k-th place going to the lower index.
    lam: weight of the MACK score. With k = 0 or lam = 0 the result's matrices equal base, and the
    scorer is not called.

    In the result's matrices, a re-ranked candidate's score is (query's max base score) + 1 +
    (dense rank of its combined score among the k). That keeps the order exact and above the rest
    while |base| < 2**50.
    """
    base = _check_base(base)
    k = _check_k(k, base.shape)
    lam = _check_lam(lam)
    n_images, n_texts = base.shape
    if k == 0 or lam == 0.0:
        return RerankResult(
            base,
            np.zeros((n_images, 0), dtype=np.int64),
            np.zeros((n_images, 0)),
            np.zeros((n_texts, 0), dtype=np.int64),
            np.zeros((n_texts, 0)),
        )

    top_texts = top_k_indices(base, k)  # (n_images, k)
    top_images = top_k_indices(base.T, k)  # (n_texts, k)
    images = np.arange(n_images)[:, None]
    texts = np.arange(n_texts)[:, None]
    codes_i2t = images * n_texts + top_texts
    codes_t2i = top_images * n_texts + texts
    pair_codes = np.concatenate([codes_i2t.ravel(), codes_t2i.ravel()])
    pair_codes.sort()
    pair_codes = pair_codes[np.concatenate([[True], pair_codes[1:] != pair_codes[:-1]])]
    image_idx, text_idx = np.divmod(pair_codes, n_texts)
    logger.info(
        "re-ranking top %d of %d x %d: scoring %d pairs", k, n_images, n_texts, len(pair_codes)
    )
    pair_scores = _score_pairs(pair_scorer, image_idx, text_idx)

    combined_i2t = (
        base[images, top_texts] + lam * pair_scores[np.searchsorted(pair_codes, codes_i2t)]
    )
    combined_t2i = (
        base[top_images, texts] + lam * pair_scores[np.searchsorted(pair_codes, codes_t2i)]
    )
    return RerankResult(
        base, top_texts, combined_i2t, top_images, combined_t2i, image_idx, text_idx, pair_scores
    )


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Return the columns of the k highest scores of each row, ties at the k-th place to the lower index.

    scores: (n_queries, n_candidates) float32 or float64, may be a transposed view.
    Returns (n_queries, k) int64, in no particular order within a row.
    """
    n_queries, n_candidates = scores.shape
    if not 0 <= k <= n_candidates:
        raise ValueError(f"k={k} must be between 0 and the {n_candidates} candidates per query")
    top = np.empty((n_queries, k), dtype=np.int64)
    if k == 0:
        return top
    # A transposed view is copied block by block into one buffer, reused (fresh memory is slow to
    # touch: the first copy of a 500 MB matrix took 1.4 s, the next ones 0.16 s).
    buffer = None
    if not scores.flags.c_contiguous:
        buffer = np.empty((min(_QUERY_BLOCK, n_queries), n_candidates), dtype=scores.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for start in range(0, n_queries, _QUERY_BLOCK):
            block = scores[start : start + _QUERY_BLOCK]
            if buffer is not None:
                block = _copy_in_tiles(block, buffer[: len(block)])
            # One value more than needed shows whether the k-th place is tied with the next one.
            n_values = min(k + 1, n_candidates)
            values, indices = torch.topk(torch.from_numpy(block), n_values, dim=1)
            top[start : start + len(block)] = indices[:, :k].numpy()

            # torch.topk picks among ties in an unspecified way, so rows tied there are redone.
            if n_values > k:
                values = values.numpy()
                for row in np.flatnonzero(values[:, k] == values[:, k - 1]):
                    top[start + row] = _top_k_row(block[row], k)
    return top


def _copy_in_tiles(block: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy `block` (n, m), a transposed view, into the C-contiguous `out` in column tiles.

    Copying 1024 columns at a time reads the source in runs. On a 5000 x 25000 float32 matrix this
    took 0.35 s, against 1.4 s for torch's copy_ (one run on 2 shared cores).
    """
    for start in range(0, block.shape[1], _TILE):
        out[:, start : start + _TILE] = block[:, start : start + _TILE]
    return out


def _top_k_row(row: np.ndarray, k: int) -> np.ndarray:
    """Return the indices (k,) of the k highest entries of `row` (n,), ties going to lower indices."""
    kth = np.partition(row, len(row) - k)[len(row) - k]
    above = np.flatnonzero(row > kth)
    tied = np.flatnonzero(row == kth)[: k - len(above)]
    return np.concatenate([above, tied])


def _reranked_scores(base_top: np.ndarray, combined: np.ndarray) -> np.ndarray:
    """Return (n_queries, k) scores ordering the top-k by `combined`, above the query's max base."""
    return base_top.max(axis=1, keepdims=True) + 1.0 + _dense_rank(combined)


def _dense_rank(values: np.ndarray) -> np.ndarray:
    """Return the dense rank of each entry within its row (0 = lowest, equal values share a rank).

    values: (n_rows, k). Returns (n_rows, k) float64.
    """
    order = np.argsort(values, axis=1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=1)
    steps = np.zeros(values.shape, dtype=np.float64)
    steps[:, 1:] = np.cumsum(sorted_values[:, 1:] > sorted_values[:, :-1], axis=1)
    ranks = np.empty_like(steps)
    np.put_along_axis(ranks, order, steps, axis=1)
    return ranks


def _score_pairs(
    pair_scorer: PairScorer, image_idx: np.ndarray, text_idx: np.ndarray
) -> np.ndarray:
    """Call the scorer once and return its (P,) float64 scores after checking shape and finiteness."""
    scores = np.asarray(pair_scorer(image_idx, text_idx), dtype=np.float64)
    if scores.shape != image_idx.shape:
        raise ValueError(
            f"pair_scorer returned shape {scores.shape} for {len(image_idx)} pairs; "
            "it must return one score per (image_idx, text_idx) pair"
        )
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        first = int(bad[0])
        raise ValueError(
            f"pair_scorer returned {len(bad)} NaN or inf scores, the first {scores[first]} for "
            f"image {image_idx[first]}, text {text_idx[first]}; fix the scorer (an empty text or "
            "image should score the lowest finite value)"
        )
    return scores


def _check_base(base: np.ndarray) -> np.ndarray:
    """Return `base` as a float32 or float64 (n_images, n_texts) array with finite values."""
    base = np.asarray(base)
    if not np.issubdtype(base.dtype, np.number) or np.issubdtype(base.dtype, np.complexfloating):
        raise ValueError(f"base must contain real numbers, got dtype {base.dtype}")
    if base.dtype not in (np.float32, np.float64):
        base = base.astype(np.float64)
    if base.ndim != 2 or 0 in base.shape:
        raise ValueError(
            f"base has shape {base.shape}, expected a non-empty (n_images, n_texts) matrix"
        )

    # min or max is NaN or inf exactly when some entry is, so two reductions replace an (n, m) mask.
    if np.isfinite(base.min()) and np.isfinite(base.max()):
        return base
    finite = np.isfinite(base)
    if not finite.all():
        image, text = (int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"base contains {int(base.size - finite.sum())} NaN or inf values, the first "
            f"{base[image, text]} at image {image}, text {text}; fix the base model's scores"
        )
    return base


def _check_k(k: int, shape: tuple[int, int]) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    n_images, n_texts = shape
    if k > min(n_images, n_texts):
        raise ValueError(
            f"k={k} exceeds the candidates per query ({n_texts} texts per image, {n_images} "
            f"images per text); pass k <= {min(n_images, n_texts)}"
        )
    return int(k)


def _check_lam(lam: float) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)):
        raise ValueError(f"lam must be a real number, got {lam!r}")
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    return float(lam)
