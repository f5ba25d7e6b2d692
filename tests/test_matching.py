"""Tests for mack.matching (eq. 4): the fast path against the per-pair loop and hand-worked cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mack import config
from mack.knowledge import ATTRIBUTE, OBJECT, Knowledge
from mack.matching import (
    EMPTY_SCORE,
    POOLINGS,
    PROTOTYPES,
    ImageRegions,
    empty_counts,
    reference_score_matrix,
    score_matrix,
    score_pairs,
    unit_features,
)
from mack.text import ParsedText, Unit

from helpers import needs_real_data

OBJECTS = [f"object{i}" for i in range(8)] + ["tennis racket"]
ATTRIBUTES = [f"attribute{i}" for i in range(4)]
DIM = 16
W_MODES = ["none", "both", "words"]


def make_knowledge(objects, attributes, prototypes, random_regions=None) -> Knowledge:
    words = list(objects) + list(attributes)
    return Knowledge(
        words=words,
        types=[OBJECT] * len(objects) + [ATTRIBUTE] * len(attributes),
        prototypes=np.asarray(prototypes, dtype=np.float32),
        counts=np.ones(len(words), dtype=np.int64),
        provenance={"source": "tests/test_matching.py"},
        random_regions=None if random_regions is None else np.asarray(random_regions, np.float32),
    )


def random_knowledge(seed: int = 0, dim: int = DIM) -> Knowledge:
    rng = np.random.default_rng(seed)
    n_words = len(OBJECTS) + len(ATTRIBUTES)
    prototypes = rng.normal(size=(n_words, dim))
    random_regions = rng.normal(size=(n_words, dim))
    return make_knowledge(OBJECTS, ATTRIBUTES, prototypes, random_regions)


def random_texts(seed: int = 0, n_texts: int = 9) -> list[ParsedText]:
    """Texts with 0 to 4 units, 0 to 2 adjectives each, repeated words, and one empty text."""
    rng = np.random.default_rng(seed)
    texts = [ParsedText(text="empty", units=[], unknown=["zebra"], dropped_adjectives=0)]
    for t in range(n_texts - 1):
        units = []
        for _ in range(rng.integers(1, 5)):
            noun = OBJECTS[rng.integers(len(OBJECTS))]
            adjectives = tuple(
                ATTRIBUTES[j] for j in rng.integers(len(ATTRIBUTES), size=rng.integers(3))
            )
            units.append(Unit(noun=noun, adjectives=adjectives))
        texts.append(ParsedText(text=f"text {t}", units=units, unknown=[], dropped_adjectives=0))
    texts.append(
        ParsedText(
            text="a red red dog and another dog",
            units=[Unit(OBJECTS[0], (ATTRIBUTES[1], ATTRIBUTES[1])), Unit(OBJECTS[0], ())],
            unknown=[],
            dropped_adjectives=0,
        )
    )
    return texts


def random_images(seed: int = 0, dim: int = DIM) -> ImageRegions:
    """Images with 0 to 5 regions; padding rows are NaN so any use of them would show."""
    rng = np.random.default_rng(seed)
    counts = np.array([5, 3, 0, 1, 5, 2, 4])
    features = rng.normal(size=(len(counts), 5, dim)).astype(np.float32)
    for i, count in enumerate(counts):
        features[i, count:] = np.nan
    return ImageRegions(features, counts)


def w_options(mode: str, dim: int = DIM, seed: int = 1) -> dict:
    if mode == "none":
        return {"W": None}
    rng = np.random.default_rng(seed)
    W = (np.eye(dim) + 0.5 * rng.normal(size=(dim, dim))).astype(np.float32)
    return {"W": W, "transform": mode}


@pytest.fixture(scope="module")
def world():
    return random_knowledge(), random_texts(), random_images()


@pytest.mark.parametrize("w_mode", W_MODES)
@pytest.mark.parametrize("prototype", PROTOTYPES)
@pytest.mark.parametrize("use_adjectives", [True, False])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_fast_matches_reference(world, pooling, use_adjectives, prototype, w_mode):
    knowledge, texts, images = world
    options = dict(
        pooling=pooling, use_adjectives=use_adjectives, prototype=prototype, progress=False
    )
    options.update(w_options(w_mode))

    expected = reference_score_matrix(knowledge, texts, images, **options)
    fast = score_matrix(knowledge, texts, images, chunk_size=3, **options)

    assert fast.shape == (len(images), len(texts))
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("w_mode", W_MODES)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_pairs_match_matrix(world, pooling, w_mode):
    knowledge, texts, images = world
    options = dict(pooling=pooling, progress=False, **w_options(w_mode))
    matrix = score_matrix(knowledge, texts, images, **options)
    rng = np.random.default_rng(3)
    image_idx = rng.integers(len(images), size=40)
    text_idx = rng.integers(len(texts), size=40)
    image_idx[:2], text_idx[:2] = 4, 5  # a repeated pair

    pairs = score_pairs(knowledge, texts, images, image_idx, text_idx, chunk_size=2, **options)

    assert pairs.shape == (40,)
    np.testing.assert_allclose(pairs, matrix[image_idx, text_idx], atol=1e-6, rtol=0)


def test_pairs_empty_list(world):
    knowledge, texts, images = world
    empty = np.array([], dtype=np.int64)
    assert score_pairs(knowledge, texts, images, empty, empty, progress=False).shape == (0,)


def test_pairs_out_of_range_raises(world):
    knowledge, texts, images = world
    with pytest.raises(ValueError, match=r"text_idx\[1\] = 99"):
        score_pairs(knowledge, texts, images, np.array([0, 1]), np.array([0, 99]), progress=False)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, None])
def test_chunk_size_keeps_scores(world, chunk_size):
    knowledge, texts, images = world
    whole = score_matrix(knowledge, texts, images, chunk_size=len(images), progress=False)
    chunked = score_matrix(knowledge, texts, images, chunk_size=chunk_size, progress=False)
    np.testing.assert_allclose(chunked, whole, atol=1e-6, rtol=0)


def hand_worked_case():
    """2-d case: unit 1 = mean((1, 0), (1, 1)) = (1, 0.5), unit 2 = (0, 1).

    Regions (1, 0), (0, 2), (3, 3) and a padding row (2, 1) parallel to unit 1. Cosines:
    unit 1: 2/sqrt(5), 1/sqrt(5), 3/sqrt(10); unit 2: 0, 1, 1/sqrt(2).
    """
    knowledge = make_knowledge(["dog", "cat"], ["brown"], [[1, 0], [0, 1], [1, 1]])
    text = ParsedText(
        text="a brown dog and a cat",
        units=[Unit("dog", ("brown",)), Unit("cat", ())],
        unknown=[],
        dropped_adjectives=0,
    )
    features = np.array([[[1, 0], [0, 2], [3, 3], [2, 1]]], dtype=np.float32)
    images = ImageRegions(features, np.array([3]))
    return knowledge, [text], images


HAND_WORKED = {
    "max_mean": (3 / math.sqrt(10) + 1) / 2,
    "mean_mean": ((1 / math.sqrt(5) + 1 / math.sqrt(10)) + (1 + 1 / math.sqrt(2)) / 3) / 2,
    "mean_max": 1 / math.sqrt(5) + 1 / math.sqrt(10),
    "max_max": 1.0,
}


@pytest.mark.parametrize("pooling", POOLINGS)
def test_hand_worked_poolings(pooling):
    knowledge, texts, images = hand_worked_case()
    expected = HAND_WORKED[pooling]

    fast = score_matrix(knowledge, texts, images, pooling=pooling, progress=False)
    reference = reference_score_matrix(knowledge, texts, images, pooling=pooling, progress=False)
    pair = score_pairs(knowledge, texts, images, [0], [0], pooling=pooling, progress=False)

    assert fast[0, 0] == pytest.approx(expected, abs=1e-6)
    assert reference[0, 0] == pytest.approx(expected, abs=1e-12)
    assert pair[0] == pytest.approx(expected, abs=1e-6)


def test_hand_worked_unit_features():
    knowledge, texts, _ = hand_worked_case()
    with_adjectives = unit_features(knowledge, texts[0])
    nouns_only = unit_features(knowledge, texts[0], use_adjectives=False)
    np.testing.assert_array_equal(with_adjectives, [[1.0, 0.5], [0.0, 1.0]])
    np.testing.assert_array_equal(nouns_only, [[1.0, 0.0], [0.0, 1.0]])
    assert with_adjectives.dtype == np.float32


def test_unit_features_random_region(world):
    knowledge, texts, _ = world
    parsed = texts[-1]  # units (object0, attribute1, attribute1) and (object0)
    rows = knowledge.index
    table = knowledge.random_regions.astype(np.float64)
    expected = [
        (table[rows[OBJECTS[0]]] + 2 * table[rows[ATTRIBUTES[1]]]) / 3,
        table[rows[OBJECTS[0]]],
    ]
    features = unit_features(knowledge, parsed, prototype="random_region")
    np.testing.assert_allclose(features, expected, atol=1e-6)


def test_unit_features_empty_text(world):
    knowledge, texts, _ = world
    assert unit_features(knowledge, texts[0]).shape == (0, DIM)


@pytest.mark.parametrize("transform", ["both", "words"])
def test_identity_W_keeps_scores(world, transform):
    knowledge, texts, images = world
    plain = score_matrix(knowledge, texts, images, progress=False)
    identity = np.eye(DIM, dtype=np.float32)
    transformed = score_matrix(
        knowledge, texts, images, W=identity, transform=transform, progress=False
    )
    np.testing.assert_array_equal(transformed, plain)


def max_mean_by_hand(units, regions) -> float:
    """Max over regions of each unit's cosine, then mean over units, with explicit loops."""
    maxima = []
    for u in units:
        cosines = [np.dot(u, r) / (np.linalg.norm(u) * np.linalg.norm(r)) for r in regions]
        maxima.append(max(cosines))
    return float(np.mean(maxima))


