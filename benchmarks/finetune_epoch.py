"""Time one fine-tuning epoch at Flickr30k size on random data.

Sizes (defaults): 29,000 training images x 36 regions, F = 2048, K = 2,000 concepts, 145,000 captions,
batches of 128 images + 128 texts, so one epoch is ceil(29000 / 128) = 227 steps.

The regions are never held in memory, because 29,000 x 36 x 2048 float32 would be 8.5 GB.
`SeededRegions` draws a pool of 8192 random vectors once (max(N(0, 0.7^2), 0) per entry, so
non-negative and half zero, with norm about 22). Region (image, r) is the pool row picked by a
multiplicative hash of image * n_regions + r. Gathering a batch's N regions is then one indexed
copy, which costs about what reading N cached rows of a memmap costs. Regions repeat across images,
which changes no timing.

The region -> concept assignment is drawn at random (a concept per region from a Zipf(1) law over
K, so the batch has as many distinct concepts as a skewed real vocabulary gives) instead of being
computed: at this size `assign_regions` is a one-off pass per dataset. Its cost is measured
separately on --assign-images images and extrapolated linearly to all images.

Run: python -m benchmarks.finetune_epoch [--steps N] [--quick] [--json PATH]
Without --steps the script runs one full epoch through `mack.finetune.finetune` and reports the
epoch time from the training log. With --steps it times the first N steps only (the first one is
reported apart, as warm-up) and extrapolates to the epoch ("extrapolated": true in the output).
The float32 matmul throughput measured at the start puts the times in context on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from benchmarks import common
from mack import finetune as ft
from mack.knowledge import OBJECT, Knowledge
from mack.matching import ImageRegions
from mack.text import ParsedText, Unit


class SeededRegions:
    """A read-only (n_images, n_regions, dim) float32 array whose rows come from a seeded pool."""

    dtype = np.dtype(np.float32)
    ndim = 3
    pool_size = 8192

    def __init__(self, n_images: int, n_regions: int, dim: int, seed: int = 0):
        self.shape = (n_images, n_regions, dim)
        rng = np.random.default_rng(seed)
        self.pool = np.maximum(rng.normal(0.0, 0.7, (self.pool_size, dim)), 0.0).astype(np.float32)

    def pool_rows(self, images: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """Map (image, region) index arrays to pool rows with a multiplicative hash."""
        flat = np.asarray(images, dtype=np.uint64) * self.shape[1] + np.asarray(regions, np.uint64)
        return ((flat * np.uint64(2654435761)) % np.uint64(2**32) % self.pool_size).astype(np.int64)

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (image indices, region indices), paired as in numpy
            return self.pool[self.pool_rows(*key)]
        if isinstance(key, slice):
            images = np.arange(*key.indices(self.shape[0]))
        else:
            images = np.array([int(key)])
        regions = np.arange(self.shape[1])
        rows = self.pool_rows(images[:, None], regions[None, :])  # (n, n_regions)
        features = self.pool[rows]
        return features if isinstance(key, slice) else features[0]


def zipf_draws(rng: np.random.Generator, n_items: int, size, exponent: float = 1.0) -> np.ndarray:
    """Draw item indices 0..n_items-1 with P(k) proportional to 1 / (k + 1)^exponent."""
    weights = 1.0 / np.arange(1, n_items + 1) ** exponent
    return rng.choice(n_items, size=size, p=weights / weights.sum())


def build_inputs(args: argparse.Namespace):
    rng = np.random.default_rng(args.seed)
    words = [f"concept{k:05d}" for k in range(args.concepts)]
    knowledge = Knowledge(
        words=words,
        types=[OBJECT] * args.concepts,
        prototypes=np.maximum(rng.normal(0.0, 1.0, (args.concepts, args.dim)), 0.0),
        counts=np.full(args.concepts, 20),
        provenance={"source": "benchmark: random prototypes"},
    )
    features = SeededRegions(args.images, args.regions, args.dim, args.seed)
    images = ImageRegions(features, np.full(args.images, args.regions, dtype=np.int64))

    shape = (args.images, args.regions)
    assignment = ft.RegionAssignment(
        concepts=zipf_draws(rng, args.concepts, shape).astype(np.int64),
        scores=rng.uniform(0.2, 0.9, shape).astype(np.float32),
        knowledge_fingerprint=ft.knowledge_fingerprint(knowledge),
        images_fingerprint=ft.images_fingerprint(images),
    )

    # About 3 nouns per caption, one in three with an adjective, all from a Zipf(1) vocabulary.
    nouns = zipf_draws(rng, args.concepts, (args.texts, 3))
    adjectives = zipf_draws(rng, args.concepts, (args.texts, 3))
    has_adjective = rng.random((args.texts, 3)) < 1 / 3
    texts = []
    for t in range(args.texts):
        units = [
            Unit(words[nouns[t, j]], (words[adjectives[t, j]],) if has_adjective[t, j] else ())
            for j in range(3)
        ]
        texts.append(ParsedText(f"caption {t}", units))
    return knowledge, images, assignment, texts


def time_assignment(knowledge: Knowledge, images: ImageRegions, n_images: int) -> float:
    """Return the measured seconds of assign_regions on the first n_images images."""
    subset = ImageRegions(images.features[:n_images], images.counts[:n_images])
    started = time.perf_counter()
    ft.assign_regions(knowledge, subset, progress=False)
    return time.perf_counter() - started


def time_steps(knowledge, images, assignment, texts, config, n_steps: int):
    """Time the first n_steps steps of epoch 1 with the library's own step function.

    Returns (seconds per step, mean M, mean N).
    """
    data, _ = ft._prepare(knowledge, images, texts, config, assignment, None, progress=False)
    state = ft._initial_state(knowledge.dim, len(knowledge), config, learn_words=False)
    seconds, words, regions = [], [], []
    with ft._deterministic_algorithms():
        for step in range(n_steps):
            started = time.perf_counter()
            record = ft._train_step(state, data, config, 0, step)
            seconds.append(time.perf_counter() - started)
            words.append(record["words_per_step"])
            regions.append(record["regions_per_step"])
    return seconds, float(np.mean(words)), float(np.mean(regions))


def matmul_gflops(dim: int, columns: int = 1300, repeats: int = 3) -> float:
    """Measure float32 matmul throughput now, on the shape that dominates a step: (F, F) @ (F, M+N)."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(dim, dim, generator=generator)
    right = torch.randn(dim, columns, generator=generator)
    left @ right  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        left @ right
    seconds = (time.perf_counter() - started) / repeats
    return 2 * dim * dim * columns / seconds / 1e9


