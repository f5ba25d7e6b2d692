"""Computations behind notebooks 03-06: Table 1's fine-tuned rows, Tables 2-5 and Figure 2's view.

Tables and figures are those of the MACK paper (Huang, Wang, Zeng and Wang, "MACK: Multimodal
Aligned Conceptual Knowledge for Unpaired Image-text Matching"), called "the paper" below.

- Table 1, fine-tuned rows (`finetune_experiment`): W learned from unpaired training images and
  texts (eqs. 2-3), its "w/o implicit prior" and "w/o knowledge" variants, each scored on the
  test split next to the pretrained knowledge. Every W is cached, keyed by knowledge, data and
  config.
- Tables 2-3 (`rerank_table`): base models re-ranked by base + lambda * MACK score (section 3.4).
- Figure 2's view (`lifted_queries`): queries whose true match the re-ranking moves up.
- Table 4 (`region_cap_table`): the region cap f of the knowledge against re-ranked rsum.
- Table 5 (`hyperparameter_grid`): re-ranked rsum over k and lambda.

Every table names its directions `text_to_image` and `image_to_text` and uses the columns of
`mack.paper.METRIC_COLUMNS`. Datasets are evaluated with plain `metrics.evaluate`, which is the
COCO 5K protocol for a COCO-like set (no 1K folds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mack import finetune, metrics, paper
from mack.analysis import (
    Claim,
    compare_directions,
    compare_values,
    metrics_row,
    texts_fingerprint,
)
from mack.config import cache_root
from mack.io import write_json
from mack.knowledge import Knowledge
from mack.matching import ImageRegions, score_matrix, score_pairs
from mack.paper import METRIC_COLUMNS
from mack.rerank import RerankResult, rerank
from mack.text import ParsedText

if TYPE_CHECKING:
    from mack.tiers import TargetSplit, Tier

logger = logging.getLogger(__name__)

CAPTIONS_PER_IMAGE = 5
DIRECTIONS = ("text_to_image", "image_to_text")

PRETRAINED = "pretrained"
FINETUNED = "fine-tuned"
WITHOUT_IMPLICIT_PRIOR = "w/o implicit prior"
WITHOUT_KNOWLEDGE = "w/o knowledge"
FINETUNE_VARIANTS = (FINETUNED, WITHOUT_IMPLICIT_PRIOR, WITHOUT_KNOWLEDGE)
FINETUNE_CACHE_VERSION = 1

# Table 1's fine-tuned rows: what the paper reports, compared on rsum.
TABLE1_FINETUNED_CLAIMS = (
    Claim("fine-tuned is better than pretrained", PRETRAINED, FINETUNED),
    Claim("w/o implicit prior is better than pretrained", PRETRAINED, WITHOUT_IMPLICIT_PRIOR),
    Claim("w/o implicit prior is below fine-tuned", WITHOUT_IMPLICIT_PRIOR, FINETUNED),
    Claim("w/o knowledge is worse than pretrained", WITHOUT_KNOWLEDGE, PRETRAINED),
)


class VariantUnavailableError(LookupError):
    """A fine-tuning variant that this tier cannot build; the message gives the reason."""


# ----------------------------------------------------------------------------- parsing


_PARSED: dict[tuple[str, ...], list[ParsedText]] = {}


def parse_captions(
    tier: Tier, knowledge: Knowledge, captions: Sequence[str], progress: bool = False
) -> list[ParsedText]:
    """Parse `captions` with the tier's parser for `knowledge`, reusing an earlier identical parse.

    The result is kept in memory for the process, keyed by the tier, the knowledge's object and
    attribute words and the captions, so region-capped knowledge with the same vocabulary does
    not parse again.
    """
    digest = hashlib.blake2b(digest_size=16)
    for words in (sorted(knowledge.objects()), sorted(knowledge.attributes()), captions):
        digest.update(json.dumps(list(words)).encode())
    key = (tier.name, json.dumps(tier.synonyms(), sort_keys=True), digest.hexdigest())
    if key not in _PARSED:
        _PARSED[key] = tier.parser(knowledge).parse_many(list(captions), progress=progress)
    return _PARSED[key]


def photo_paths(split: TargetSplit) -> list[Path] | None:
    """Return the photo path of each image of `split` in order, or None on a tier without photos."""
    coco = split.extra.get("coco")
    if coco is None:
        return None
    return [Path(coco.images[image_id].path) for image_id in split.extra["image_ids"]]


def evaluate_row(
    knowledge: Knowledge,
    texts: Sequence[ParsedText],
    images: ImageRegions,
    W: np.ndarray | None = None,
    captions_per_image: int = CAPTIONS_PER_IMAGE,
) -> dict[str, float]:
    """Score all pairs with eq. 4 (W applied to prototypes and regions when given) and evaluate.

    Returns one row of recalls in percent, in the columns of METRIC_COLUMNS.
    """
    sims = score_matrix(knowledge, texts, images, W=W, transform="both", progress=False)
    return metrics_row(metrics.evaluate(sims, captions_per_image=captions_per_image))


# ----------------------------------------------------------------------------- Table 1, fine-tuning


@dataclass
class TrainingData:
    """Unpaired training material of one fine-tuning variant.

    images: regions (n_images, max_regions, F); texts: captions parsed against the knowledge.
    """

    images: ImageRegions
    texts: list[ParsedText]
    images_from: str
    texts_from: str


def training_data(
    tier: Tier, variant: str, knowledge: Knowledge, dataset: str, progress: bool = False
) -> TrainingData:
    """Return the images and texts that `variant` trains on.

    "fine-tuned" and "w/o knowledge" use the training images and captions of `dataset`.
    "w/o implicit prior" keeps those images but takes texts that describe other images: the
    training captions of the tier's other dataset (synthetic: coco_like, paper: MSCOCO), or on
    coco-mini the captions of coco-extra, whose images are not in coco-mini. Raises
    VariantUnavailableError when the tier has no such texts.
    """
    if variant not in FINETUNE_VARIANTS:
        raise ValueError(f"unknown fine-tuning variant {variant!r}: use one of {FINETUNE_VARIANTS}")
    train = tier.train(dataset)
    images_from = f"{dataset} {train.split}"
    if variant != WITHOUT_IMPLICIT_PRIOR:
        texts = parse_captions(tier, knowledge, train.captions, progress)
        return TrainingData(train.images, texts, images_from, images_from)

    captions, texts_from = _captions_of_other_images(tier, dataset)
    texts = parse_captions(tier, knowledge, captions, progress)
    return TrainingData(train.images, texts, images_from, texts_from)


def _captions_of_other_images(tier: Tier, dataset: str) -> tuple[list[str], str]:
    """Return captions that describe none of `dataset`'s training images, and where they come from."""
    if tier.name == "coco-mini":
        extra = tier.data.knowledge_sets.get("coco-extra")
        if extra is None or not extra.captions:
            raise VariantUnavailableError(
                "coco-mini has one caption source besides its own images: the captions of "
                "coco-extra (coco-extra/annotations/captions_extra.json), which were not found"
            )
        captions = [text for image_id in extra.images for text in extra.captions.get(image_id, [])]
        captioned = sum(1 for texts in extra.captions.values() if texts)
        return captions, f"coco-extra captions ({captioned} images)"

    others = [name for name in tier.datasets if name != dataset]
    if not others:
        raise VariantUnavailableError(
            f"tier {tier.name!r} has no second dataset to take unpaired texts from"
        )
    other = tier.train(others[0])
    return list(other.captions), f"{others[0]} {other.split}"