def test_transform_words_or_both():
    knowledge, texts, images = hand_worked_case()
    W = np.array([[1.0, 2.0], [0.0, 1.0]], dtype=np.float32)
    units = [W @ [1.0, 0.5], W @ [0.0, 1.0]]
    regions = [np.array([1.0, 0.0]), np.array([0.0, 2.0]), np.array([3.0, 3.0])]
    expected_words = max_mean_by_hand(units, regions)
    expected_both = max_mean_by_hand(units, [W @ r for r in regions])
    assert abs(expected_words - expected_both) > 0.01

    words = score_matrix(knowledge, texts, images, W=W, transform="words", progress=False)
    both = score_matrix(knowledge, texts, images, W=W, transform="both", progress=False)

    assert words[0, 0] == pytest.approx(expected_words, abs=1e-6)
    assert both[0, 0] == pytest.approx(expected_both, abs=1e-6)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_empty_text_and_image_score(world, pooling):
    knowledge, texts, images = world
    scores = score_matrix(knowledge, texts, images, pooling=pooling, progress=False)
    empty_image = int(np.flatnonzero(images.counts == 0)[0])

    assert not np.isnan(scores).any()
    assert (scores[:, 0] == EMPTY_SCORE).all()
    assert (scores[empty_image] == EMPTY_SCORE).all()
    assert (scores[images.counts > 0][:, 1:] > EMPTY_SCORE).all()