QUICK_SIZES = {"images": 300, "regions": 36, "dim": 64, "concepts": 100, "texts": 1500}
EPOCH_TARGET_SECONDS = 180.0


def main() -> None:
    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=29_000, help="training images")
    parser.add_argument("--regions", type=int, default=36, help="regions per image")
    parser.add_argument("--dim", type=int, default=2048, help="feature size F")
    parser.add_argument("--concepts", type=int, default=2000, help="knowledge concepts K")
    parser.add_argument("--texts", type=int, default=145_000, help="training captions")
    parser.add_argument("--steps", type=int, default=None, help="time N steps and extrapolate")
    parser.add_argument(
        "--assign-images", type=int, default=500,
        help="images timed in assign_regions (extrapolated to --images)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK_SIZES, steps=args.steps or 3, assign_images=50)
    common.setup_run(args)

    figures = {
        "machine": common.machine_info(),
        "matmul_gflops": matmul_gflops(args.dim),
        "sizes": {
            key: getattr(args, key) for key in ("images", "regions", "dim", "concepts", "texts")
        },
    }
    knowledge, images, assignment, texts = build_inputs(args)

    assign_seconds = time_assignment(knowledge, images, args.assign_images)
    figures["assign_regions"] = {
        "images_timed": args.assign_images,
        "seconds": assign_seconds,
        "extrapolated_seconds_all_images": assign_seconds * args.images / args.assign_images,
    }

    config = ft.FinetuneConfig(epochs=1)
    figures["epoch"] = time_epoch(knowledge, images, assignment, texts, config, args.steps)
    figures["epoch"]["seconds_target"] = common.check(
        figures["epoch"]["seconds"], EPOCH_TARGET_SECONDS
    )
    common.finish_run("finetune_epoch", args, figures)


def time_epoch(knowledge, images, assignment, texts, config, n_steps: int | None) -> dict:
    """Time one epoch: in full through `finetune`, or its first n_steps steps, extrapolated."""
    steps_per_epoch = math.ceil(len(images) / config.batch_images)
    if n_steps is None:
        result = ft.finetune(knowledge, images, texts, config, assignment=assignment)
        return {
            "steps": steps_per_epoch,
            "steps_timed": steps_per_epoch,
            "extrapolated": False,
            "seconds": result.log.seconds[0],
            "seconds_per_step": result.log.seconds[0] / steps_per_epoch,
            "mean_words_M": result.log.words_per_step[0],
            "mean_regions_N": result.log.regions_per_step[0],
        }

    seconds, words, regions = time_steps(knowledge, images, assignment, texts, config, n_steps)
    per_step = float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))
    return {
        "steps": steps_per_epoch,
        "steps_timed": n_steps,
        "extrapolated": True,
        "seconds": per_step * steps_per_epoch,
        "seconds_per_step": per_step,
        "first_step_seconds": seconds[0],
        "mean_words_M": words,
        "mean_regions_N": regions,
    }


if __name__ == "__main__":
    main()
