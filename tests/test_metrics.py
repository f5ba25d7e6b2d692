"""Tests of mack.metrics against hand-worked cases and SCAN-style sort loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mack.metrics import (
    chance_recall,
    evaluate,
    image_to_text_ranks,
    recall_at_k,
    text_to_image_ranks,
)

# Image 0's best caption is text 2 (0.9), beaten only by text 6 (0.95) of image 1.
# Image 1's best caption is text 7 (0.7), and no caption of image 0 reaches 0.7.
HAND_SIMS = np.array(
    [
        [0.1, 0.2, 0.9, 0.3, 0.0, 0.5, 0.95, 0.4, 0.2, 0.1],
        [0.6, 0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.7, 0.6, 0.5],
    ]
)


def sort_loop_image_to_text(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
    """SCAN i2t: position of the best-placed true caption in the descending sort of the row."""
    ranks = np.zeros(sims.shape[0], dtype=np.int64)
    for image in range(sims.shape[0]):
        order = np.argsort(sims[image])[::-1]
        true_texts = range(captions_per_image * image, captions_per_image * (image + 1))
        ranks[image] = min(np.flatnonzero(order == text)[0] for text in true_texts)
    return ranks


def sort_loop_text_to_image(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
    """SCAN t2i: position of the caption's image in the descending sort of the column."""
    ranks = np.zeros(sims.shape[1], dtype=np.int64)
    for text in range(sims.shape[1]):
        order = np.argsort(sims[:, text])[::-1]
        ranks[text] = np.flatnonzero(order == text // captions_per_image)[0]
    return ranks


def tie_loop_image_to_text(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
    """Count, per image, the negative captions scoring >= its best true caption."""
    ranks = np.zeros(sims.shape[0], dtype=np.int64)
    for image in range(sims.shape[0]):
        true_texts = set(range(captions_per_image * image, captions_per_image * (image + 1)))
        best = max(sims[image, text] for text in true_texts)
        negatives = [t for t in range(sims.shape[1]) if t not in true_texts]
        ranks[image] = sum(1 for text in negatives if sims[image, text] >= best)
    return ranks


def tie_loop_text_to_image(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
    """Count, per caption, the other images scoring >= the caption's image."""
    ranks = np.zeros(sims.shape[1], dtype=np.int64)
    for text in range(sims.shape[1]):
        true_image = text // captions_per_image
        true_score = sims[true_image, text]
        others = [i for i in range(sims.shape[0]) if i != true_image]
        ranks[text] = sum(1 for image in others if sims[image, text] >= true_score)
    return ranks


def test_hand_built_ranks():
    np.testing.assert_array_equal(image_to_text_ranks(HAND_SIMS), [1, 0])
    np.testing.assert_array_equal(text_to_image_ranks(HAND_SIMS), [1, 0, 0, 0, 1, 1, 1, 0, 0, 0])


def test_hand_built_evaluate():
    result = evaluate(HAND_SIMS)

    assert result["image_to_text"] == {
        "r1": 50.0,
        "r5": 100.0,
        "r10": 100.0,
        "medr": 1.0,
        "meanr": 1.5,
    }
    assert result["text_to_image"] == pytest.approx(
        {"r1": 60.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.4}
    )
    assert result["rsum"] == pytest.approx(510.0)


def test_constant_scores_never_hit():
    sims = HAND_SIMS.copy()
    sims[0] = 0.3
    assert image_to_text_ranks(sims)[0] == 5  # all 5 negatives tie with the true captions

    sims = np.zeros((4, 20))
    np.testing.assert_array_equal(image_to_text_ranks(sims), [15] * 4)
    np.testing.assert_array_equal(text_to_image_ranks(sims), [3] * 20)
    result = evaluate(sims)
    assert result["image_to_text"]["r1"] == 0.0
    assert result["text_to_image"]["r1"] == 0.0


def test_tie_with_one_negative_counts_against():
    sims = np.zeros((2, 10))
    sims[0, 3] = 1.0
    sims[0, 8] = 1.0  # a caption of image 1 ties with image 0's best caption
    sims[1, 8] = 1.0  # image 1 ties with image 0 on caption 8

    assert image_to_text_ranks(sims)[0] == 1
    assert text_to_image_ranks(sims)[8] == 1


def test_ranks_match_sort_loops_on_random_scores():
    rng = np.random.default_rng(0)
    for n_images, captions_per_image in [(30, 5), (17, 3), (8, 1)]:
        sims = rng.normal(size=(n_images, n_images * captions_per_image))
        np.testing.assert_array_equal(
            image_to_text_ranks(sims, captions_per_image),
            sort_loop_image_to_text(sims, captions_per_image),
        )
        np.testing.assert_array_equal(
            text_to_image_ranks(sims, captions_per_image),
            sort_loop_text_to_image(sims, captions_per_image),
        )


def test_ranks_match_tie_loops_on_discrete_scores():
    rng = np.random.default_rng(1)
    sims = rng.integers(0, 4, size=(12, 60)).astype(np.float32)

    np.testing.assert_array_equal(image_to_text_ranks(sims), tie_loop_image_to_text(sims))
    np.testing.assert_array_equal(text_to_image_ranks(sims), tie_loop_text_to_image(sims))


def test_ranks_span_row_chunks():
    rng = np.random.default_rng(2)
    sims = rng.normal(size=(600, 3000)).astype(np.float32)  # more rows than one 256-row chunk

    np.testing.assert_array_equal(image_to_text_ranks(sims), sort_loop_image_to_text(sims))
    np.testing.assert_array_equal(text_to_image_ranks(sims), sort_loop_text_to_image(sims))


def test_five_fold_mean():
    # Folds 0 and 1 rank perfectly, folds 2-4 score a constant 0, and every score across folds is 10.
    sims = np.full((10, 50), 10.0)
    for fold in range(5):
        block = np.zeros((2, 10))
        if fold < 2:
            block[0, :5] = block[1, 5:] = 1.0
        sims[2 * fold : 2 * fold + 2, 10 * fold : 10 * fold + 10] = block
    result = evaluate(sims, folds=5)

    assert result["image_to_text"] == pytest.approx(
        {"r1": 40.0, "r5": 40.0, "r10": 100.0, "medr": 4.0, "meanr": 4.0}
    )
    assert result["text_to_image"] == pytest.approx(
        {"r1": 40.0, "r5": 100.0, "r10": 100.0, "medr": 1.6, "meanr": 1.6}
    )
    assert result["rsum"] == pytest.approx(420.0)
    assert evaluate(sims)["image_to_text"]["r10"] == 0.0  # without folds the 10s win


def test_folds_equal_mean_of_block_evaluations():
    rng = np.random.default_rng(3)
    sims = rng.normal(size=(12, 60))
    result = evaluate(sims, folds=3)
    blocks = [evaluate(sims[4 * f : 4 * f + 4, 20 * f : 20 * f + 20]) for f in range(3)]

    for direction in ("image_to_text", "text_to_image"):
        for name, value in result[direction].items():
            assert value == pytest.approx(np.mean([b[direction][name] for b in blocks]))
    assert result["rsum"] == pytest.approx(np.mean([b["rsum"] for b in blocks]))
    assert evaluate(sims, folds=1) == evaluate(sims)
    with pytest.raises(ValueError, match="12 images do not split into 5"):
        evaluate(sims, folds=5)


def test_separate_direction_matrices():
    perfect = np.zeros((3, 15))
    for image in range(3):
        perfect[image, 5 * image : 5 * image + 5] = 1.0
    result = evaluate(perfect, np.zeros((3, 15)))

    assert result["image_to_text"]["r1"] == 100.0
    assert result["text_to_image"]["r1"] == 0.0
    with pytest.raises(ValueError, match="sims_t2i"):
        evaluate(perfect, np.zeros((3, 16)))


def test_nan_raises_with_position():
    sims = HAND_SIMS.copy()
    sims[1, 7] = np.nan
    with pytest.raises(ValueError, match="image 1, text 7"):
        image_to_text_ranks(sims)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(sims)


def test_bad_shape_raises():
    with pytest.raises(ValueError, match=r"shape \(2, 9\)"):
        image_to_text_ranks(np.zeros((2, 9)))
    with pytest.raises(ValueError, match="shape"):
        text_to_image_ranks(np.zeros(10))
    with pytest.raises(ValueError, match="non-empty"):
        recall_at_k(np.array([], dtype=np.int64), 1)


def test_chance_recall_hand_values():
    chance = chance_recall(2)

    assert chance["text_to_image"] == {"r1": 50.0, "r5": 100.0, "r10": 100.0}
    assert chance["image_to_text"]["r1"] == pytest.approx(50.0)
    assert chance["image_to_text"]["r5"] == pytest.approx(100 * (1 - 1 / math.comb(10, 5)))
    assert chance["image_to_text"]["r10"] == 100.0
    assert chance_recall(1000)["text_to_image"]["r10"] == pytest.approx(1.0)


def test_chance_recall_matches_monte_carlo():
    n_images, trials = 20, 1000
    rng = np.random.default_rng(4)
    sums = {"image_to_text": np.zeros(3), "text_to_image": np.zeros(3)}
    for _ in range(trials):
        sims = rng.random((n_images, 5 * n_images))
        for direction, ranks in (
            ("image_to_text", image_to_text_ranks(sims)),
            ("text_to_image", text_to_image_ranks(sims)),
        ):
            sums[direction] += [recall_at_k(ranks, k) for k in (1, 5, 10)]
    chance = chance_recall(n_images)

    for direction, n_queries in (("image_to_text", n_images), ("text_to_image", 5 * n_images)):
        for index, k in enumerate((1, 5, 10)):
            expected = chance[direction][f"r{k}"]
            p = expected / 100
            tolerance = 4 * 100 * math.sqrt(p * (1 - p) / (n_queries * trials)) + 1e-9
            assert sums[direction][index] / trials == pytest.approx(expected, abs=tolerance)