@dataclass
class FinetuneRun:
    """One trained variant: W (F, F) float32, the word vectors it multiplies, and its log."""

    variant: str
    W: np.ndarray
    knowledge_base: Knowledge  # pretrained prototypes, or the learned vectors (w/o knowledge)
    log: finetune.TrainingLog
    images_from: str
    texts_from: str
    folder: Path  # cache folder with W.npz, training_log.json and run.json
    cached: bool  # True when read from the cache instead of trained


def finetune_cache_key(
    knowledge: Knowledge, data: TrainingData, variant: str, config: finetune.FinetuneConfig
) -> str:
    """Hash everything a trained W depends on: knowledge, images, texts, variant and config."""
    digest = hashlib.blake2b(digest_size=8)
    parts = (
        str(FINETUNE_CACHE_VERSION),
        variant,
        finetune.knowledge_fingerprint(knowledge),
        finetune.images_fingerprint(data.images),
        texts_fingerprint(data.texts),
        json.dumps(config.to_dict(), sort_keys=True),
    )
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def finetune_run(
    knowledge: Knowledge,
    data: TrainingData,
    variant: str,
    config: finetune.FinetuneConfig,
    cache_dir: str | os.PathLike,
    *,
    dataset: str | None = None,
    progress: bool = False,
) -> FinetuneRun:
    """Train `variant` on `data`, or read it from `cache_dir` when the same inputs trained before.

    The folder finetune-<variant>-<key> contains FinetuneResult.save's files and run.json, which is
    written last and marks the run complete. An interrupted run resumes from its checkpoint.
    """
    slug = variant.replace("w/o ", "without-").replace(" ", "-")
    key = finetune_cache_key(knowledge, data, variant, config)
    folder = Path(cache_dir) / f"finetune-{slug}-{key}"
    if (folder / "run.json").is_file():
        logger.info("%s: cached W in %s", variant, folder)
        return _load_run(folder, knowledge, variant, data)

    folder.mkdir(parents=True, exist_ok=True)
    train = (
        finetune.finetune_without_knowledge if variant == WITHOUT_KNOWLEDGE else finetune.finetune
    )
    checkpoint = folder / "checkpoint.pt"
    result = train(
        knowledge,
        data.images,
        data.texts,
        config,
        dataset=dataset,
        checkpoint=checkpoint,
        cache_dir=cache_dir,
        progress=progress,
    )
    result.save(folder)
    write_json(
        folder / "run.json",
        {
            "variant": variant,
            "images_from": data.images_from,
            "texts_from": data.texts_from,
            "key": key,
        },
    )
    checkpoint.unlink(missing_ok=True)
    return FinetuneRun(
        variant,
        result.W,
        result.knowledge_base,
        result.log,
        data.images_from,
        data.texts_from,
        folder,
        cached=False,
    )


