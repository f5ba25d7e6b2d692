"""Tests of mack.analysis: hand-worked cases and brute-force loops for each computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.manifold import trustworthiness

from mack import analysis, metrics
from mack.knowledge import ATTRIBUTE, OBJECT, Knowledge
from mack.matching import ImageRegions, reference_score_matrix, score_matrix
from mack.paper import METRIC_COLUMNS
from mack.text import ParsedText, Unit


def make_knowledge(words, types, prototypes, counts=None, random_regions=None) -> Knowledge:
    prototypes = np.asarray(prototypes, dtype=np.float32)
    counts = np.ones(len(words), dtype=np.int64) if counts is None else np.asarray(counts)
    return Knowledge(
        words=list(words),
        types=list(types),
        prototypes=prototypes,
        counts=counts.astype(np.int64),
        provenance={"source": "test"},
        random_regions=None if random_regions is None else np.asarray(random_regions, np.float32),
    )


def text(*units: Unit) -> ParsedText:
    return ParsedText(" ".join(analysis.unit_label(unit) for unit in units), list(units))


# ----------------------------------------------------------------------------- knowledge statistics


def test_region_count_stats_hand_worked() -> None:
    knowledge = make_knowledge(
        ["a", "b", "c", "d", "e"],
        [OBJECT, OBJECT, ATTRIBUTE, OBJECT, ATTRIBUTE],
        np.eye(5),
        counts=[1, 5, 19, 20, 100],
    )

    stats = analysis.region_count_stats(knowledge)

    assert stats["words"] == 5
    assert (stats["objects"], stats["attributes"]) == (3, 2)
    assert stats["annotations"] == 145
    assert (stats["min_regions"], stats["median_regions"], stats["max_regions"]) == (1, 19.0, 100)
    assert stats["share_under_threshold"] == pytest.approx(3 / 5)  # 1, 5, 19 are under 20


def test_knowledge_summary_per_type() -> None:
    knowledge = make_knowledge(
        ["a", "b", "c", "d"], [OBJECT, OBJECT, ATTRIBUTE, OBJECT], np.eye(4), counts=[2, 40, 7, 4]
    )

    summary = analysis.knowledge_summary(knowledge, threshold=5)

    assert summary.loc[OBJECT, "words"] == 3
    assert summary.loc[OBJECT, "annotations"] == 46
    assert summary.loc[OBJECT, "median_regions"] == 4.0
    assert summary.loc[OBJECT, "share_under_5"] == pytest.approx(2 / 3)
    assert summary.loc[ATTRIBUTE, "max_regions"] == 7
    assert summary.loc[ATTRIBUTE, "share_under_5"] == 0.0
    assert summary.loc["all", "annotations"] == 53


def test_region_count_stats_empty_knowledge() -> None:
    knowledge = make_knowledge([], [], np.zeros((0, 3)))

    with pytest.raises(ValueError, match="no words"):
        analysis.region_count_stats(knowledge)


def test_figure3_comparison_directions() -> None:
    stats = {"share_under_threshold": 0.4, "threshold": 20}

    table = analysis.figure3_comparison(stats, paper_share=0.8)

    assert table.loc["share of words with < 20 regions", "this run"] == 0.4
    assert table.loc["most words have < 20 regions", "paper"] == "yes"
    assert table.loc["most words have < 20 regions", "this run"] == "no"


# ----------------------------------------------------------------------------- Table 1 rows


@pytest.fixture
def matching_world():
    """Three images of 3 regions each, and 5 identical captions describing each image."""
    rng = np.random.default_rng(3)
    words = ["cat", "dog", "car", "red", "black"]
    types = [OBJECT, OBJECT, OBJECT, ATTRIBUTE, ATTRIBUTE]
    prototypes = np.eye(6)[:5] + 0.05 * rng.random((5, 6))
    knowledge = make_knowledge(words, types, prototypes, random_regions=rng.random((5, 6)))
    eye = np.eye(6)
    regions = np.stack(
        [
            [eye[0] + eye[3], eye[3], eye[5]],  # a red cat, something red, background
            [eye[1] + eye[4], eye[2], eye[5]],  # a black dog, a car, background
            [eye[2] + eye[3], eye[0], eye[5]],  # a red car, a cat, background
        ]
    )
    images = ImageRegions.from_dense(regions.astype(np.float32) + 0.1)
    captions = {
        0: [Unit("cat", ("red",))],
        1: [Unit("dog", ("black",))],
        2: [Unit("car", ("red",))],
    }
    parsed = [text(*captions[i]) for i in range(3) for _ in range(5)]
    return knowledge, parsed, images


def test_metrics_row_flattens_in_paper_order() -> None:
    result = {
        "image_to_text": {"r1": 1.0, "r5": 2.0, "r10": 3.0, "medr": 9.0},
        "text_to_image": {"r1": 4.0, "r5": 5.0, "r10": 6.0},
        "rsum": 21.0,
    }

    row = analysis.metrics_row(result)

    assert list(row) == list(METRIC_COLUMNS)
    assert list(row.values()) == [4.0, 5.0, 6.0, 1.0, 2.0, 3.0, 21.0]


def test_table1_rows_match_reference_scores(matching_world) -> None:
    knowledge, parsed, images = matching_world

    table = analysis.table1_pretrained_rows(knowledge, parsed, images)

    assert list(table.index) == list(analysis.TABLE1_PRETRAINED_VARIANTS)
    assert list(table.columns) == list(METRIC_COLUMNS)
    for name, options in analysis.TABLE1_PRETRAINED_VARIANTS.items():
        sims = reference_score_matrix(knowledge, parsed, images, progress=False, **options)
        expected = analysis.metrics_row(metrics.evaluate(sims))
        assert table.loc[name].to_dict() == pytest.approx(expected), name
    assert table.loc["pretrained", "rsum"] == pytest.approx(600.0)  # every query right at R@1


def test_table1_skips_rows_the_knowledge_cannot_express(matching_world) -> None:
    knowledge, parsed, images = matching_world
    objects_only = make_knowledge(
        knowledge.words[:3], [OBJECT] * 3, knowledge.prototypes[:3], random_regions=None
    )
    nouns_only = [text(*(Unit(unit.noun) for unit in parsed_text.units)) for parsed_text in parsed]

    table = analysis.table1_pretrained_rows(objects_only, nouns_only, images)

    assert "w/o adjectives" not in table.index
    assert "w/o region prototypes" not in table.index
    assert {"pretrained", "w/o max-mean pooling", "max-max pooling"} <= set(table.index)


def test_chance_row_uses_metric_columns() -> None:
    row = analysis.chance_row(100)

    assert list(row) == list(METRIC_COLUMNS)
    assert row["text_to_image_r1"] == pytest.approx(1.0)
    assert row["rsum"] == pytest.approx(sum(row[c] for c in METRIC_COLUMNS[:6]))


# ----------------------------------------------------------------------------- paper vs. this run


def test_compare_directions() -> None:
    run = pd.DataFrame({"rsum": [100.0, 120.0, 90.0]}, index=["base", "better", "worse"])
    paper = pd.DataFrame({"rsum": [50.0, 40.0, 30.0]}, index=["base", "better", "worse"])
    claims = [
        analysis.Claim("worse is below base", "worse", "base"),
        analysis.Claim("better is below base", "better", "base"),
        analysis.Claim("stated in the text", "worse", "better", paper=False),
        analysis.Claim("row missing here", "absent", "base", paper=True),
    ]

    table = analysis.compare_directions(run, paper, claims)

    assert table["paper"].tolist() == ["yes", "yes", "no", "yes"]
    assert table["this run"].tolist() == ["yes", "no", "yes", "n/a"]
    assert table["same direction"].tolist() == ["yes", "no", "no", "n/a"]
    assert table.loc["worse is below base", "this run, expected lower"] == 90.0
    assert table.loc["worse is below base", "this run, expected higher"] == 100.0
    assert np.isnan(table.loc["row missing here", "this run, expected lower"])


def test_compare_values_shared_rows() -> None:
    run = pd.DataFrame({"rsum": [100.0, 7.0]}, index=["a", "only in run"])
    paper = pd.DataFrame({"rsum": [90.0, 1.0]}, index=["a", "only in paper"])

    table = analysis.compare_values(run, paper, columns=["rsum"])

    assert list(table.index) == ["a"]
    assert table.loc["a", ("rsum", "paper")] == 90.0
    assert table.loc["a", ("rsum", "this run")] == 100.0
    assert table.loc["a", ("rsum", "run - paper")] == 10.0


# ----------------------------------------------------------------------------- qualitative example


def test_matched_regions_hand_worked() -> None:
    knowledge = make_knowledge(
        ["cat", "red", "sky"], [OBJECT, ATTRIBUTE, OBJECT], [[2, 0, 0], [0, 2, 0], [0, 0, 1]]
    )
    regions = np.array([[1, 1, 0], [0, 0, 3], [1, 0, 0]], dtype=np.float32)
    parsed = text(Unit("cat", ("red",)), Unit("sky"), Unit("cat"))

    matches = analysis.matched_regions(knowledge, parsed, regions)

    assert matches["unit"].tolist() == ["red cat", "sky", "cat"]
    assert matches["region"].tolist() == [0, 1, 2]
    assert matches["cosine"].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_matched_regions_mean_is_max_mean_score(matching_world) -> None:
    knowledge, parsed, images = matching_world
    mixed = text(Unit("dog", ("red",)), Unit("car"), Unit("cat", ("black", "red")))
    sims = score_matrix(knowledge, [mixed], images, progress=False)

    for image in range(len(images)):
        matches = analysis.matched_regions(knowledge, mixed, images.valid_regions(image))
        regions = images.valid_regions(image).astype(np.float64)
        for row, unit in zip(matches.itertuples(), mixed.units, strict=True):
            unit_vector = np.mean([knowledge.prototypes[knowledge.index[w]]
                                   for w in (unit.noun, *unit.adjectives)], axis=0)  # fmt: skip
            cosines = [
                float(unit_vector @ r / np.linalg.norm(unit_vector) / np.linalg.norm(r))
                for r in regions
            ]
            assert row.region == int(np.argmax(cosines))
            assert row.cosine == pytest.approx(max(cosines))
        assert matches["cosine"].mean() == pytest.approx(sims[image, 0], abs=1e-6)


def test_matched_regions_rejects_wrong_dim() -> None:
    knowledge = make_knowledge(["cat"], [OBJECT], [[1.0, 0.0]])

    with pytest.raises(ValueError, match=r"regions must be \(n_regions, 2\)"):
        analysis.matched_regions(knowledge, text(Unit("cat")), np.zeros((3, 5)))


def test_matched_regions_without_units() -> None:
    knowledge = make_knowledge(["cat"], [OBJECT], [[1.0, 0.0]])

    matches = analysis.matched_regions(knowledge, ParsedText("nothing"), np.eye(2))

    assert matches.empty


def test_pick_example_prefers_ranked_first_with_units() -> None:
    parsed = [text(Unit("cat")), text(Unit("cat"), Unit("dog")), text(Unit("a"), Unit("b"))]
    parsed += [text(Unit("c"), Unit("d")), ParsedText("none")]
    parsed = parsed[:5] + [ParsedText("x")] * 5  # 2 images x 5 captions
    sims = np.zeros((2, 10))
    sims[0, 1] = -1.0  # caption 1 (two units) ranks its image 0 last
    sims[1, 2] = 1.0  # caption 2 (two units) prefers image 1 over its own image 0
    sims[0, 3] = 1.0  # caption 3 (two units) ranks its own image 0 first

    assert analysis.pick_example(parsed, sims) == 3


def test_pick_example_most_distinct_regions(matching_world) -> None:
    knowledge, _, images = matching_world
    red_cat = Unit("cat", ("red",))
    one_region = text(red_cat, red_cat)  # both units match region 0 (a red cat) of image 0
    two_regions = text(red_cat, Unit("red"))  # region 0, and region 1 (something red)
    parsed = [one_region, two_regions] + [ParsedText("x")] * 13
    sims = np.zeros((3, 15))
    sims[0, :2] = 1.0

    assert analysis.pick_example(parsed, sims) == 0
    assert analysis.pick_example(parsed, sims, knowledge=knowledge, images=images) == 1


# ----------------------------------------------------------------------------- Figure 4


def test_frequent_concepts_counts_nouns_and_adjectives() -> None:
    parsed = [
        text(Unit("dog", ("brown",)), Unit("cat")),
        text(Unit("dog"), Unit("ball", ("brown", "small"))),
        text(Unit("ant")),
    ]

    top = analysis.frequent_concepts(parsed, n=4)

    assert top.to_dict() == {"brown": 2, "dog": 2, "ant": 1, "ball": 1}
    assert list(top.index) == ["brown", "dog", "ant", "ball"]  # ties in alphabetical order


def test_same_group_neighbours_brute_force() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 5))
    groups = ["a", "b", "c"] * 4
    k = 3

    expected = []
    for i in range(len(vectors)):
        cosines = []
        for j in range(len(vectors)):
            if j != i:
                dot = vectors[i] @ vectors[j]
                norms = np.linalg.norm(vectors[i]) * np.linalg.norm(vectors[j])
                cosines.append((-dot / norms, j))
        nearest = [j for _, j in sorted(cosines)[:k]]
        expected.append(np.mean([groups[j] == groups[i] for j in nearest]))

    assert analysis.same_group_neighbours(vectors, groups, k) == pytest.approx(np.mean(expected))


def test_same_group_neighbours_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be from 1 to n - 1 = 2"):
        analysis.same_group_neighbours(np.eye(3), ["a", "b", "c"], k=3)


def test_tsne_keeps_separated_groups_apart() -> None:
    rng = np.random.default_rng(1)
    centres = 5 * rng.normal(size=(4, 20))
    vectors = np.repeat(centres, 10, axis=0) + 0.3 * rng.normal(size=(40, 20))
    groups = np.repeat(["a", "b", "c", "d"], 10).tolist()

    embedding = analysis.tsne_embedding(vectors, seed=0)

    assert embedding.shape == (40, 2)
    np.testing.assert_array_equal(embedding, analysis.tsne_embedding(vectors, seed=0))
    assert trustworthiness(vectors, embedding, n_neighbors=5, metric="cosine") > 0.9
    assert analysis.same_group_neighbours(embedding, groups, k=5) > 0.9


def test_tsne_rejects_too_few_vectors() -> None:
    with pytest.raises(ValueError, match="n >= 4"):
        analysis.tsne_embedding(np.ones((3, 5)))


def test_concept_groups_default() -> None:
    assert analysis.concept_groups(["dog", "zzz"], {"dog": "animals"}) == ["animals", "other"]


def test_texts_fingerprint_follows_units() -> None:
    first = [text(Unit("dog", ("brown",)))]
    same = [ParsedText("another wording", [Unit("dog", ("brown",))])]
    other = [text(Unit("dog"))]

    assert analysis.texts_fingerprint(first) == analysis.texts_fingerprint(same)
    assert analysis.texts_fingerprint(first) != analysis.texts_fingerprint(other)


def test_compare_directions_tie_is_no_effect():
    Claim, compare_directions = analysis.Claim, analysis.compare_directions
    run = pd.DataFrame({"rsum": [53.36, 53.36 + 1e-12]}, index=["f=50", "f=100"])
    claims = [Claim("f=100 beats f=50", "f=50", "f=100", "rsum", paper=True)]
    table = compare_directions(run, run, claims)
    assert table.loc["f=100 beats f=50", "this run"] == "no"
    assert table.loc["f=100 beats f=50", "same direction"] == "no"
