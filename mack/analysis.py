"""Computations behind notebooks 01, 02 and 07: knowledge statistics (Figure 3), Table 1's
pretrained rows with a qualitative example, and the t-SNE view of the prototypes (Figure 4).
Table and figure numbers are those of the MACK paper (Huang, Wang, Zeng, Wang), whose published
values `mack.paper` stores.

The notebooks only call these functions and show their results. Every table names its
directions `image_to_text` and `text_to_image`; the columns follow `mack.paper.METRIC_COLUMNS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mack import metrics
from mack.knowledge import ATTRIBUTE, OBJECT, Knowledge
from mack.matching import ImageRegions, score_matrix, unit_features
from mack.paper import METRIC_COLUMNS
from mack.text import ParsedText, Unit

logger = logging.getLogger(__name__)

FIGURE3_THRESHOLD = 20  # the dashed line of Figure 3: words with fewer regions count as "few"

# Table 1's pretrained rows: row name -> score_matrix options. A footnote of the MACK paper
# reports mean-max and max-max pooling as much worse than max-mean, without numbers.
TABLE1_PRETRAINED_VARIANTS: dict[str, dict[str, Any]] = {
    "pretrained": {},
    "w/o region prototypes": {"prototype": "random_region"},
    "w/o adjectives": {"use_adjectives": False},
    "w/o max-mean pooling": {"pooling": "mean_mean"},
    "mean-max pooling": {"pooling": "mean_max"},
    "max-max pooling": {"pooling": "max_max"},
}


@dataclass(frozen=True)
class Claim:
    """An effect that the MACK paper reports: row `lower` scores less `column` than row `higher`.

    paper: the paper's answer when its tables lack one of the rows, taken from its text. None
    reads the answer from the paper's table passed to `compare_directions`.
    """

    effect: str
    lower: str
    higher: str
    column: str = "rsum"
    paper: bool | None = None


TABLE1_PRETRAINED_CLAIMS = (
    Claim("w/o region prototypes is worse than pretrained", "w/o region prototypes", "pretrained"),
    Claim("w/o adjectives is worse than pretrained", "w/o adjectives", "pretrained"),
    Claim("mean-mean pooling is worse than max-mean", "w/o max-mean pooling", "pretrained"),
    Claim("mean-max pooling is worse than max-mean", "mean-max pooling", "pretrained", paper=True),
    Claim("max-max pooling is worse than max-mean", "max-max pooling", "pretrained", paper=True),
    Claim(
        "random regions hurt more than dropping adjectives",
        "w/o region prototypes",
        "w/o adjectives",
    ),
    Claim(
        "random regions hurt more than mean-mean pooling",
        "w/o region prototypes",
        "w/o max-mean pooling",
    ),
)


# ----------------------------------------------------------------------------- knowledge (Figure 3)


def region_count_stats(knowledge: Knowledge, threshold: int = FIGURE3_THRESHOLD) -> dict[str, Any]:
    """Summarise the regions per word of `knowledge` (counts after any region cap).

    Returns words, objects, attributes, annotations (sum of counts), min/median/max regions per
    word, and share_under_threshold: the share of words with fewer than `threshold` regions.
    """
    counts = np.asarray(knowledge.counts)
    if counts.size == 0:
        raise ValueError("the knowledge has no words, so it has no region counts to summarise")
    return {
        "words": int(counts.size),
        "objects": sum(1 for kind in knowledge.types if kind == OBJECT),
        "attributes": sum(1 for kind in knowledge.types if kind == ATTRIBUTE),
        "annotations": int(counts.sum()),
        "min_regions": int(counts.min()),
        "median_regions": float(np.median(counts)),
        "max_regions": int(counts.max()),
        "threshold": int(threshold),
        "share_under_threshold": float(np.mean(counts < threshold)),
    }


def knowledge_summary(knowledge: Knowledge, threshold: int = FIGURE3_THRESHOLD) -> pd.DataFrame:
    """Tabulate words, annotations and regions per word for objects, attributes and all words."""
    types = np.asarray(knowledge.types)
    counts = np.asarray(knowledge.counts)
    rows = {}
    for name, mask in ((OBJECT, types == OBJECT), (ATTRIBUTE, types == ATTRIBUTE)):
        rows[name] = _count_row(counts[mask], threshold)
    rows["all"] = _count_row(counts, threshold)
    return pd.DataFrame.from_dict(rows, orient="index")


def _count_row(counts: np.ndarray, threshold: int) -> dict[str, float]:
    if counts.size == 0:
        return {"words": 0, "annotations": 0, "median_regions": 0.0, "max_regions": 0,
                f"share_under_{threshold}": 0.0}  # fmt: skip
    return {
        "words": int(counts.size),
        "annotations": int(counts.sum()),
        "median_regions": float(np.median(counts)),
        "max_regions": int(counts.max()),
        f"share_under_{threshold}": float(np.mean(counts < threshold)),
    }


def figure3_comparison(stats: Mapping[str, Any], paper_share: float) -> pd.DataFrame:
    """Compare the share of words under the Figure 3 line with the paper's (both as fractions).

    stats: `region_count_stats` output. The direction checked is "most words (over half) have
    fewer regions than the line".
    """
    share = float(stats["share_under_threshold"])
    threshold = stats["threshold"]
    return pd.DataFrame(
        {
            "paper": [paper_share, _yes_no(paper_share > 0.5)],
            "this run": [share, _yes_no(share > 0.5)],
        },
        index=[
            f"share of words with < {threshold} regions",
            f"most words have < {threshold} regions",
        ],
    )


# ----------------------------------------------------------------------------- Table 1, pretrained rows


def metrics_row(result: Mapping[str, Any]) -> dict[str, float]:
    """Flatten a `metrics.evaluate` result into the columns of `mack.paper.METRIC_COLUMNS`."""
    row = {}
    for direction in ("text_to_image", "image_to_text"):
        for k in ("r1", "r5", "r10"):
            row[f"{direction}_{k}"] = float(result[direction][k])
    row["rsum"] = float(result["rsum"])
    return {column: row[column] for column in METRIC_COLUMNS}


def table1_pretrained_rows(
    knowledge: Knowledge,
    parsed: Sequence[ParsedText],
    images: ImageRegions,
    *,
    captions_per_image: int = 5,
    progress: bool = False,
) -> pd.DataFrame:
    """Score every pretrained variant of Table 1 and return one row of recalls (percent) each.

    parsed: n_images * captions_per_image parsed captions, caption 5i..5i+4 of image i.
    images: the test regions, (n_images, max_regions, F).
    A variant that the knowledge cannot express is left out and logged: "w/o adjectives" when
    the knowledge has no attribute, "w/o region prototypes" when it stores no random regions.
    """
    rows = {}
    for name, options in TABLE1_PRETRAINED_VARIANTS.items():
        reason = _variant_unavailable(knowledge, options)
        if reason:
            logger.info("Table 1 row %r left out: %s", name, reason)
            continue
        sims = score_matrix(knowledge, parsed, images, progress=progress, **options)
        result = metrics.evaluate(sims, captions_per_image=captions_per_image)
        rows[name] = metrics_row(result)
        logger.info("Table 1 row %r: rsum %.1f", name, rows[name]["rsum"])
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_COLUMNS))


def _variant_unavailable(knowledge: Knowledge, options: Mapping[str, Any]) -> str | None:
    if options.get("use_adjectives") is False and not knowledge.attributes():
        return "the knowledge has no attribute words, so no unit has an adjective to drop"
    if options.get("prototype") == "random_region" and knowledge.random_regions is None:
        return "the knowledge stores no random region per word"
    return None


def chance_row(n_images: int, captions_per_image: int = 5) -> dict[str, float]:
    """Return the expected recalls of random scores in the columns of METRIC_COLUMNS."""
    return metrics_row(metrics.chance_recall(n_images, captions_per_image))


TIE_TOLERANCE = 1e-6  # two recall values closer than this are equal: the effect did not show


def compare_directions(
    run: pd.DataFrame, paper: pd.DataFrame, claims: Sequence[Claim]
) -> pd.DataFrame:
    """Check each claimed effect in the paper and in this run.

    run, paper: tables indexed by row name with the claims' columns. Returns one row per claim:
    the metric, the paper's and this run's answers ("yes"/"no", "n/a" when this run lacks one of
    the two rows; a tie within TIE_TOLERANCE is "no"), whether they agree, and this run's values of
    the two rows.
    """
    records = []
    for claim in claims:
        paper_answer = claim.paper
        if paper_answer is None:
            paper_answer = bool(
                paper.loc[claim.lower, claim.column] < paper.loc[claim.higher, claim.column]
            )
        present = claim.lower in run.index and claim.higher in run.index
        lower = float(run.loc[claim.lower, claim.column]) if present else float("nan")
        higher = float(run.loc[claim.higher, claim.column]) if present else float("nan")
        # Recall sums are multiples of 0.02 % at most, so a smaller gap is float noise, not an effect.
        run_answer = _yes_no(higher - lower > TIE_TOLERANCE) if present else "n/a"
        agree = _yes_no(run_answer == _yes_no(paper_answer)) if present else "n/a"
        records.append(
            {
                "effect": claim.effect,
                "metric": claim.column,
                "paper": _yes_no(paper_answer),
                "this run": run_answer,
                "same direction": agree,
                "this run, expected lower": lower,
                "this run, expected higher": higher,
            }
        )
    return pd.DataFrame.from_records(records).set_index("effect")


def compare_values(
    run: pd.DataFrame, paper: pd.DataFrame, columns: Sequence[str] = METRIC_COLUMNS
) -> pd.DataFrame:
    """Put the paper's and this run's values of the shared rows side by side, with run - paper."""
    shared = [name for name in run.index if name in paper.index]
    table = {}
    for column in columns:
        table[(column, "paper")] = paper.loc[shared, column]
        table[(column, "this run")] = run.loc[shared, column]
        table[(column, "run - paper")] = run.loc[shared, column] - paper.loc[shared, column]
    return pd.DataFrame(table, index=shared)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


# ----------------------------------------------------------------------------- qualitative example


def unit_label(unit: Unit) -> str:
    """Write a unit as its adjectives and noun in text order ("young man")."""
    return " ".join((*unit.adjectives, unit.noun))


def matched_regions(
    knowledge: Knowledge,
    parsed_text: ParsedText,
    regions: np.ndarray,
    *,
    use_adjectives: bool = True,
) -> pd.DataFrame:
    """Find, for each unit of one text, the region of one image it matches best (eq. 4's max).

    regions: (n_regions, F) the image's valid region features.
    Returns one row per unit: unit, region (0-based row of `regions`), cosine. The mean of the
    cosine column is the text's max-mean score against this image.
    """
    regions = np.asarray(regions, dtype=np.float64)
    if regions.ndim != 2 or regions.shape[1] != knowledge.dim:
        raise ValueError(
            f"regions must be (n_regions, {knowledge.dim}) for this knowledge, got {regions.shape}"
        )
    if len(regions) == 0 or not parsed_text.units:
        return pd.DataFrame({"unit": [], "region": [], "cosine": []})

    units = unit_features(knowledge, parsed_text, use_adjectives=use_adjectives)
    cosines = _unit_rows(units.astype(np.float64)) @ _unit_rows(regions).T
    best = cosines.argmax(axis=1)
    return pd.DataFrame(
        {
            "unit": [unit_label(unit) for unit in parsed_text.units],
            "region": best.astype(np.int64),
            "cosine": cosines[np.arange(len(best)), best],
        }
    )


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Scale each row to length 1; an all-zero row stays zero (its cosines are 0)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def pick_example(
    parsed: Sequence[ParsedText],
    sims: np.ndarray,
    *,
    knowledge: Knowledge | None = None,
    images: ImageRegions | None = None,
    min_units: int = 2,
    captions_per_image: int = 5,
) -> int:
    """Return the index of a caption worth showing.

    Candidates have at least `min_units` units and their own image ranks first for them
    (text_to_image). With `knowledge` and `images`, the candidate whose units match the most
    distinct regions of its image wins, else the first candidate. Without any candidate, the
    caption with the most units is returned.
    sims: (n_images, n_texts) scores of `parsed` against the test images.
    """
    if len(parsed) != sims.shape[1]:
        raise ValueError(f"parsed has {len(parsed)} texts but sims has {sims.shape[1]} columns")
    ranks = metrics.text_to_image_ranks(sims, captions_per_image)
    candidates = [
        index
        for index, text in enumerate(parsed)
        if len(text.units) >= min_units and ranks[index] == 0
    ]
    if not candidates:
        return int(np.argmax([len(text.units) for text in parsed]))
    if knowledge is None or images is None:
        return candidates[0]

    def distinct_regions(index: int) -> int:
        regions = images.valid_regions(index // captions_per_image)
        return matched_regions(knowledge, parsed[index], regions)["region"].nunique()

    return max(candidates, key=distinct_regions)


# ----------------------------------------------------------------------------- Figure 4 (t-SNE)


def frequent_concepts(parsed: Sequence[ParsedText], n: int = 100) -> pd.Series:
    """Count the knowledge words (unit nouns and their adjectives) in `parsed`; return the `n` most
    frequent as a Series word -> count, most frequent first, ties in alphabetical order."""
    counter: Counter[str] = Counter()
    for text in parsed:
        for unit in text.units:
            counter[unit.noun] += 1
            counter.update(unit.adjectives)
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:n]
    return pd.Series(dict(ranked), name="count", dtype=np.int64)


def tsne_embedding(
    vectors: np.ndarray, seed: int = 0, perplexity: float | None = None
) -> np.ndarray:
    """Embed `vectors` (n, F) in 2-D with scikit-learn's t-SNE on cosine distances -> (n, 2).

    perplexity: None takes min(30, (n - 1) / 3), which scikit-learn accepts for any n >= 4.
    The PCA initialisation and `seed` make the result reproducible on one machine.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) < 4:
        raise ValueError(f"t-SNE needs (n >= 4, F) vectors, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("t-SNE input contains NaN or inf")
    if perplexity is None:
        perplexity = min(30.0, (len(vectors) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca",
                random_state=seed)  # fmt: skip
    # One OpenMP thread: with more, Barnes-Hut t-SNE of 100 points took 37 s instead of 2 s on
    # 2 busy cores (measured once, scikit-learn 1.9.1), and the embedding is identical.
    with threadpool_limits(limits=1):
        return tsne.fit_transform(vectors)


def same_group_neighbours(vectors: np.ndarray, groups: Sequence[str], k: int = 5) -> float:
    """Return the mean share of each vector's k cosine-nearest other vectors in its own group.

    vectors: (n, F); groups: n labels. Higher means the groups are more compact.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(groups)
    if len(labels) != len(vectors):
        raise ValueError(f"{len(labels)} group labels for {len(vectors)} vectors")
    if not 1 <= k < len(vectors):
        raise ValueError(f"k must be from 1 to n - 1 = {len(vectors) - 1}, got {k}")

    cosines = _unit_rows(vectors) @ _unit_rows(vectors).T
    np.fill_diagonal(cosines, -np.inf)
    neighbours = np.argsort(-cosines, axis=1, kind="stable")[:, :k]
    return float(np.mean(labels[neighbours] == labels[:, None]))


def concept_groups(
    words: Sequence[str], groups: Mapping[str, str], other: str = "other"
) -> list[str]:
    """Return each word's semantic group, `other` for a word without one."""
    return [groups.get(word, other) for word in words]


# ----------------------------------------------------------------------------- fingerprints


def texts_fingerprint(parsed: Sequence[ParsedText]) -> str:
    """Hash the units of parsed texts (nouns and adjectives in order) into 32 hex characters."""
    digest = hashlib.blake2b(digest_size=16)
    for text in parsed:
        units = [[unit.noun, *unit.adjectives] for unit in text.units]
        digest.update(json.dumps(units).encode())
        digest.update(b"\n")
    return digest.hexdigest()