def _load_run(folder: Path, knowledge: Knowledge, variant: str, data: TrainingData) -> FinetuneRun:
    W, _ = finetune.load_transform(folder / "W.npz")
    log = finetune.TrainingLog.from_dict(json.loads((folder / "training_log.json").read_text()))
    base = knowledge
    if variant == WITHOUT_KNOWLEDGE:
        base = Knowledge.load(folder / "knowledge_learned.npz")
    return FinetuneRun(
        variant, W, base, log, data.images_from, data.texts_from, folder, cached=True
    )


@dataclass
class FinetuneExperiment:
    """Table 1's fine-tuned rows with the runs behind them.

    table: rows "pretrained" and each trained variant, columns METRIC_COLUMNS (percent).
    sources: per row, the images and texts it trained on. skipped: variant -> reason.
    """

    table: pd.DataFrame
    runs: dict[str, FinetuneRun]
    sources: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)


def finetune_experiment(
    tier: Tier,
    config: finetune.FinetuneConfig | None = None,
    *,
    dataset: str | None = None,
    seed: int = 0,
    variants: Iterable[str] = FINETUNE_VARIANTS,
    progress: bool = False,
) -> FinetuneExperiment:
    """Train (or read from the cache) each fine-tuning variant and score it on the test split.

    dataset: the target dataset, default the tier's first (Table 1 is on Flickr30k). seed: the
    seed of the pretrained knowledge. Variants the tier cannot build are listed in `skipped`.
    """
    config = config or finetune.FinetuneConfig()
    dataset = dataset or tier.datasets[0]
    knowledge = tier.knowledge(seed=seed)
    test = tier.test(dataset)
    test_texts = parse_captions(tier, knowledge, test.captions, progress)
    cache_dir = cache_root() / tier.name / "finetune"

    rows = {PRETRAINED: evaluate_row(knowledge, test_texts, test.images)}
    sources = {PRETRAINED: {"images": "none (no training)", "texts": "none (no training)"}}
    runs, skipped = {}, {}
    for variant in variants:
        try:
            data = training_data(tier, variant, knowledge, dataset, progress)
        except VariantUnavailableError as error:
            logger.info("%s skipped: %s", variant, error)
            skipped[variant] = str(error)
            continue
        run = finetune_run(
            knowledge, data, variant, config, cache_dir, dataset=dataset, progress=progress
        )
        runs[variant] = run
        rows[variant] = evaluate_row(run.knowledge_base, test_texts, test.images, W=run.W)
        sources[variant] = {"images": run.images_from, "texts": run.texts_from}
        logger.info("%s: rsum %.1f", variant, rows[variant]["rsum"])

    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_COLUMNS))
    return FinetuneExperiment(table, runs, pd.DataFrame.from_dict(sources, orient="index"), skipped)


def finetune_rows(tier: Tier, config: finetune.FinetuneConfig | None = None, **options: Any):
    """Return Table 1's fine-tuned rows next to the pretrained row (see `finetune_experiment`)."""
    return finetune_experiment(tier, config, **options).table


# ----------------------------------------------------------------------------- re-ranking


PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


