"""Tests of mack.rerank against a per-query sort loop."""

from __future__ import annotations

import numpy as np
import pytest

from mack.metrics import evaluate, image_to_text_ranks, text_to_image_ranks
from mack.rerank import rerank, top_k_indices


def wave_scorer(image_idx: np.ndarray, text_idx: np.ndarray) -> np.ndarray:
    """Deterministic MACK stand-in: a score for any (image, text) pair."""
    return np.sin(7.0 * image_idx + 3.0 * text_idx)


class RecordingScorer:
    """Pair scorer that records every call."""

    def __init__(self, score=wave_scorer):
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.score = score

    def __call__(self, image_idx, text_idx):
        self.calls.append((image_idx.copy(), text_idx.copy()))
        return self.score(image_idx, text_idx)


def never_called(image_idx, text_idx):
    raise AssertionError("the pair scorer must not be called")


def expected_order(base_row: np.ndarray, mack_row: np.ndarray, k: int, lam: float) -> list[int]:
    """Sort loop: top-k by base re-sorted by base + lam * mack, then the rest in base order."""
    base_order = [int(i) for i in np.argsort(-base_row, kind="stable")]
    top, rest = base_order[:k], base_order[k:]
    top.sort(key=lambda i: -(base_row[i] + lam * mack_row[i]))
    return top + rest


def order_of(scores_row: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores_row, kind="stable")]


def test_k_zero_and_lam_zero_change_nothing():
    base = np.random.default_rng(0).normal(size=(6, 30)).astype(np.float32)
    for k, lam in ((0, 0.1), (5, 0.0)):
        result = rerank(base, never_called, k=k, lam=lam)

        assert result.image_to_text.dtype == np.float64
        np.testing.assert_array_equal(result.image_to_text, base)
        np.testing.assert_array_equal(result.text_to_image, base)
        assert len(result.image_idx) == 0


def test_true_caption_moves_up():
    base = np.zeros((4, 20))
    base[0, [7, 8]] = [0.9, 0.8]  # two captions of image 1 beat image 0's captions
    base[0, 2] = 0.7  # image 0's best caption, base rank 2
    base[1, 2] = 0.75  # image 1 beats image 0 on caption 2

    def scorer(image_idx, text_idx):
        return np.where((image_idx == 0) & (text_idx == 2), 5.0, 0.0)

    result = rerank(base, scorer, k=3, lam=0.1)

    assert image_to_text_ranks(base)[0] == 2
    assert image_to_text_ranks(result.image_to_text)[0] == 0
    assert text_to_image_ranks(base)[2] == 1
    assert text_to_image_ranks(result.text_to_image)[2] == 0
    assert order_of(result.image_to_text[0])[:3] == [2, 7, 8]


def test_only_top_k_reordered():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(20, 100))
    k, lam = 5, 0.5
    result = rerank(base, wave_scorer, k=k, lam=lam)
    images, texts = np.meshgrid(np.arange(20), np.arange(100), indexing="ij")
    mack = wave_scorer(images, texts)

    for image in range(20):
        expected = expected_order(base[image], mack[image], k, lam)
        assert order_of(result.image_to_text[image]) == expected
    for text in range(100):
        expected = expected_order(base[:, text], mack[:, text], k, lam)
        assert order_of(result.text_to_image[:, text]) == expected


def test_rest_keep_base_scores():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(10, 50))
    result = rerank(base, wave_scorer, k=4, lam=1.0)

    changed_i2t = result.image_to_text != base
    changed_t2i = result.text_to_image != base
    assert (changed_i2t.sum(axis=1) <= 4).all()
    assert (changed_t2i.sum(axis=0) <= 4).all()
    top_texts = np.argsort(-base, axis=1)[:, :4]
    assert not changed_i2t[np.arange(10)[:, None], np.argsort(-base, axis=1)[:, 4:]].any()
    assert (
        result.image_to_text[np.arange(10)[:, None], top_texts] > base.max(axis=1)[:, None]
    ).all()