def test_empty_counts(world, caplog):
    knowledge, texts, images = world
    assert empty_counts(texts, images) == {"texts_without_units": 1, "images_without_regions": 1}

    with caplog.at_level("INFO", logger="mack.matching"):
        score_matrix(knowledge, texts, images, progress=False)
    assert "1 of 10 texts have no unit and 1 of 7 images have no region" in caplog.text


def test_all_texts_empty():
    knowledge = random_knowledge()
    texts = [ParsedText(text="nothing known", units=[], unknown=["zebra"], dropped_adjectives=1)]
    scores = score_matrix(knowledge, texts, random_images(), progress=False)
    np.testing.assert_array_equal(scores, np.full((7, 1), EMPTY_SCORE, dtype=np.float32))


def test_padding_never_enters(world):
    knowledge, texts, images = world
    arrays = [images.valid_regions(i) for i in range(len(images))]
    clean = ImageRegions.from_list(arrays)
    assert not np.isnan(clean.features).any()
    for pooling in POOLINGS:
        padded = score_matrix(knowledge, texts, images, pooling=pooling, progress=False)
        unpadded = score_matrix(knowledge, texts, clean, pooling=pooling, progress=False)
        np.testing.assert_array_equal(padded, unpadded)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_zero_norm_cosine_is_zero(pooling):
    """A zero prototype makes a zero unit; a zero region gives cosine 0, never NaN."""
    knowledge = make_knowledge(["dog", "ghost"], [], [[1.0, 0.0], [0.0, 0.0]])
    texts = [
        ParsedText(text="a ghost", units=[Unit("ghost", ())], unknown=[], dropped_adjectives=0),
        ParsedText(
            text="a dog and a ghost",
            units=[Unit("dog", ()), Unit("ghost", ())],
            unknown=[],
            dropped_adjectives=0,
        ),
    ]
    images = ImageRegions.from_list([np.zeros((2, 2)), np.array([[0.0, 0.0], [2.0, 0.0]])])
    expected = {
        "max_mean": [[0.0, 0.0], [0.0, 0.5]],
        "mean_mean": [[0.0, 0.0], [0.0, 0.25]],
        "mean_max": [[0.0, 0.0], [0.0, 0.5]],
        "max_max": [[0.0, 0.0], [0.0, 1.0]],
    }[pooling]

    fast = score_matrix(knowledge, texts, images, pooling=pooling, progress=False)
    reference = reference_score_matrix(knowledge, texts, images, pooling=pooling, progress=False)

    np.testing.assert_allclose(fast.T, expected, atol=1e-7)
    np.testing.assert_allclose(reference.T, expected, atol=1e-12)