class CachedPairScorer:
    """A pair scorer that computes each (image, text) pair once and reuses it on later calls.

    Re-ranking with several k and lambda requests the same pairs again; only new pairs reach
    `pair_scorer`. Memory grows with the number of distinct pairs scored (16 bytes each).
    """

    def __init__(self, pair_scorer: PairScorer, n_images: int, n_texts: int):
        self.pair_scorer = pair_scorer
        self.n_images, self.n_texts = int(n_images), int(n_texts)
        self._codes = np.zeros(0, dtype=np.int64)  # image * n_texts + text, sorted
        self._scores = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._codes)

    def __call__(self, image_idx: np.ndarray, text_idx: np.ndarray) -> np.ndarray:
        """Return (P,) float64 scores of the pairs (image_idx[i], text_idx[i])."""
        codes = self._codes_of(image_idx, text_idx)
        missing = self._unseen(codes)
        if missing.size:
            images, texts = np.divmod(missing, self.n_texts)
            scores = np.asarray(self.pair_scorer(images, texts), dtype=np.float64)
            if scores.shape != missing.shape:
                raise ValueError(
                    f"pair_scorer returned shape {scores.shape} for {missing.size} pairs"
                )
            merged = np.concatenate([self._codes, missing])
            order = np.argsort(merged, kind="stable")
            self._codes = merged[order]
            self._scores = np.concatenate([self._scores, scores])[order]
        return self._scores[np.searchsorted(self._codes, codes)]

    def _unseen(self, codes: np.ndarray) -> np.ndarray:
        """Return the sorted distinct codes not scored yet (a binary search per code)."""
        positions = np.searchsorted(self._codes, codes)
        seen = positions < len(self._codes)
        seen[seen] = self._codes[positions[seen]] == codes[seen]
        unseen = np.sort(codes[~seen])
        if unseen.size:
            unseen = unseen[np.concatenate([[True], unseen[1:] != unseen[:-1]])]
        return unseen

    def _codes_of(self, image_idx: np.ndarray, text_idx: np.ndarray) -> np.ndarray:
        image_idx = np.asarray(image_idx)
        text_idx = np.asarray(text_idx)
        if image_idx.ndim != 1 or image_idx.shape != text_idx.shape:
            raise ValueError(
                f"image_idx {image_idx.shape} and text_idx {text_idx.shape} must be 1-D of equal "
                "length"
            )
        for name, idx, n in (
            ("image_idx", image_idx, self.n_images),
            ("text_idx", text_idx, self.n_texts),
        ):
            if idx.size and not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"{name} must contain integers, got dtype {idx.dtype}")
            bad = np.flatnonzero((idx < 0) | (idx >= n))
            if bad.size:
                raise ValueError(f"{name}[{bad[0]}] = {idx[bad[0]]} is outside 0..{n - 1}")
        return image_idx.astype(np.int64) * self.n_texts + text_idx.astype(np.int64)


def mack_pair_scorer(
    knowledge: Knowledge,
    texts: Sequence[ParsedText],
    images: ImageRegions,
    *,
    W: np.ndarray | None = None,
    transform: str = "both",
    progress: bool = False,
) -> CachedPairScorer:
    """Return a cached scorer of (image, text) pairs by eq. 4, for `mack.rerank.rerank`.

    texts: the test captions parsed against `knowledge`; images: the test regions
    (n_images, max_regions, F). W: a fine-tuned matrix (F, F) or None for the pretrained knowledge.
    """

    def score(image_idx: np.ndarray, text_idx: np.ndarray) -> np.ndarray:
        return score_pairs(
            knowledge,
            texts,
            images,
            image_idx,
            text_idx,
            W=W,
            transform=transform,
            progress=progress,
        )

    return CachedPairScorer(score, len(images), len(texts))


def rerank_table(
    base_sims: Mapping[str, np.ndarray],
    pair_scorer: PairScorer,
    k: int = 15,
    lam: float = 0.1,
    captions_per_image: int = CAPTIONS_PER_IMAGE,
) -> pd.DataFrame:
    """Evaluate each base model alone and re-ranked with MACK (Tables 2 and 3).

    base_sims: model name -> (n_images, n_texts) similarities on one test set, all against the
    images and texts that `pair_scorer` scores. Returns rows "<model>" and "<model> + MACK",
    columns METRIC_COLUMNS (percent).
    """
    rows = {}
    for model, base in base_sims.items():
        rows[model] = metrics_row(metrics.evaluate(base, captions_per_image=captions_per_image))
        result = rerank(base, pair_scorer, k=k, lam=lam)
        rows[f"{model} + MACK"] = reranked_row(result, captions_per_image)
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_COLUMNS))