def test_many_queries_span_blocks():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(12, 4200)).astype(np.float32)  # 4200 text queries, two 4096 blocks
    k, lam = 4, 0.3
    result = rerank(base, wave_scorer, k=k, lam=lam)
    images, texts = np.meshgrid(np.arange(12), np.arange(4200), indexing="ij")
    mack = wave_scorer(images, texts)

    for text in range(0, 4200, 7):
        expected = expected_order(base[:, text].astype(np.float64), mack[:, text], k, lam)
        assert order_of(result.text_to_image[:, text]) == expected


def test_scorer_called_once_with_top_k_pairs():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(15, 75))
    scorer = RecordingScorer()
    result = rerank(base, scorer, k=3)

    assert len(scorer.calls) == 1
    image_idx, text_idx = scorer.calls[0]
    pairs = list(zip(image_idx.tolist(), text_idx.tolist(), strict=True))
    expected = set()
    for image in range(15):
        expected |= {(image, int(t)) for t in np.argsort(-base[image])[:3]}
    for text in range(75):
        expected |= {(int(i), text) for i in np.argsort(-base[:, text])[:3]}
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == expected
    np.testing.assert_array_equal(result.pair_scores, wave_scorer(image_idx, text_idx))


def test_ties_go_to_lower_index():
    np.testing.assert_array_equal(
        np.sort(top_k_indices(np.zeros((2, 9)), 3), axis=1), [[0, 1, 2]] * 2
    )
    scores = np.array([[1.0, 0.5, 0.5, 0.5, 2.0, 0.5]])
    np.testing.assert_array_equal(np.sort(top_k_indices(scores, 3), axis=1), [[0, 1, 4]])
    np.testing.assert_array_equal(
        np.sort(top_k_indices(scores.T.copy().T, 4), axis=1), [[0, 1, 2, 4]]
    )


def test_combined_ties_stay_tied():
    base = np.zeros((3, 15))
    result = rerank(base, lambda i, t: np.zeros(len(i)), k=2, lam=0.1)

    np.testing.assert_array_equal(result.image_to_text[:, :2], 1.0)
    np.testing.assert_array_equal(result.image_to_text[:, 2:], 0.0)
    assert evaluate(result.image_to_text, result.text_to_image)["text_to_image"]["r1"] == 0.0


def test_invalid_inputs_raise():
    base = np.random.default_rng(5).normal(size=(4, 20))
    with pytest.raises(ValueError, match="shape"):
        rerank(base[0], wave_scorer)
    with pytest.raises(ValueError, match="k=5 exceeds"):
        rerank(base, wave_scorer, k=5)
    with pytest.raises(ValueError, match="non-negative"):
        rerank(base, wave_scorer, k=-1)
    with pytest.raises(ValueError, match="lam"):
        rerank(base, wave_scorer, k=2, lam=float("nan"))

    broken = base.copy()
    broken[2, 11] = np.nan
    with pytest.raises(ValueError, match="image 2, text 11"):
        rerank(broken, wave_scorer, k=2)


def test_bad_scorer_output_raises():
    base = np.random.default_rng(6).normal(size=(4, 20))

    def nan_scorer(image_idx, text_idx):
        scores = np.zeros(len(image_idx))
        scores[1] = np.nan
        return scores

    with pytest.raises(ValueError, match="1 NaN or inf scores"):
        rerank(base, nan_scorer, k=2)
    with pytest.raises(ValueError, match="returned shape"):
        rerank(base, lambda i, t: np.zeros(3), k=2)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_base_raises(bad: float):
    base = np.random.default_rng(7).normal(size=(4, 20)).astype(np.float32)
    base[3, 5] = bad

    with pytest.raises(ValueError, match="image 3, text 5"):
        rerank(base, wave_scorer, k=2)


def test_result_builds_matrices_on_first_use():
    base = np.random.default_rng(8).normal(size=(5, 30)).astype(np.float32)

    result = rerank(base, wave_scorer, k=3, lam=0.5)

    assert result.base is base  # not copied
    assert "image_to_text" not in vars(result)
    assert "text_to_image" not in vars(result)
    image_to_text = result.image_to_text
    assert image_to_text.dtype == np.float64
    assert result.image_to_text is image_to_text  # built once
    assert result.top_texts.shape == (5, 3)
    assert result.top_images.shape == (30, 3)