def test_nan_region_raises_naming_image(world):
    knowledge, texts, images = world
    features = np.array(images.features)
    features[3, 0, 5] = np.nan
    bad = ImageRegions(features, images.counts)
    for scorer in (score_matrix, reference_score_matrix):
        with pytest.raises(ValueError, match="image 3 has NaN or inf"):
            scorer(knowledge, texts, bad, progress=False)
    with pytest.raises(ValueError, match="image 3 has NaN or inf"):
        score_pairs(knowledge, texts, bad, [3], [1], progress=False)


@pytest.mark.parametrize("prototype", PROTOTYPES)
def test_nan_prototype_raises_naming_word(prototype):
    knowledge = random_knowledge()
    table = knowledge.prototypes if prototype == "mean" else knowledge.random_regions
    table[knowledge.index[ATTRIBUTES[1]], 2] = np.inf
    texts, images = random_texts(), random_images()
    for scorer in (score_matrix, reference_score_matrix):
        with pytest.raises(ValueError, match="word 'attribute1' contains NaN or inf"):
            scorer(knowledge, texts, images, prototype=prototype, progress=False)


def test_dimension_mismatch_raises(world):
    knowledge, texts, _ = world
    images = random_images(dim=DIM + 1)
    for scorer in (score_matrix, reference_score_matrix):
        with pytest.raises(ValueError, match="17 dims but the knowledge prototypes have 16"):
            scorer(knowledge, texts, images, progress=False)


def test_W_shape_mismatch_raises(world):
    knowledge, texts, images = world
    with pytest.raises(ValueError, match=r"W has shape \(16, 15\)"):
        score_matrix(knowledge, texts, images, W=np.eye(DIM, DIM - 1), progress=False)


def test_unknown_word_raises(world):
    knowledge, _, images = world
    texts = [
        ParsedText(text="a zebra", units=[Unit("zebra", ())], unknown=[], dropped_adjectives=0)
    ]
    with pytest.raises(ValueError, match="unit word 'zebra' \\(text 0\\) is not in the knowledge"):
        score_matrix(knowledge, texts, images, progress=False)


def test_random_region_missing_raises():
    knowledge, texts, images = hand_worked_case()
    with pytest.raises(ValueError, match="needs knowledge.random_regions"):
        score_matrix(knowledge, texts, images, prototype="random_region", progress=False)