def reranked_row(result: RerankResult, captions_per_image: int = CAPTIONS_PER_IMAGE) -> dict:
    """Return the METRIC_COLUMNS row of a re-ranked result (each direction its own order)."""
    evaluated = metrics.evaluate(result.image_to_text, result.text_to_image, captions_per_image)
    return metrics_row(evaluated)


def pick_model(models: Iterable[str], preferred: Sequence[str] = ()) -> str:
    """Return the first of `preferred` among `models`, else the first model."""
    models = list(models)
    if not models:
        raise ValueError("no base model to choose from: the tier returned no similarity matrix")
    for name in preferred:
        if name in models:
            return name
    return models[0]


PAPER_TABLE2 = {
    "flickr30k": paper.TABLE2_FLICKR30K,
    "f30k_like": paper.TABLE2_FLICKR30K,
    "mscoco": paper.TABLE2_MSCOCO_5K,
    "coco_like": paper.TABLE2_MSCOCO_5K,
    "coco-mini": paper.TABLE2_MSCOCO_5K,
}
PAPER_TABLE3 = {
    "flickr30k": paper.TABLE3_COCO_TO_FLICKR30K,
    "f30k_like": paper.TABLE3_COCO_TO_FLICKR30K,
    "mscoco": paper.TABLE3_FLICKR30K_TO_COCO,
    "coco_like": paper.TABLE3_FLICKR30K_TO_COCO,
}


@dataclass
class EvaluationSet:
    """A dataset's test split with its captions parsed against the knowledge and a MACK scorer."""

    split: TargetSplit
    texts: list[ParsedText]
    scorer: CachedPairScorer


def evaluation_set(
    tier: Tier,
    knowledge: Knowledge,
    dataset: str | None = None,
    W: np.ndarray | None = None,
    progress: bool = False,
) -> EvaluationSet:
    """Load `dataset`'s test split, parse its captions and build its cached MACK pair scorer."""
    split = tier.test(dataset)
    texts = parse_captions(tier, knowledge, split.captions, progress)
    return EvaluationSet(split, texts, mack_pair_scorer(knowledge, texts, split.images, W=W))


@dataclass
class RerankExperiment:
    """Tables 2 and 3 of one tier: test dataset -> rerank_table, plus what was skipped and why."""

    table2: dict[str, pd.DataFrame]
    table3: dict[str, pd.DataFrame]
    evaluation_sets: dict[str, EvaluationSet]
    skipped: list[str] = field(default_factory=list)


def rerank_experiment(
    tier: Tier, knowledge: Knowledge, k: int = 15, lam: float = 0.1, progress: bool = False
) -> RerankExperiment:
    """Re-rank every base model of every dataset of `tier` with MACK (Tables 2 and 3).

    Table 2 re-ranks the base models trained on the test set's own dataset, Table 3 those trained
    on another dataset (tier.cross_base_similarities). A dataset without such models is skipped.
    """
    experiment = RerankExperiment({}, {}, {})
    for dataset in tier.datasets:
        experiment.evaluation_sets[dataset] = evaluation_set(
            tier, knowledge, dataset, progress=progress
        )
        scorer = experiment.evaluation_sets[dataset].scorer
        bases = tier.base_similarities(dataset)
        if bases:
            experiment.table2[dataset] = rerank_table(bases, scorer, k, lam)
        else:
            experiment.skipped.append(f"Table 2, {dataset}: the tier has no base model for it")
        cross = tier.cross_base_similarities(dataset)
        if cross:
            experiment.table3[dataset] = rerank_table(cross, scorer, k, lam)
        else:
            experiment.skipped.append(
                f"Table 3, {dataset}: no base model trained on another dataset of tier "
                f"{tier.name!r} ({len(tier.datasets)} dataset(s))"
            )
    return experiment


def rerank_claims(table: pd.DataFrame) -> list[Claim]:
    """Return one claim per base model of a rerank_table: "+ MACK" raises its rsum.

    The paper's answer is yes for every base model of its Tables 2 and 3.
    """
    models = [name for name in table.index if not name.endswith(" + MACK")]
    return [
        Claim(f"{model} + MACK is better than {model}", model, f"{model} + MACK", paper=True)
        for model in models
    ]


