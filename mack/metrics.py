"""Recall@K, median and mean rank of image-text retrieval (SCAN / VSE++ protocol).

Caption 5i .. 5i+4 belongs to image i (`captions_per_image` generalises the 5). Ties count against
the query: a query's 0-based rank is the number of NEGATIVE candidates that score >= its best true
match, so a text that scores the same against every image is never a hit at R@1.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)
_ROW_CHUNK = 256  # image rows compared at a time, bounds the temporary bool array to 256 x n_texts


def image_to_text_ranks(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
    """Return the 0-based rank of each image's best-ranked true caption.

    sims: (n_images, n_texts) similarities, n_texts = captions_per_image * n_images.
    Returns (n_images,) int64, the number of other images' captions scoring >= the image's best
    true caption.
    """
    return _image_to_text_ranks(check_sims(sims, captions_per_image), captions_per_image)


def _image_to_text_ranks(sims: np.ndarray, captions_per_image: int) -> np.ndarray:
    n_images = sims.shape[0]
    ranks = np.empty(n_images, dtype=np.int64)

    for start in range(0, n_images, _ROW_CHUNK):
        rows = sims[start : start + _ROW_CHUNK]
        images = np.arange(start, start + len(rows))
        true_columns = images[:, None] * captions_per_image + np.arange(captions_per_image)
        true_scores = np.take_along_axis(rows, true_columns, axis=1)
        best = true_scores.max(axis=1, keepdims=True)
        at_least_best = np.count_nonzero(rows >= best, axis=1)
        true_at_least_best = np.count_nonzero(true_scores >= best, axis=1)
        ranks[start : start + len(rows)] = at_least_best - true_at_least_best
    return ranks


def text_to_image_ranks(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
    """Return the 0-based rank of each caption's own image.

    sims: (n_images, n_texts) similarities, n_texts = captions_per_image * n_images.
    Returns (n_texts,) int64, the number of other images scoring >= the caption's image.
    """
    return _text_to_image_ranks(check_sims(sims, captions_per_image), captions_per_image)


def _text_to_image_ranks(sims: np.ndarray, captions_per_image: int) -> np.ndarray:
    n_images, n_texts = sims.shape
    true_images = np.arange(n_texts) // captions_per_image
    true_scores = sims[true_images, np.arange(n_texts)]

    at_least_true = np.zeros(n_texts, dtype=np.int64)
    for start in range(0, n_images, _ROW_CHUNK):
        at_least_true += np.count_nonzero(sims[start : start + _ROW_CHUNK] >= true_scores, axis=0)
    return at_least_true - 1


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Return R@k in percent: the share of 0-based `ranks` (n_queries,) below k."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    return 100.0 * float(np.mean(ranks < k))


def median_rank(ranks: np.ndarray) -> float:
    """Return medr, 1-based: floor(median(ranks)) + 1 as in SCAN, for 0-based `ranks` (n,)."""
    return float(np.floor(np.median(ranks)) + 1)


def mean_rank(ranks: np.ndarray) -> float:
    """Return meanr, 1-based: mean(ranks) + 1, for 0-based `ranks` (n,)."""
    return float(np.mean(ranks) + 1)


def rank_metrics(ranks: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """Return {"r1", "r5", "r10", "medr", "meanr"} of 0-based `ranks` (n_queries,)."""
    metrics = {f"r{k}": recall_at_k(ranks, k) for k in ks}
    metrics["medr"] = median_rank(ranks)
    metrics["meanr"] = mean_rank(ranks)
    return metrics


def evaluate(
    sims_i2t: np.ndarray,
    sims_t2i: np.ndarray | None = None,
    captions_per_image: int = 5,
    folds: int | None = None,
) -> dict:
    """Compute R@1/5/10, medr and meanr of both directions, and rsum.

    sims_i2t: (n_images, n_texts) scores ranked per row, for image_to_text.
    sims_t2i: (n_images, n_texts) scores ranked per column, for text_to_image; None reuses sims_i2t.
    Ground truth: texts c * i to c * i + c - 1 (c = captions_per_image) are the captions of image
    i, the order of the Flickr30k and COCO test files.
    folds: None for one evaluation over all images, or F >= 1 for the mean of each metric over F
    consecutive folds of n_images / F images and their captions (COCO 1K protocol: F = 5 on 5K).
    Returns {"image_to_text": {...}, "text_to_image": {...}, "rsum": float}.
    """
    sims_i2t = check_sims(sims_i2t, captions_per_image, name="sims_i2t")
    if sims_t2i is None:
        sims_t2i = sims_i2t
    else:
        sims_t2i = check_sims(sims_t2i, captions_per_image, name="sims_t2i")
    if sims_t2i.shape != sims_i2t.shape:
        raise ValueError(
            f"sims_i2t has shape {sims_i2t.shape} but sims_t2i has shape {sims_t2i.shape}; "
            "both must score the same images and texts"
        )

    fold_results = []
    for images, texts in _fold_slices(sims_i2t.shape[0], captions_per_image, folds):
        fold_results.append(
            {
                "image_to_text": rank_metrics(
                    _image_to_text_ranks(sims_i2t[images, texts], captions_per_image)
                ),
                "text_to_image": rank_metrics(
                    _text_to_image_ranks(sims_t2i[images, texts], captions_per_image)
                ),
            }
        )
    return _mean_over_folds(fold_results)


def chance_recall(
    n_images: int, captions_per_image: int = 5, ks: tuple[int, ...] = RECALL_KS
) -> dict:
    """Return the expected R@k (percent) of random continuous scores, for both directions and rsum.

    text_to_image: the true image is one of n_images, so P(hit) = k / n_images.
    image_to_text: hit when at least one of the c true captions is among the top k of c * n_images,
    so P(hit) = 1 - C(n_neg, k) / C(n_texts, k) with n_neg = n_texts - c (hypergeometric).
    """
    if n_images < 1 or captions_per_image < 1:
        raise ValueError(
            f"n_images and captions_per_image must be positive, got {n_images}, {captions_per_image}"
        )
    n_texts = n_images * captions_per_image
    n_negatives = n_texts - captions_per_image

    image_to_text, text_to_image = {}, {}
    for k in ks:
        miss = math.prod((n_negatives - i) / (n_texts - i) for i in range(min(k, n_negatives + 1)))
        image_to_text[f"r{k}"] = 100.0 * (1.0 - miss)
        text_to_image[f"r{k}"] = 100.0 * min(k, n_images) / n_images
    rsum = sum(image_to_text.values()) + sum(text_to_image.values())
    return {"image_to_text": image_to_text, "text_to_image": text_to_image, "rsum": rsum}


def check_sims(sims: np.ndarray, captions_per_image: int = 5, name: str = "sims") -> np.ndarray:
    """Return `sims` as a numeric 2-D array after checking its shape and that it has no NaN.

    sims: (n_images, n_texts) with n_texts = captions_per_image * n_images.
    """
    sims = np.asarray(sims)
    if not np.issubdtype(sims.dtype, np.number) or np.issubdtype(sims.dtype, np.complexfloating):
        raise ValueError(f"{name} must contain real numbers, got dtype {sims.dtype}")
    if isinstance(captions_per_image, bool) or not isinstance(
        captions_per_image, (int, np.integer)
    ):
        raise ValueError(f"captions_per_image must be an int, got {captions_per_image!r}")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be positive, got {captions_per_image}")
    if sims.ndim != 2 or sims.shape[0] == 0 or sims.shape[1] != captions_per_image * sims.shape[0]:
        raise ValueError(
            f"{name} has shape {sims.shape}, expected (n_images, {captions_per_image} * n_images) "
            "with caption c * i .. c * i + c - 1 belonging to image i"
        )

    nan_mask = np.isnan(sims)
    if nan_mask.any():
        image, text = (int(i) for i in np.argwhere(nan_mask)[0])
        raise ValueError(
            f"{name} contains {int(nan_mask.sum())} NaN values, the first at image {image}, "
            f"text {text}; a NaN has no rank, so fix the scorer that produced it"
        )
    return sims


def _fold_slices(n_images: int, captions_per_image: int, folds: int | None):
    """Yield (image slice, text slice) for each fold, one fold covering everything when None."""
    if folds is None:
        folds = 1
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 1:
        raise ValueError(f"folds must be None or a positive int, got {folds!r}")
    if n_images % folds:
        raise ValueError(
            f"{n_images} images do not split into {folds} equal folds; pass folds that divide "
            "n_images (5 folds of 1,000 for the COCO 5K test set) or folds=None"
        )

    fold_size = n_images // folds
    for fold in range(folds):
        start = fold * fold_size
        images = slice(start, start + fold_size)
        texts = slice(start * captions_per_image, (start + fold_size) * captions_per_image)
        yield images, texts


def _mean_over_folds(fold_results: list[dict]) -> dict:
    """Average every metric over folds; rsum is the sum of the averaged recalls."""
    result: dict = {}
    for direction in ("image_to_text", "text_to_image"):
        names = fold_results[0][direction].keys()
        result[direction] = {
            name: float(np.mean([fold[direction][name] for fold in fold_results])) for name in names
        }
    recall_names = [f"r{k}" for k in RECALL_KS]
    result["rsum"] = sum(
        result[direction][name]
        for direction in ("image_to_text", "text_to_image")
        for name in recall_names
    )
    return result