@pytest.mark.parametrize(
    ("option", "value"),
    [("pooling", "max_min"), ("prototype", "median"), ("transform", "regions")],
)
def test_unknown_option_raises(world, option, value):
    knowledge, texts, images = world
    with pytest.raises(ValueError, match=f"{option}='{value}' is not one of"):
        score_matrix(knowledge, texts, images, progress=False, **{option: value})


def test_image_regions_from_list_and_dense():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 3)) for n in (2, 0, 4)]
    images = ImageRegions.from_list(arrays)
    assert images.features.shape == (3, 4, 3)
    assert images.features.dtype == np.float32
    np.testing.assert_array_equal(images.counts, [2, 0, 4])
    np.testing.assert_allclose(images.valid_regions(2), arrays[2], atol=1e-6)
    assert images.valid_regions(1).shape == (0, 3)

    dense = ImageRegions.from_dense(np.zeros((2, 5, 3), dtype=np.float32))
    np.testing.assert_array_equal(dense.counts, [5, 5])
    assert (len(dense), dense.max_regions, dense.dim) == (2, 5, 3)


def test_image_regions_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"counts\[1\] = 6 is outside 0..5"):
        ImageRegions(np.zeros((2, 5, 3), dtype=np.float32), np.array([1, 6]))
    with pytest.raises(ValueError, match="must be \\(2,\\) integers"):
        ImageRegions(np.zeros((2, 5, 3), dtype=np.float32), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="image 1 has regions of shape"):
        ImageRegions.from_list([np.zeros((2, 3)), np.zeros((2, 4))])


def read_vocab(path) -> list[str]:
    """First name of each comma-separated synonym line, in file order, without repeats."""
    words = [line.split(",")[0].strip() for line in path.read_text().splitlines()]
    return list(dict.fromkeys(word for word in words if word))


@pytest.mark.real_data
@needs_real_data
def test_real_captions_fast_matches_reference():
    from mack.text import TextParser

    root = config.data_root()
    objects = read_vocab(root / "vg" / "vocab" / "objects_vocab.txt")
    attributes = [
        word
        for word in read_vocab(root / "vg" / "vocab" / "attributes_vocab.txt")
        if word not in objects
    ]
    rng = np.random.default_rng(0)
    n_words = len(objects) + len(attributes)
    knowledge = make_knowledge(
        objects, attributes, np.abs(rng.normal(size=(n_words, 24))), rng.normal(size=(n_words, 24))
    )
    captions = (root / "captions" / "f30k_test_caps.txt").read_text().splitlines()[:50]
    texts = TextParser(knowledge.objects(), knowledge.attributes()).parse_many(
        captions, progress=False
    )
    images = ImageRegions.from_list([np.abs(rng.normal(size=(n, 24))) for n in (36, 10, 0, 1, 20)])
    n_units = sum(len(parsed.units) for parsed in texts)
    n_adjectives = sum(len(unit.adjectives) for parsed in texts for unit in parsed.units)
    assert n_units > 50
    assert n_adjectives > 5

    for pooling, use_adjectives, w_mode in itertools.product(POOLINGS, [True, False], W_MODES):
        options = dict(pooling=pooling, use_adjectives=use_adjectives, progress=False)
        options.update(w_options(w_mode, dim=24))
        expected = reference_score_matrix(knowledge, texts, images, **options)
        fast = score_matrix(knowledge, texts, images, chunk_size=2, **options)
        np.testing.assert_allclose(fast, expected, atol=1e-5, rtol=0, err_msg=str(options))


def test_invalid_chunk_size_raises(world):
    knowledge, texts, images = world
    with pytest.raises(ValueError, match="chunk_size=0 is invalid"):
        score_matrix(knowledge, texts, images, chunk_size=0, progress=False)
    with pytest.raises(ValueError, match="chunk_size=0 is invalid"):
        score_pairs(knowledge, texts, images, [0], [0], chunk_size=0, progress=False)


def test_empty_inputs_shapes(world):
    knowledge, texts, images = world
    no_images = ImageRegions.from_dense(np.zeros((0, 5, DIM), dtype=np.float32))
    assert score_matrix(knowledge, [], images, progress=False).shape == (len(images), 0)
    assert score_matrix(knowledge, texts, no_images, progress=False).shape == (0, len(texts))