def rerank_paper_comparison(
    tables: Mapping[str, pd.DataFrame], paper_tables: Mapping[str, pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compare re-ranking tables with the paper's: (directions, values of the shared models).

    tables: test dataset -> rerank_table; paper_tables: test dataset -> the paper's table
    (PAPER_TABLE2 or PAPER_TABLE3). Directions follow `rerank_claims`. Values put the paper's
    and this run's rsum side by side for the models that the paper also reports.
    """
    directions, values = [], []
    for dataset, table in tables.items():
        found = compare_directions(table, pd.DataFrame(), rerank_claims(table))
        found.index = [f"{dataset}: {effect}" for effect in found.index]
        directions.append(found)
        reference = paper_tables.get(dataset)
        shared = pd.DataFrame() if reference is None else compare_values(table, reference, ["rsum"])
        if not shared.empty:
            shared.index = [f"{dataset}: {name}" for name in shared.index]
            values.append(shared)
    directions_table = pd.concat(directions) if directions else pd.DataFrame()
    values_table = pd.concat(values) if values else pd.DataFrame()
    return directions_table, values_table


# ----------------------------------------------------------------------------- Figure 2's view


def _true_candidates(direction: str, query: int, captions_per_image: int) -> np.ndarray:
    if direction == "text_to_image":
        return np.array([query // captions_per_image])
    return np.arange(query * captions_per_image, (query + 1) * captions_per_image)


def _query_scores(sims: np.ndarray, direction: str, query: int) -> np.ndarray:
    return sims[:, query] if direction == "text_to_image" else sims[query]


def _ranked(scores: np.ndarray) -> np.ndarray:
    """Return candidate indices from the highest score down, ties to the lower index."""
    return np.lexsort((np.arange(len(scores)), -scores))


def _query_ranks(sims: np.ndarray, direction: str, captions_per_image: int) -> np.ndarray:
    if direction == "text_to_image":
        return metrics.text_to_image_ranks(sims, captions_per_image)
    if direction == "image_to_text":
        return metrics.image_to_text_ranks(sims, captions_per_image)
    raise ValueError(f"unknown direction {direction!r}: use one of {DIRECTIONS}")


def rank_changes(
    base: np.ndarray, reranked: RerankResult, captions_per_image: int = CAPTIONS_PER_IMAGE
) -> pd.DataFrame:
    """Count, per direction, the queries whose true match moved up, stayed or moved down."""
    rows = {}
    for direction in DIRECTIONS:
        before = _query_ranks(base, direction, captions_per_image)
        after = _query_ranks(getattr(reranked, direction), direction, captions_per_image)
        rows[direction] = {
            "queries": len(before),
            "moved up": int(np.sum(after < before)),
            "unchanged": int(np.sum(after == before)),
            "moved down": int(np.sum(after > before)),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def lifted_queries(
    base: np.ndarray,
    reranked: RerankResult,
    n: int = 4,
    *,
    direction: str = "text_to_image",
    top: int = 3,
    captions_per_image: int = CAPTIONS_PER_IMAGE,
) -> pd.DataFrame:
    """Return the `n` queries whose true match the re-ranking lifts most, with top-`top` lists.

    Queries moved to rank 1 come first, then larger lifts, then lower query index, and a query
    whose true match an earlier example already shows is passed over. Columns:
    query, true (the true candidates), rank_before / rank_after (1-based rank of the best true
    candidate), top_before / top_after (candidate indices, best first), base_before / mack_before
    and base_after / mack_after (each listed candidate's base score and MACK score). A MACK score
    is None for a pair outside the re-ranked top-k, which never happens when top <= k.
    """
    before_ranks = _query_ranks(base, direction, captions_per_image)
    after_ranks = _query_ranks(getattr(reranked, direction), direction, captions_per_image)
    lifted = np.flatnonzero(after_ranks < before_ranks)
    order = np.lexsort((lifted, -(before_ranks - after_ranks)[lifted], after_ranks[lifted]))
    mack = _pair_score_lookup(reranked, base.shape[1])

    records, shown = [], set()
    for query in lifted[order]:
        if len(records) == n:
            break
        true = _true_candidates(direction, query, captions_per_image)
        if shown.intersection(true.tolist()):
            continue  # one example per true match, so that the examples differ
        shown.update(true.tolist())
        record = {
            "query": int(query),
            "true": [int(c) for c in true],
            "rank_before": int(before_ranks[query]) + 1,
            "rank_after": int(after_ranks[query]) + 1,
        }
        for when, sims in (("before", base), ("after", getattr(reranked, direction))):
            candidates = _ranked(_query_scores(sims, direction, query))[:top]
            record[f"top_{when}"] = [int(c) for c in candidates]
            record[f"base_{when}"] = [
                float(_query_scores(base, direction, query)[c]) for c in candidates
            ]
            record[f"mack_{when}"] = [mack(direction, query, int(c)) for c in candidates]
        records.append(record)
    columns = [
        "query",
        "true",
        "rank_before",
        "rank_after",
        "top_before",
        "base_before",
        "mack_before",
        "top_after",
        "base_after",
        "mack_after",
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def _pair_score_lookup(reranked: RerankResult, n_texts: int) -> Callable[[str, int, int], Any]:
    """Return f(direction, query, candidate) -> the pair's MACK score, or None if never scored."""
    codes = reranked.image_idx * n_texts + reranked.text_idx
    order = np.argsort(codes)
    sorted_codes = codes[order]

    def lookup(direction: str, query: int, candidate: int) -> float | None:
        image, text = (candidate, query) if direction == "text_to_image" else (query, candidate)
        code = image * n_texts + text
        position = np.searchsorted(sorted_codes, code)
        if position < len(sorted_codes) and sorted_codes[position] == code:
            return float(reranked.pair_scores[order[position]])
        return None

    return lookup


# ----------------------------------------------------------------------------- Table 4, region cap


def cap_label(region_cap: int | None) -> str:
    """Return a region cap as the paper writes it: "20", ..., "inf" for no cap."""
    return "inf" if region_cap is None else str(region_cap)


def region_cap_table(
    tier: Tier,
    caps: Sequence[int | None] = (20, 50, 100, None),
    *,
    k: int = 15,
    lam: float = 0.1,
    seed: int = 0,
    model: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Build the knowledge with each region cap f and re-rank every dataset's base model (Table 4).

    Returns one row per cap, index f ("20", ..., "inf"), columns p_percent (the share of
    word-region annotations that the cap keeps) and per dataset: <dataset>_rsum (base + MACK, the
    Table 4 metric), <dataset>_mack_rsum (MACK alone) and <dataset>_base_rsum (the base model,
    the same in every row). model: the base model, default ALBEF as in the paper when present.
    """
    rows = {}
    for cap in caps:
        knowledge = tier.knowledge(region_cap=cap, seed=seed)
        row = {"p_percent": 100.0 * _share_kept(knowledge, cap)}
        for dataset in tier.datasets:
            row.update(_capped_dataset_row(tier, knowledge, dataset, k, lam, model, progress))
        rows[cap_label(cap)] = row
        logger.info("region cap f=%s: %s", cap_label(cap), row)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "f"
    return table


def _share_kept(knowledge: Knowledge, region_cap: int | None) -> float:
    """Return p, the share of word-region annotations that the knowledge's region cap kept."""
    share = knowledge.provenance.get("share_kept")
    if share is None and region_cap is None:
        return 1.0  # no cap keeps every annotation
    if share is None:
        raise ValueError(
            f"knowledge built with region_cap={region_cap} has no provenance['share_kept']; "
            "build it with a builder that records the share of annotations kept"
        )
    return float(share)


def _capped_dataset_row(
    tier: Tier,
    knowledge: Knowledge,
    dataset: str,
    k: int,
    lam: float,
    model: str | None,
    progress: bool,
) -> dict[str, float]:
    test = tier.test(dataset)
    texts = parse_captions(tier, knowledge, test.captions, progress)
    bases = tier.base_similarities(dataset)
    base = bases[model or pick_model(bases, ("ALBEF", "CLIP"))]
    scorer = mack_pair_scorer(knowledge, texts, test.images)
    base_rsum = metrics.evaluate(base, captions_per_image=CAPTIONS_PER_IMAGE)["rsum"]
    return {
        f"{dataset}_rsum": reranked_row(rerank(base, scorer, k=k, lam=lam))["rsum"],
        f"{dataset}_mack_rsum": evaluate_row(knowledge, texts, test.images)["rsum"],
        f"{dataset}_base_rsum": base_rsum,
    }


def region_cap_claims(table: pd.DataFrame) -> list[Claim]:
    """Return Table 4's claims for each dataset column: rsum grows with every larger cap.

    table: `region_cap_table` output; neighbouring caps are compared in increasing order of f.
    """
    caps = sorted(table.index, key=lambda label: math.inf if label == "inf" else int(label))
    claims = []
    columns = [
        name
        for name in table.columns
        if name.endswith("_rsum") and not name.endswith(("_mack_rsum", "_base_rsum"))
    ]
    for column in columns:
        dataset = column[: -len("_rsum")]
        for lower, higher in zip(caps[:-1], caps[1:], strict=True):
            claims.append(
                Claim(f"{dataset}: f={higher} beats f={lower}", lower, higher, column, paper=True)
            )
    return claims


def region_cap_share(table: pd.DataFrame) -> pd.DataFrame:
    """Put the paper's p and this run's p side by side for the caps that both tables have."""
    paper_share = paper.TABLE4_REGION_CAP.set_index("f")["p_percent"]
    shared = [cap for cap in table.index if cap in paper_share.index]
    return pd.DataFrame(
        {
            "p_percent (paper)": paper_share[shared],
            "p_percent (this run)": table.loc[shared, "p_percent"],
        }
    )


# ----------------------------------------------------------------------------- Table 5, k and lambda


def hyperparameter_grid(
    base: np.ndarray,
    pair_scorer: PairScorer,
    ks: Sequence[int],
    lambdas: Sequence[float],
    captions_per_image: int = CAPTIONS_PER_IMAGE,
) -> pd.DataFrame:
    """Return the re-ranked rsum for every k and lambda: index k, columns lambda.

    The scorer is wrapped in a CachedPairScorer unless it is one, and the largest k runs first,
    so every MACK score is computed once and the other cells only re-order.
    """
    if not isinstance(pair_scorer, CachedPairScorer):
        pair_scorer = CachedPairScorer(pair_scorer, *base.shape)
    grid = pd.DataFrame(
        index=pd.Index(list(ks), name="k"),
        columns=pd.Index(list(lambdas), name="lambda"),
        dtype=float,
    )
    for k in sorted(ks, reverse=True):
        for lam in lambdas:
            result = rerank(base, pair_scorer, k=k, lam=lam)
            grid.loc[k, lam] = reranked_row(result, captions_per_image)["rsum"]
    return grid


def table5(
    base: np.ndarray,
    pair_scorer: PairScorer,
    ks: Sequence[int] = (10, 15, 20),
    lambdas: Sequence[float] = (0.1, 0.2, 0.3),
    k: int = 15,
    lam: float = 0.1,
    captions_per_image: int = CAPTIONS_PER_IMAGE,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return Table 5's two parts: rsum over `ks` at lambda `lam`, and over `lambdas` at `k`.

    The tables have the columns of mack.paper.TABLE5_K ("k", "rsum") and TABLE5_LAMBDA
    ("lambda", "rsum").
    """
    by_k = hyperparameter_grid(base, pair_scorer, ks, [lam], captions_per_image)
    by_lambda = hyperparameter_grid(base, pair_scorer, [k], lambdas, captions_per_image)
    table_k = pd.DataFrame({"k": list(ks), "rsum": by_k[lam].to_numpy()})
    table_lambda = pd.DataFrame({"lambda": list(lambdas), "rsum": by_lambda.loc[k].to_numpy()})
    return table_k, table_lambda


def table5_comparison(
    base_rsum: float,
    table_k: pd.DataFrame,
    table_lambda: pd.DataFrame,
    paper_base_rsum: float,
    paper_k: pd.DataFrame,
    paper_lambda: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, list[Claim]]:
    """Put Table 5 of this run and of the paper in one rsum column each, and list its claims.

    Rows: "base", "k=<k>" and "lambda=<lambda>". Claims: each setting beats the base model, and
    every neighbouring pair of k and of lambda goes the way the paper's numbers go.
    """

    def stack(base: float, by_k: pd.DataFrame, by_lambda: pd.DataFrame) -> pd.DataFrame:
        rows = {"base": base}
        rows.update(
            {f"k={value}": rsum for value, rsum in zip(by_k["k"], by_k["rsum"], strict=True)}
        )
        rows.update(
            {
                f"lambda={value}": rsum
                for value, rsum in zip(by_lambda["lambda"], by_lambda["rsum"], strict=True)
            }
        )
        return pd.DataFrame({"rsum": pd.Series(rows, dtype=float)})

    run = stack(base_rsum, table_k, table_lambda)
    paper = stack(paper_base_rsum, paper_k, paper_lambda)
    claims = [
        Claim(f"{name} beats the base model", "base", name)
        for name in run.index
        if name != "base" and name in paper.index
    ]
    for prefix in ("k", "lambda"):
        names = [
            name for name in run.index if name.startswith(f"{prefix}=") and name in paper.index
        ]
        for first, second in zip(names[:-1], names[1:], strict=True):
            lower, higher = (first, second)
            if paper.loc[second, "rsum"] < paper.loc[first, "rsum"]:
                lower, higher = second, first
            claims.append(Claim(f"{higher} beats {lower}", lower, higher))
    return run, paper, claims
