"""Time MACK re-ranking of a COCO 5K base model, k = 15, both directions.

The inputs are a random base similarity matrix (5,000 images x 25,000 texts), random region
features (5,000 x 36 x 2048, uniform in [0, 1)) and the real COCO 5K test captions, parsed once
with TextParser and timed apart. The knowledge holds the bottom-up Visual Genome vocabulary with
random prototypes. The pair scorer is mack.matching.score_pairs, so only the top-k pairs of both
directions are scored. The script reports the rerank time with and without the pair scoring, the
number of pairs against the full matrix, and the max absolute difference between the pair scores
and the per-pair reference on a sample of pairs.

Run: `python -m benchmarks.rerank` (add `--quick` for a smoke run).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks import common
from mack.matching import ImageRegions, reference_score_matrix, score_pairs
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
LAMBDA = 0.1


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
    """Build the inputs, time rerank, check a sample of pair scores, and return the figures."""
    vocabulary = common.load_vocabulary(args.data_root)
    knowledge = common.random_knowledge(
        vocabulary.words, len(vocabulary.objects), size.dim, args.seed
    )
    captions = common.read_captions(CAPTIONS, args.data_root)[: 5 * size.n_images]
    parsed = common.parse_captions(captions, vocabulary, knowledge, cache=not args.no_cache)
    texts = parsed.texts
    features = common.random_regions(size.n_images, N_REGIONS, size.dim, args.seed + 1)
    images = ImageRegions.from_dense(features)
    rng = np.random.default_rng(args.seed + 2)
    base = rng.random((size.n_images, len(texts)), dtype=np.float32)

    scoring = {"seconds": 0.0, "cpu_seconds": 0.0}

    def pair_scorer(image_idx: np.ndarray, text_idx: np.ndarray) -> np.ndarray:
        with common.timer() as elapsed:
            scores = score_pairs(knowledge, texts, images, image_idx, text_idx, progress=False)
        scoring["seconds"] += elapsed["seconds"]
        scoring["cpu_seconds"] += elapsed["cpu_seconds"]
        return scores

    gc.collect()
    with common.timer() as total:
        result = rerank(base, pair_scorer, k=size.k, lam=LAMBDA)
    n_pairs = len(result.image_idx)
    difference = sample_difference(knowledge, texts, images, result, rng)
    return {
        "n_images": size.n_images,
        "n_texts": len(texts),
        "dim": size.dim,
        "k": size.k,
        "lam": LAMBDA,
        "parse_seconds": parsed.parse_seconds,
        "parse_cached": parsed.cached,
        "rerank_seconds": total["seconds"],
        "rerank_cpu_seconds": total["cpu_seconds"],
        "pair_scoring_seconds": scoring["seconds"],
        "pair_scoring_cpu_seconds": scoring["cpu_seconds"],
        "rerank_without_scoring_seconds": total["seconds"] - scoring["seconds"],
        "pairs_scored": n_pairs,
        "share_of_full_matrix": n_pairs / (size.n_images * len(texts)),
        "max_abs_diff": difference,
        "max_abs_diff_pairs": min(CHECKED_PAIRS, n_pairs),
        "peak_rss_gb": common.max_rss_bytes() / 1e9,
        "targets": {
            "rerank_seconds": common.check(total["seconds"], SECONDS_TARGET),
            "max_abs_diff": common.check(difference, 1e-5),
        },
    }


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
