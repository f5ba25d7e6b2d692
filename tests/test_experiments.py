"""Tests of mack.experiments and mack.experiment_plots on a small in-memory tier.

The fake tier has the interface of mack.tiers.Tier (knowledge, splits, parser, base models) over
random data, and its parser reads each whitespace token as a unit noun, so no NLTK data is needed.
Re-ranking and its metrics are checked against plain loops written here.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mack import analysis, experiment_plots, experiments, metrics
from mack.finetune import FinetuneConfig
from mack.knowledge import OBJECT, Knowledge
from mack.matching import ImageRegions, score_matrix
from mack.rerank import rerank
from mack.text import ParsedText, Unit
from mack.tiers import TargetSplit

DIM = 8
WORDS = ["dog", "cat", "car", "tree", "ball", "hat"]
CPI = 5  # captions per image


# ----------------------------------------------------------------------------- fake tier


class WordParser:
    """Parse a caption into one unit per token that is a knowledge object (no tagger)."""

    def __init__(self, objects):
        self.objects = set(objects)
        self.calls = 0

    def parse_many(self, texts, progress=True):
        self.calls += 1
        parsed = []
        for text in texts:
            tokens = text.split()
            units = [Unit(token, ()) for token in tokens if token in self.objects]
            unknown = [token for token in tokens if token not in self.objects]
            parsed.append(ParsedText(text, units, unknown, 0))
        return parsed


def make_split(rng, prototypes, dataset, split, n_images) -> TargetSplit:
    """Images of 2 words each: 4 regions (each word's prototype + noise, 2 noise regions)."""
    features = rng.normal(0, 0.3, size=(n_images, 4, DIM)).astype(np.float32)
    captions = []
    for image in range(n_images):
        words = rng.choice(len(WORDS), size=2, replace=False)
        features[image, :2] += prototypes[words]
        for _ in range(CPI):
            captions.append(f"a {WORDS[words[0]]} and a {WORDS[words[1]]}")
    return TargetSplit(dataset, split, ImageRegions.from_dense(features), captions)


class FakeTier:
    """Two datasets ("a", "b") of random images, or one with datasets=("a",)."""

    name = "fake"
    has_attributes = False

    def __init__(self, datasets=("a", "b"), seed=0):
        self.datasets = tuple(datasets)
        rng = np.random.default_rng(seed)
        self.prototypes = rng.normal(size=(len(WORDS), DIM)).astype(np.float32)
        self.splits = {}
        for number, dataset in enumerate(self.datasets):
            for split, n_images in (("train", 12), ("test", 8 + 2 * number)):
                self.splits[dataset, split] = make_split(
                    rng, self.prototypes, dataset, split, n_images
                )
        self.parsers = []
        self.knowledge_calls = []

    def knowledge(self, region_cap=None, seed=0) -> Knowledge:
        self.knowledge_calls.append(region_cap)
        shift = 0.0 if region_cap is None else 1.0 / region_cap
        return Knowledge(
            words=WORDS,
            types=[OBJECT] * len(WORDS),
            prototypes=self.prototypes + shift,
            counts=np.full(len(WORDS), 3),
            provenance={"share_kept": 1.0 if region_cap is None else region_cap / 100.0},
        )

    def test(self, dataset=None) -> TargetSplit:
        return self.splits[dataset or self.datasets[0], "test"]

    def train(self, dataset=None) -> TargetSplit:
        return self.splits[dataset or self.datasets[0], "train"]

    def synonyms(self):
        return {}

    def parser(self, knowledge) -> WordParser:
        parser = WordParser(knowledge.objects())
        self.parsers.append(parser)
        return parser

    def base_similarities(self, dataset) -> dict[str, np.ndarray]:
        split = self.test(dataset)
        n_images = len(split.images)
        rng = np.random.default_rng(len(dataset))
        truth = np.kron(np.eye(n_images), np.ones((1, CPI)))
        return {"BASE": truth * 0.1 + rng.normal(0, 0.2, size=(n_images, n_images * CPI))}

    def cross_base_similarities(self, dataset) -> dict[str, np.ndarray]:
        if len(self.datasets) < 2:
            return {}
        return {"CROSS": self.base_similarities(dataset)["BASE"][:, ::-1].copy()}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MACK_CACHE", str(tmp_path / "cache"))
    experiments._PARSED.clear()
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- brute-force oracle


def brute_force_rerank_rsum(base, mack, k, lam, cpi=CPI) -> float:
    """Re-rank with plain loops and return rsum, ties counted against the query.

    Each query's k best base candidates (ties to the lower index) get 1e6 + base + lam * mack.
    That keeps them above the others, in their combined order, and the others keep their base
    score.
    """
    n_images, n_texts = base.shape
    recalls = []
    for direction in ("image_to_text", "text_to_image"):
        ranks = []
        for query in range(n_images if direction == "image_to_text" else n_texts):
            if direction == "image_to_text":
                scores, extra = list(base[query]), mack[query]
                true = set(range(query * cpi, (query + 1) * cpi))
            else:
                scores, extra = list(base[:, query]), mack[:, query]
                true = {query // cpi}
            top = sorted(range(len(scores)), key=lambda c: (-scores[c], c))[:k]
            effective = list(scores)
            for candidate in top:
                effective[candidate] = 1e6 + scores[candidate] + lam * extra[candidate]
            best = max(effective[c] for c in true)
            ranks.append(sum(1 for c, s in enumerate(effective) if c not in true and s >= best))
        recalls += [100.0 * np.mean(np.array(ranks) < r) for r in (1, 5, 10)]
    return float(sum(recalls))


# ----------------------------------------------------------------------------- pair scorers


def test_cached_scorer_scores_each_pair_once():
    matrix = np.arange(12, dtype=float).reshape(3, 4)
    seen = []

    def scorer(images, texts):
        seen.extend(zip(images.tolist(), texts.tolist(), strict=True))
        return matrix[images, texts]

    cached = experiments.CachedPairScorer(scorer, 3, 4)
    first = cached(np.array([0, 2, 2, 0]), np.array([1, 3, 3, 1]))
    assert first.tolist() == [1.0, 11.0, 11.0, 1.0]
    assert sorted(seen) == [(0, 1), (2, 3)]

    second = cached(np.array([2, 1, 0]), np.array([3, 0, 1]))
    assert second.tolist() == [11.0, 4.0, 1.0]
    assert sorted(seen) == [(0, 1), (1, 0), (2, 3)]
    assert len(cached) == 3


def test_cached_scorer_rejects_bad_pairs():
    cached = experiments.CachedPairScorer(lambda i, t: np.zeros(len(i)), 3, 4)
    with pytest.raises(ValueError, match="text_idx"):
        cached(np.array([0]), np.array([4]))
    with pytest.raises(ValueError, match="image_idx"):
        cached(np.array([-1]), np.array([0]))
    with pytest.raises(ValueError, match="equal"):
        cached(np.array([0, 1]), np.array([0]))
    wrong_shape = experiments.CachedPairScorer(lambda i, t: np.zeros(len(i) + 1), 3, 4)
    with pytest.raises(ValueError, match="shape"):
        wrong_shape(np.array([0]), np.array([0]))


def test_mack_pair_scorer_matches_score_matrix(cache):
    tier = FakeTier()
    knowledge = tier.knowledge()
    test = tier.test("a")
    texts = experiments.parse_captions(tier, knowledge, test.captions)
    W = np.eye(DIM, dtype=np.float32) + 0.1
    for transform_W in (None, W):
        full = score_matrix(knowledge, texts, test.images, W=transform_W, progress=False)
        scorer = experiments.mack_pair_scorer(knowledge, texts, test.images, W=transform_W)
        images, texts_idx = np.divmod(np.arange(full.size), full.shape[1])
        np.testing.assert_allclose(scorer(images, texts_idx), full.ravel(), atol=1e-5)


def test_parse_captions_reuses_identical_parse(cache):
    tier = FakeTier()
    knowledge = tier.knowledge()
    captions = tier.test("a").captions
    first = experiments.parse_captions(tier, knowledge, captions)
    second = experiments.parse_captions(tier, tier.knowledge(region_cap=20), captions)
    assert first is second
    assert len(tier.parsers) == 1
    assert [unit.noun for unit in first[0].units] == captions[0].split()[1::3]


# ----------------------------------------------------------------------------- Tables 2, 3 and 5


def test_rerank_table_matches_brute_force(cache):
    tier = FakeTier()
    knowledge = tier.knowledge()
    test = tier.test("a")
    texts = experiments.parse_captions(tier, knowledge, test.captions)
    base = tier.base_similarities("a")["BASE"]
    mack = score_matrix(knowledge, texts, test.images, progress=False).astype(np.float64)
    scorer = experiments.mack_pair_scorer(knowledge, texts, test.images)

    table = experiments.rerank_table({"BASE": base}, scorer, k=4, lam=0.5)
    assert list(table.index) == ["BASE", "BASE + MACK"]
    assert list(table.columns) == list(experiments.METRIC_COLUMNS)
    assert table.loc["BASE", "rsum"] == pytest.approx(metrics.evaluate(base)["rsum"])
    expected = brute_force_rerank_rsum(base, mack, k=4, lam=0.5)
    assert expected != table.loc["BASE", "rsum"]  # the re-ranking changes the ranks here
    assert table.loc["BASE + MACK", "rsum"] == pytest.approx(expected, abs=1e-3)


def test_hyperparameter_grid_cells_match_brute_force(cache):
    tier = FakeTier()
    knowledge = tier.knowledge()
    test = tier.test("a")
    texts = experiments.parse_captions(tier, knowledge, test.captions)
    base = tier.base_similarities("a")["BASE"]
    mack = score_matrix(knowledge, texts, test.images, progress=False).astype(np.float64)
    calls = []

    def scorer(images, texts_idx):
        calls.append(len(images))
        return mack[images, texts_idx]

    grid = experiments.hyperparameter_grid(base, scorer, [2, 5], [0.0, 0.3, 2.0])
    assert grid.index.name == "k"
    assert grid.columns.name == "lambda"
    assert len(calls) == 1  # the largest k scores every pair, the rest reuse them
    for k in (2, 5):
        assert grid.loc[k, 0.0] == pytest.approx(metrics.evaluate(base)["rsum"])
        for lam in (0.3, 2.0):
            expected = brute_force_rerank_rsum(base, mack, k=k, lam=lam)
            assert grid.loc[k, lam] == pytest.approx(expected, abs=1e-3)


def test_table5_slices_the_grid(cache):
    tier = FakeTier()
    base = tier.base_similarities("a")["BASE"]
    rng = np.random.default_rng(3)
    mack = rng.random(base.shape)
    table_k, table_lambda = experiments.table5(
        base, lambda i, t: mack[i, t], ks=(2, 4), lambdas=(0.5, 1.0), k=4, lam=0.5
    )
    assert list(table_k.columns) == ["k", "rsum"]
    assert list(table_lambda.columns) == ["lambda", "rsum"]
    assert table_k["rsum"].tolist() == pytest.approx(
        [brute_force_rerank_rsum(base, mack, k, 0.5) for k in (2, 4)], abs=1e-3
    )
    assert table_lambda["rsum"].tolist() == pytest.approx(
        [brute_force_rerank_rsum(base, mack, 4, lam) for lam in (0.5, 1.0)], abs=1e-3
    )


def test_table5_comparison_reads_directions_from_paper():
    paper_k = pd.DataFrame({"k": [10, 15, 20], "rsum": [528.8, 530.1, 530.1]})
    paper_lambda = pd.DataFrame({"lambda": [0.1, 0.2, 0.3], "rsum": [530.1, 530.5, 527.1]})
    run_k = pd.DataFrame({"k": [10, 15, 20], "rsum": [50.0, 52.0, 53.0]})
    run_lambda = pd.DataFrame({"lambda": [0.1, 0.2, 0.3], "rsum": [52.0, 54.0, 56.0]})
    run, paper, claims = experiments.table5_comparison(
        49.0, run_k, run_lambda, 525.6, paper_k, paper_lambda
    )
    answers = analysis.compare_directions(run, paper, claims)
    assert answers.loc["k=15 beats k=10", "paper"] == "yes"
    assert answers.loc["k=20 beats k=15", "paper"] == "no"  # 530.1 for both in paper_k
    assert answers.loc["k=20 beats k=15", "this run"] == "yes"
    assert answers.loc["lambda=0.2 beats lambda=0.3", "paper"] == "yes"
    assert answers.loc["lambda=0.2 beats lambda=0.3", "this run"] == "no"
    assert answers.loc["k=10 beats the base model", "this run"] == "yes"
    assert len(answers) == 6 + 4  # 6 settings against the base, 2 + 2 neighbouring pairs


def test_rerank_experiment_skips_table3_with_one_dataset(cache):
    tier = FakeTier(datasets=("a",))
    experiment = experiments.rerank_experiment(tier, tier.knowledge(), k=3, lam=0.2)
    assert list(experiment.table2) == ["a"]
    assert experiment.table3 == {}
    assert len(experiment.skipped) == 1
    assert "Table 3" in experiment.skipped[0]


def test_rerank_experiment_two_datasets(cache):
    tier = FakeTier()
    experiment = experiments.rerank_experiment(tier, tier.knowledge(), k=3, lam=0.2)
    assert list(experiment.table2) == ["a", "b"]
    assert list(experiment.table3["b"].index) == ["CROSS", "CROSS + MACK"]
    assert experiment.skipped == []


def test_rerank_paper_comparison():
    table = pd.DataFrame(
        {"rsum": [500.0, 505.0, 400.0, 399.0]},
        index=["CLIP", "CLIP + MACK", "VSE", "VSE + MACK"],
    )
    directions, values = experiments.rerank_paper_comparison(
        {"flickr30k": table}, experiments.PAPER_TABLE2
    )
    assert directions.loc["flickr30k: CLIP + MACK is better than CLIP", "this run"] == "yes"
    assert directions.loc["flickr30k: VSE + MACK is better than VSE", "this run"] == "no"
    assert (directions["paper"] == "yes").all()
    assert list(values.index) == ["flickr30k: CLIP", "flickr30k: CLIP + MACK"]
    assert values.loc["flickr30k: CLIP", ("rsum", "paper")] == pytest.approx(525.6)


def test_pick_model():
    assert experiments.pick_model(["VSE", "CLIP"], ("ALBEF", "CLIP")) == "CLIP"
    assert experiments.pick_model(["VSE"], ("CLIP",)) == "VSE"
    with pytest.raises(ValueError, match="no base model"):
        experiments.pick_model([], ("CLIP",))


# ----------------------------------------------------------------------------- Figure 2's view


def hand_case():
    """2 images, 10 texts. Text 7 (image 1) ranks image 0 first; MACK prefers image 1."""
    base = np.full((2, 10), 0.1)
    base[0, :5] = 0.9  # image 0's own captions
    base[1, 5:] = 0.8
    base[0, 7] = 0.85  # text 7 prefers image 0 over its own image 1
    mack = np.zeros((2, 10))
    mack[1, 7] = 1.0
    return base, mack


def test_lifted_queries_hand_case():
    base, mack = hand_case()
    reranked = rerank(base, lambda i, t: mack[i, t], k=2, lam=0.1)
    lifted = experiments.lifted_queries(base, reranked, n=3, top=2)
    assert lifted["query"].tolist() == [7]
    row = lifted.iloc[0]
    assert row["true"] == [1]
    assert (row["rank_before"], row["rank_after"]) == (2, 1)
    assert row["top_before"] == [0, 1]
    assert row["top_after"] == [1, 0]
    assert row["base_after"] == pytest.approx([0.8, 0.85])
    assert row["mack_after"] == pytest.approx([1.0, 0.0])


def test_lifted_queries_one_example_per_true_match():
    base, mack = hand_case()
    base[0, 8] = 0.86  # text 8, also of image 1, now behaves like text 7
    mack[1, 8] = 1.0
    reranked = rerank(base, lambda i, t: mack[i, t], k=2, lam=0.1)
    lifted = experiments.lifted_queries(base, reranked, n=3, top=2)
    # Both lift their true image from rank 2 to 1, so text 7 comes first and text 8, which would
    # show the same image again, is passed over.
    assert lifted["query"].tolist() == [7]


def test_lifted_queries_image_to_text_and_bad_direction():
    base, mack = hand_case()
    reranked = rerank(base, lambda i, t: mack[i, t], k=2, lam=0.1)
    lifted = experiments.lifted_queries(base, reranked, direction="image_to_text", top=2)
    assert lifted.empty  # image 1's captions already lead its row
    with pytest.raises(ValueError, match="direction"):
        experiments.lifted_queries(base, reranked, direction="annotation")


def test_rank_changes_counts():
    base, mack = hand_case()
    reranked = rerank(base, lambda i, t: mack[i, t], k=2, lam=0.1)
    changes = experiments.rank_changes(base, reranked)
    assert changes.loc["text_to_image"].to_dict() == {
        "queries": 10, "moved up": 1, "unchanged": 9, "moved down": 0,
    }  # fmt: skip
    assert changes.loc["image_to_text", "unchanged"] == 2


# ----------------------------------------------------------------------------- Table 4


def test_region_cap_table(cache):
    tier = FakeTier()
    table = experiments.region_cap_table(tier, caps=(20, None), k=3, lam=0.2)
    assert list(table.index) == ["20", "inf"]
    assert table.index.name == "f"
    assert table["p_percent"].tolist() == pytest.approx([20.0, 100.0])
    assert tier.knowledge_calls == [20, None]
    for dataset in ("a", "b"):
        base = tier.base_similarities(dataset)["BASE"]
        assert table[f"{dataset}_base_rsum"].tolist() == pytest.approx(
            [metrics.evaluate(base)["rsum"]] * 2
        )
        knowledge = tier.knowledge(region_cap=20)
        test = tier.test(dataset)
        texts = experiments.parse_captions(tier, knowledge, test.captions)
        mack = score_matrix(knowledge, texts, test.images, progress=False)
        assert table.loc["20", f"{dataset}_mack_rsum"] == pytest.approx(
            metrics.evaluate(mack)["rsum"]
        )
        assert table.loc["20", f"{dataset}_rsum"] == pytest.approx(
            brute_force_rerank_rsum(base, mack.astype(np.float64), 3, 0.2), abs=1e-3
        )


def test_region_cap_table_needs_share_kept(cache):
    tier = FakeTier()
    tier.knowledge = lambda region_cap=None, seed=0: Knowledge(
        WORDS, [OBJECT] * len(WORDS), tier.prototypes, np.full(len(WORDS), 3), {}
    )
    with pytest.raises(ValueError, match="share_kept"):
        experiments.region_cap_table(tier, caps=(20,), k=3)
    table = experiments.region_cap_table(tier, caps=(None,), k=3)
    assert table["p_percent"].tolist() == [100.0]


def test_region_cap_claims_and_share():
    table = pd.DataFrame(
        {"p_percent": [10.0, 100.0], "x_rsum": [1.0, 2.0], "x_mack_rsum": [5.0, 4.0],
         "x_base_rsum": [0.5, 0.5]},
        index=pd.Index(["20", "inf"], name="f"),
    )  # fmt: skip
    claims = experiments.region_cap_claims(table)
    assert [(c.lower, c.higher, c.column) for c in claims] == [("20", "inf", "x_rsum")]
    shuffled = experiments.region_cap_claims(table.iloc[::-1])
    assert [(c.lower, c.higher) for c in shuffled] == [("20", "inf")]
    answers = analysis.compare_directions(table, pd.DataFrame(), claims)
    assert answers["this run"].tolist() == ["yes"]
    share = experiments.region_cap_share(table)
    assert share.loc["20"].tolist() == [15.0, 10.0]
    assert share.loc["inf"].tolist() == [100.0, 100.0]


# ----------------------------------------------------------------------------- Table 1, fine-tuning


SMALL_CONFIG = FinetuneConfig(batch_images=6, batch_texts=12, epochs=2, seed=0)


def test_finetune_experiment_rows_sources_and_cache(cache):
    tier = FakeTier()
    experiment = experiments.finetune_experiment(tier, SMALL_CONFIG)
    table = experiment.table
    assert list(table.index) == ["pretrained", *experiments.FINETUNE_VARIANTS]
    assert list(table.columns) == list(experiments.METRIC_COLUMNS)
    assert experiment.sources.loc["w/o implicit prior"].tolist() == ["a train", "b train"]
    assert experiment.sources.loc["fine-tuned"].tolist() == ["a train", "a train"]
    assert experiment.skipped == {}

    test = tier.test("a")
    texts = experiments.parse_captions(tier, tier.knowledge(), test.captions)
    for variant, run in experiment.runs.items():
        assert not run.cached
        assert len(run.log) == 2
        assert not (run.folder / "checkpoint.pt").exists()
        sims = score_matrix(run.knowledge_base, texts, test.images, W=run.W, progress=False)
        assert table.loc[variant, "rsum"] == pytest.approx(metrics.evaluate(sims)["rsum"])
    learned = experiment.runs["w/o knowledge"].knowledge_base
    assert not np.allclose(learned.prototypes, tier.prototypes)

    again = experiments.finetune_experiment(tier, SMALL_CONFIG)
    for variant, run in again.runs.items():
        assert run.cached
        np.testing.assert_array_equal(run.W, experiment.runs[variant].W)
        np.testing.assert_array_equal(
            run.knowledge_base.prototypes, experiment.runs[variant].knowledge_base.prototypes
        )
        assert run.log.loss == experiment.runs[variant].log.loss
    pd.testing.assert_frame_equal(again.table, table)


def test_finetune_cache_key_follows_config_and_data(cache):
    tier = FakeTier()
    knowledge = tier.knowledge()
    data = experiments.training_data(tier, "fine-tuned", knowledge, "a")
    key = experiments.finetune_cache_key(knowledge, data, "fine-tuned", SMALL_CONFIG)
    other_config = FinetuneConfig(batch_images=6, batch_texts=12, epochs=3, seed=0)
    assert experiments.finetune_cache_key(knowledge, data, "fine-tuned", other_config) != key
    assert experiments.finetune_cache_key(knowledge, data, "w/o knowledge", SMALL_CONFIG) != key
    other = experiments.training_data(tier, "w/o implicit prior", knowledge, "a")
    assert experiments.finetune_cache_key(knowledge, other, "fine-tuned", SMALL_CONFIG) != key
    shifted = tier.knowledge(region_cap=50)
    assert experiments.finetune_cache_key(shifted, data, "fine-tuned", SMALL_CONFIG) != key


def test_finetune_run_retrains_without_marker(cache):
    tier = FakeTier()
    knowledge = tier.knowledge()
    data = experiments.training_data(tier, "fine-tuned", knowledge, "a")
    run = experiments.finetune_run(knowledge, data, "fine-tuned", SMALL_CONFIG, cache)
    record = json.loads((run.folder / "run.json").read_text())
    assert record["variant"] == "fine-tuned"
    assert (run.folder / "W.npz").is_file()

    (run.folder / "run.json").unlink()  # an unfinished run is trained again, not read
    again = experiments.finetune_run(knowledge, data, "fine-tuned", SMALL_CONFIG, cache)
    assert not again.cached
    np.testing.assert_array_equal(again.W, run.W)


def test_implicit_prior_skipped_with_one_dataset(cache):
    tier = FakeTier(datasets=("a",))
    experiment = experiments.finetune_experiment(
        tier, SMALL_CONFIG, variants=("w/o implicit prior",)
    )
    assert list(experiment.table.index) == ["pretrained"]
    assert "no second dataset" in experiment.skipped["w/o implicit prior"]


def test_training_data_rejects_unknown_variant(cache):
    tier = FakeTier()
    with pytest.raises(ValueError, match="unknown fine-tuning variant"):
        experiments.training_data(tier, "w/o everything", tier.knowledge(), "a")


# ----------------------------------------------------------------------------- plots


def labelled(ax) -> bool:
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_training_curves_plot(cache):
    tier = FakeTier()
    experiment = experiments.finetune_experiment(tier, SMALL_CONFIG, variants=("fine-tuned",))
    figure = experiment_plots.training_curves({v: r.log for v, r in experiment.runs.items()})
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    assert labelled(ax)
    assert ax.get_title() == "fine-tuned"
    with pytest.raises(ValueError, match="no training log"):
        experiment_plots.training_curves({})


def test_heatmap_has_labels_and_colour_bar():
    grid = pd.DataFrame(
        [[1.0, 2.0], [3.0, 4.0]],
        index=pd.Index([10, 15], name="k"),
        columns=pd.Index([0.1, 0.2], name="lambda"),
    )
    figure = experiment_plots.hyperparameter_heatmap(grid, base_rsum=0.5)
    heat, bar = figure.axes
    assert labelled(heat)
    assert bar.get_ylabel() == "rsum, base + MACK"
    assert [t.get_text() for t in heat.get_xticklabels()] == ["0.1", "0.2"]
    assert len(heat.patches) == 1  # the frame around k = 15, lambda = 0.1
    assert sorted(t.get_text() for t in heat.texts) == ["1.0", "2.0", "3.0", "4.0"]


def test_region_cap_curve_plot():
    table = pd.DataFrame(
        {"p_percent": [10.0, 100.0], "x_rsum": [1.0, 2.0], "x_mack_rsum": [5.0, 4.0],
         "x_base_rsum": [0.5, 0.5]},
        index=pd.Index(["20", "inf"], name="f"),
    )  # fmt: skip
    figure = experiment_plots.region_cap_curve(table)
    assert len(figure.axes) == 2
    assert all(labelled(ax) for ax in figure.axes)
    assert [t.get_text() for t in figure.axes[0].texts] == ["f=20", "f=inf"]


def test_lifted_queries_figures(tmp_path):
    from PIL import Image

    base, mack = hand_case()
    reranked = rerank(base, lambda i, t: mack[i, t], k=2, lam=0.1)
    lifted = experiments.lifted_queries(base, reranked, top=2)
    captions = [f"caption {number}" for number in range(10)]
    paths = []
    for image, colour in enumerate(("red", "blue")):
        paths.append(tmp_path / f"{image}.png")
        Image.new("RGB", (40, 30), colour).save(paths[-1])

    photos = experiment_plots.lifted_queries_photos(lifted, paths, captions)
    framed = [ax for ax in photos.axes if ax.spines["left"].get_linewidth() == 5]
    assert [ax.get_title() for ax in framed] == ["#2: true image", "#1: true image"]

    table = experiment_plots.lifted_queries_table(lifted, captions)
    (ax,) = table.axes
    assert "caption 7" in ax.get_title(loc="left")
    with pytest.raises(ValueError, match="no lifted query"):
        experiment_plots.lifted_queries_table(lifted.iloc[:0], captions)
