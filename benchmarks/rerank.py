"""Time MACK re-ranking of a COCO 5K base model, k = 15, both directions.

The inputs are random region features (5,000 x 36 x 2048, uniform in [0, 1)), the real COCO 5K
test captions, parsed once with TextParser and timed apart, and a knowledge of the bottom-up Visual
Genome vocabulary with random prototypes. The pair scorer is mack.matching.score_pairs, so only
the top-k pairs of both directions are scored.

The cost of scoring the pairs is set by the distinct (image, word) products they need, and so by
how the base model picks candidates. Two base matrices are timed, in this order:
- caption-word base (the target): image i scores text t by the share of t's known words found
  among the words of i's five captions, plus Gaussian noise. Like a trained model, it gives a
  caption the images of similar captions, so the candidates of similar captions overlap. Its own
  recall is printed, to show that it is a plausible base model.
- random base (the worst case): uniform noise, so each text's candidates are unrelated images.

For each base the script times REPEATS reranks and reports the median time with and without the
pair scoring, and the first run apart. It also reports the pairs and (image, word) products
scored, and the max absolute difference between the pair scores and the per-pair reference on
a sample of pairs.

Run: `python -m benchmarks.rerank` (add `--quick` for a smoke run).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

from benchmarks import common
from mack.matching import ImageRegions, reference_score_matrix, score_pairs
from mack.metrics import evaluate
from mack.rerank import rerank

N_REGIONS = 36
SECONDS_TARGET = 5.0
CHECKED_PAIRS = 30  # pairs compared with the per-pair reference


@dataclass(frozen=True)
class Size:
    n_images: int
    dim: int
    k: int


FULL = Size(n_images=5000, dim=2048, k=15)
QUICK = Size(n_images=12, dim=64, k=3)
CAPTIONS = "coco_testall_caps.txt"
CAPTIONS_PER_IMAGE = 5
LAMBDA = 0.1
BASE_NOISE = 0.15  # standard deviation of the caption-word base's noise
REPEATS = 3  # reranks timed per base


def main() -> None:
    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--no-cache", action="store_true", help="parse the captions again instead of reusing"
    )
    args = parser.parse_args()
    common.setup_run(args)
    size = QUICK if args.quick else FULL
    figures = run(size, args)
    common.finish_run("rerank", args, {"machine": common.machine_info(), **figures})


def run(size: Size, args) -> dict[str, Any]:
    """Build the inputs, time rerank on both bases, check a sample of pair scores each time."""
    vocabulary = common.load_vocabulary(args.data_root)
    knowledge = common.random_knowledge(
        vocabulary.words, len(vocabulary.objects), size.dim, args.seed
    )
    captions = common.read_captions(CAPTIONS, args.data_root)[: CAPTIONS_PER_IMAGE * size.n_images]
    parsed = common.parse_captions(captions, vocabulary, knowledge, cache=not args.no_cache)
    texts = parsed.texts
    features = common.random_regions(size.n_images, N_REGIONS, size.dim, args.seed + 1)
    images = ImageRegions.from_dense(features)
    rng = np.random.default_rng(args.seed + 2)
    bases = {
        "caption_word_base": caption_word_base(knowledge, texts, size.n_images, rng),
        "random_base": rng.random((size.n_images, len(texts)), dtype=np.float32),
    }
    figures: dict[str, Any] = {
        "n_images": size.n_images,
        "n_texts": len(texts),
        "dim": size.dim,
        "k": size.k,
        "lam": LAMBDA,
        "parse_seconds": parsed.parse_seconds,
        "parse_cached": parsed.cached,
    }
    for name, base in bases.items():
        figures[name] = time_rerank(base, knowledge, texts, images, size, rng)
        figures[name]["base_recall"] = base_recall(base)
    # The target applies to the base that picks candidates as a trained model does. The random
    # base shows the worst case, for reference.
    del figures["random_base"]["targets"]["rerank_seconds"]
    figures["peak_rss_gb"] = common.max_rss_bytes() / 1e9
    return figures


def time_rerank(base, knowledge, texts, images: ImageRegions, size: Size, rng) -> dict[str, Any]:
    """Return the figures of REPEATS reranks of `base`, with score_pairs as the pair scorer.

    The times are medians over the runs, and the first run's times are reported apart: it also
    pays for touching the process's fresh memory, which cost about 1 s per GB on this machine.
    """
    runs = []
    for _ in range(REPEATS):
        scoring = {"seconds": 0.0, "cpu_seconds": 0.0}

        def pair_scorer(image_idx: np.ndarray, text_idx: np.ndarray, scoring=scoring):
            with common.timer() as elapsed:
                scores = score_pairs(knowledge, texts, images, image_idx, text_idx, progress=False)
            scoring["seconds"] += elapsed["seconds"]
            scoring["cpu_seconds"] += elapsed["cpu_seconds"]
            return scores

        gc.collect()
        with common.timer() as total:
            result = rerank(base, pair_scorer, k=size.k, lam=LAMBDA)
        runs.append({
            "rerank_seconds": total["seconds"],
            "rerank_cpu_seconds": total["cpu_seconds"],
            "pair_scoring_seconds": scoring["seconds"],
            "pair_scoring_cpu_seconds": scoring["cpu_seconds"],
            "rerank_without_scoring_seconds": total["seconds"] - scoring["seconds"],
        })  # fmt: skip
    with common.timer() as materialise:
        matrices = (result.image_to_text, result.text_to_image)  # built on first use
    del matrices
    n_pairs = len(result.image_idx)
    products = image_word_products(knowledge, texts, result.image_idx, result.text_idx)
    difference = sample_difference(knowledge, texts, images, result, rng)
    median = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
    return {
        **median,
        "runs": len(runs),
        "rerank_seconds_each_run": [run["rerank_seconds"] for run in runs],
        "first_run": runs[0],
        "matrices_seconds": materialise["seconds"],
        "pairs_scored": n_pairs,
        "share_of_full_matrix": n_pairs / base.size,
        "image_word_products": products,
        "product_gflop": 2 * products * N_REGIONS * size.dim / 1e9,
        "max_abs_diff": difference,
        "max_abs_diff_pairs": min(CHECKED_PAIRS, n_pairs),
        "targets": {
            "rerank_seconds": common.check(median["rerank_seconds"], SECONDS_TARGET),
            "max_abs_diff": common.check(difference, 1e-5),
        },
    }


def caption_word_base(knowledge, texts, n_images: int, rng) -> np.ndarray:
    """Return a (n_images, n_texts) float32 base that ranks images by their captions' words.

    base[i, t] = |words(t) & words(i)| / sqrt(|words(t)| |words(i)|) + N(0, BASE_NOISE^2), with
    words(t) the known words of text t and words(i) those of image i's five captions.
    """
    index = {word: row for row, word in enumerate(knowledge.words)}
    rows, columns = [], []
    for text, parsed in enumerate(texts):
        words = {index[w] for unit in parsed.units for w in (unit.noun, *unit.adjectives)}
        rows.extend([text] * len(words))
        columns.extend(words)
    text_words = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, columns)),
        shape=(len(texts), len(knowledge.words)),
    )
    owner = sparse.csr_matrix(
        (np.ones(len(texts), dtype=np.float32), (np.arange(len(texts)) // CAPTIONS_PER_IMAGE,
                                                 np.arange(len(texts)))),
        shape=(n_images, len(texts)),
    )  # fmt: skip
    image_words = (owner @ text_words).astype(bool).astype(np.float32)  # (n_images, K)
    shared = (image_words @ text_words.T).toarray()  # (n_images, n_texts)
    text_sizes = np.asarray(text_words.sum(axis=1)).ravel()
    image_sizes = np.asarray(image_words.sum(axis=1)).ravel()
    norms = np.sqrt(np.maximum(image_sizes, 1.0))[:, None] * np.sqrt(np.maximum(text_sizes, 1.0))
    base = (shared / norms).astype(np.float32)
    base += rng.normal(0.0, BASE_NOISE, base.shape).astype(np.float32)
    return base


def base_recall(base: np.ndarray) -> dict[str, float]:
    """Return the base's own R@1 and R@10 in both directions (percent) and its rsum."""
    evaluated = evaluate(base, captions_per_image=CAPTIONS_PER_IMAGE)
    recall = {
        f"{direction}_r{at}": evaluated[direction][f"r{at}"]
        for direction in ("image_to_text", "text_to_image")
        for at in (1, 10)
    }
    return {**recall, "rsum": evaluated["rsum"]}


def image_word_products(knowledge, texts, image_idx: np.ndarray, text_idx: np.ndarray) -> int:
    """Count the distinct (image, word) pairs that the scored pairs need, apart from score_pairs."""
    index = {word: row for row, word in enumerate(knowledge.words)}
    text_words = [
        sorted({index[w] for unit in parsed.units for w in (unit.noun, *unit.adjectives)})
        for parsed in texts
    ]
    codes = {
        int(image) * len(index) + word
        for image, text in zip(image_idx.tolist(), text_idx.tolist(), strict=True)
        for word in text_words[text]
    }
    return len(codes)


def sample_difference(knowledge, texts, images: ImageRegions, result, rng) -> float:
    """Return max |pair score - reference| over CHECKED_PAIRS scored pairs drawn at random."""
    n_checked = min(CHECKED_PAIRS, len(result.image_idx))
    picks = rng.choice(len(result.image_idx), size=n_checked, replace=False)
    difference = 0.0
    with threadpool_limits(limits=1, user_api="blas"):
        for pick in picks:
            image, text = int(result.image_idx[pick]), int(result.text_idx[pick])
            one_image = ImageRegions(
                images.features[image : image + 1], images.counts[image : image + 1]
            )
            expected = reference_score_matrix(knowledge, [texts[text]], one_image, progress=False)
            difference = max(difference, abs(float(expected[0, 0]) - result.pair_scores[pick]))
    return difference


if __name__ == "__main__":
    main()
