"""The coco-mini run: COCO photos -> EfficientNet-Lite0 regions -> knowledge -> unpaired matching.

Knowledge (eq. 1): every COCO category name is one concept of type object, multi-word names kept
whole ("hot dog"). Its prototype is the mean region feature of its annotated boxes in coco-mini
train2017 and all of coco-extra (coco-extra serves the knowledge only). Crowd boxes (iscrowd=1)
are skipped there, because each covers a group of instances rather than one object of its word.

Test set: the coco-mini val2017 images with 5 captions each, regions in two settings:
- grid: the whole image plus a fixed multi-scale grid (GRID_LAYOUT, 36 regions), no annotation;
- gt-boxes: the whole image plus every annotated box, crowd boxes included, labels unused.
Captions go through mack.text.TextParser against the knowledge words, optionally with a
word -> concept synonym file (data/coco_synonyms.json). Scores come from
mack.matching.score_matrix and recalls from mack.metrics.

`python -m mack.coco_mini --data-root ../shared/data` writes coco_mini.json and coco_mini.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nltk
import numpy as np
import pandas as pd

from mack import config, metrics
from mack.data.coco import CocoSet, coco_mini_paths
from mack.encoders import (
    DEFAULT_METHOD,
    EfficientNetLite0Encoder,
    FeatureCache,
    RegionEncoder,
    RegionItem,
)
from mack.io import atomic_write, write_json
from mack.knowledge import OBJECT, Knowledge, KnowledgeBuilder, cap_annotations
from mack.matching import ImageRegions, score_matrix
from mack.text import NLTKDataMissingError, ParsedText, TextParser, load_tagger

logger = logging.getLogger(__name__)

# (columns, rows) of each grid level: 1 + 4 + 9 + 16 + 6 = 36 regions. The last level
# (3 columns x 2 rows) overlaps the square levels and adds cells of another aspect ratio.
GRID_LAYOUT = ((1, 1), (2, 2), (3, 3), (4, 4), (3, 2))
REGION_SETTINGS = ("grid", "gt-boxes")
CAPTIONS_PER_IMAGE = 5
DEFAULT_SYNONYMS = config.PROJECT_ROOT / "data" / "coco_synonyms.json"
KNOWLEDGE_SOURCE = "COCO 2017 instance boxes of coco-mini train2017 and coco-extra"


class SynonymFileError(ValueError):
    """A synonym file that is not a JSON object {"synonyms": {word: concept}}."""


@dataclass
class ValSet:
    """The test images in order, their captions (5 per image, caption 5i..5i+4 of image i) and
    region boxes per setting: boxes[setting][i] is (n_regions_i, 4) float64 xyxy pixels."""

    image_ids: list[int]
    captions: list[str]
    boxes: dict[str, list[np.ndarray]] = field(default_factory=dict)


def grid_boxes(width: float, height: float, layout=GRID_LAYOUT) -> np.ndarray:
    """Return the grid regions of a width x height image: (sum of columns*rows, 4) xyxy float64.

    Each (columns, rows) level tiles the whole image. Levels come in layout order, cells row by row.
    """
    boxes = []
    for columns, rows in layout:
        xs = np.linspace(0.0, width, columns + 1)
        ys = np.linspace(0.0, height, rows + 1)
        for row in range(rows):
            for column in range(columns):
                boxes.append((xs[column], ys[row], xs[column + 1], ys[row + 1]))
    return np.array(boxes, dtype=np.float64)


def xywh_to_xyxy(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """Convert a COCO (x, y, width, height) box to (x1, y1, x2, y2)."""
    x, y, w, h = bbox
    return x, y, x + w, y + h


def whole_image_box(width: float, height: float) -> np.ndarray:
    """Return the box of the whole image: (1, 4) xyxy float64."""
    return np.array([[0.0, 0.0, width, height]])


def gt_boxes(coco: CocoSet, image_id: int) -> np.ndarray:
    """Return the whole image plus every annotated box of `image_id`: (1 + n_boxes, 4) xyxy."""
    image = coco.images[image_id]
    annotated = [xywh_to_xyxy(box.bbox) for box in coco.boxes[image_id]]
    return np.concatenate(
        [whole_image_box(image.width, image.height), np.reshape(annotated, (-1, 4))]
    )


def load_val(coco: CocoSet) -> ValSet:
    """Collect the captions and the grid and gt-boxes regions of every image of `coco`.

    An image needs at least CAPTIONS_PER_IMAGE captions, and the first 5 are used (full COCO val
    has a few images with 6 or 7). Raises ValueError naming an image with fewer.
    """
    image_ids = list(coco.images)
    captions: list[str] = []
    n_extra = 0
    for image_id in image_ids:
        image_captions = coco.captions.get(image_id, [])
        if len(image_captions) < CAPTIONS_PER_IMAGE:
            raise ValueError(
                f"image {image_id} ({coco.images[image_id].file_name}) has {len(image_captions)} "
                f"captions; the evaluation needs {CAPTIONS_PER_IMAGE} per image"
            )
        n_extra += len(image_captions) - CAPTIONS_PER_IMAGE
        captions.extend(image_captions[:CAPTIONS_PER_IMAGE])
    if n_extra:
        logger.info(
            "left out %d captions beyond the first %d per image", n_extra, CAPTIONS_PER_IMAGE
        )

    boxes = {
        "grid": [grid_boxes(coco.images[i].width, coco.images[i].height) for i in image_ids],
        "gt-boxes": [gt_boxes(coco, i) for i in image_ids],
    }
    return ValSet(image_ids, captions, boxes)


@dataclass
class CocoMiniData:
    """The COCO splits of one run: knowledge sources (coco-mini train, coco-extra) and test set."""

    knowledge_sets: dict[str, CocoSet]
    val: CocoSet


def load_data(data_root: str | os.PathLike | None = None) -> CocoMiniData:
    """Read coco-mini train/val and, when present, coco-extra from the real-data root."""
    paths = coco_mini_paths(data_root)
    knowledge_sets = {"coco-mini train2017": paths["train"].load()}
    if "extra" in paths:
        knowledge_sets["coco-extra"] = paths["extra"].load()
    else:
        logger.warning(
            "coco-extra not found under the data root; the knowledge uses coco-mini train only"
        )
    return CocoMiniData(knowledge_sets, paths["val"].load())


def image_key(coco: CocoSet, image_id: int) -> str:
    """Return the feature-cache name of a COCO 2017 image: its id and pixel size."""
    image = coco.images[image_id]
    return f"coco2017:{image_id}:{image.width}x{image.height}"


def knowledge_regions(coco: CocoSet) -> tuple[list[RegionItem], list[list[str]], int]:
    """Return the non-crowd boxes of every image as RegionItems, their category names per item,
    and the number of crowd boxes skipped. Images with no non-crowd box are left out."""
    items, words, n_crowd = [], [], 0
    for image_id, image in coco.images.items():
        instances = [box for box in coco.boxes[image_id] if not box.iscrowd]
        n_crowd += len(coco.boxes[image_id]) - len(instances)
        if not instances:
            continue
        boxes = np.array([xywh_to_xyxy(box.bbox) for box in instances], dtype=np.float64)
        items.append(RegionItem(image.path, boxes, image_key(coco, image_id)))
        words.append([" ".join(box.category.lower().split()) for box in instances])
    return items, words, n_crowd


def build_coco_knowledge(
    knowledge_sets: dict[str, CocoSet],
    encoder: RegionEncoder,
    cache: FeatureCache | None,
    *,
    seed: int = 0,
    region_cap: int | None = None,
    progress: bool = True,
) -> tuple[Knowledge, dict[str, Any]]:
    """Build the category knowledge (eq. 1): each category's prototype is the mean feature of its
    non-crowd boxes, at most `region_cap` of them per category (a seeded sample drawn before any
    feature is read; None keeps all). Returns the knowledge and counts (images, boxes, crowd boxes
    skipped, share of boxes kept)."""
    regions = {name: knowledge_regions(coco) for name, coco in knowledge_sets.items()}
    annotations: dict[str, list[tuple[str, int, int]]] = {}
    for name, (_, words, _) in regions.items():
        for item, image_words in enumerate(words):
            for box, word in enumerate(image_words):
                annotations.setdefault(word, []).append((name, item, box))
    kept, share_kept = cap_annotations(annotations, region_cap, seed)
    kept_boxes = {region for region_ids in kept.values() for region in region_ids}

    builder = KnowledgeBuilder(
        encoder.dim,
        seed=seed,
        provenance={
            "source": KNOWLEDGE_SOURCE,
            "sets": list(knowledge_sets),
            "encoder": encoder.settings(),
            "region_cap": region_cap,
            "share_kept": share_kept,
            "seed": seed,
        },
    )
    stats = {"images": 0, "boxes": 0, "crowd_boxes_skipped": 0, "share_kept": share_kept}
    for name, (items, words, n_crowd) in regions.items():
        logger.info("%s: encoding %d boxes of %d images", name, sum(map(len, words)), len(items))
        features = encoder.encode_many(items, cache=cache, progress=progress)
        for item, (image_words, image_features) in enumerate(zip(words, features, strict=True)):
            rows = [box for box in range(len(image_words)) if (name, item, box) in kept_boxes]
            if rows:
                builder.add([image_words[box] for box in rows], image_features[rows],
                            [OBJECT] * len(rows))  # fmt: skip
        stats["images"] += len(items)
        stats["boxes"] += sum(map(len, words))
        stats["crowd_boxes_skipped"] += n_crowd

    knowledge = builder.build()
    knowledge.provenance["crowd_boxes_skipped"] = stats["crowd_boxes_skipped"]
    logger.info("knowledge: %d concepts from %d boxes", len(knowledge), stats["boxes"])
    return knowledge, stats


def encode_val_regions(
    coco: CocoSet,
    val: ValSet,
    encoder: RegionEncoder,
    cache: FeatureCache | None,
    progress: bool = True,
) -> dict[str, ImageRegions]:
    """Encode the regions of every setting of every test image and return setting -> ImageRegions.

    The settings' boxes of one image go to the encoder together, so the roi method runs the
    network once per image for both settings.
    """
    items = []
    for position, image_id in enumerate(val.image_ids):
        boxes = np.concatenate([val.boxes[setting][position] for setting in REGION_SETTINGS])
        items.append(RegionItem(coco.images[image_id].path, boxes, image_key(coco, image_id)))
    features = encoder.encode_many(items, cache=cache, progress=progress)

    per_setting: dict[str, list[np.ndarray]] = {setting: [] for setting in REGION_SETTINGS}
    for position, image_features in enumerate(features):
        start = 0
        for setting in REGION_SETTINGS:
            n_regions = len(val.boxes[setting][position])
            per_setting[setting].append(image_features[start : start + n_regions])
            start += n_regions
    return {setting: ImageRegions.from_list(arrays) for setting, arrays in per_setting.items()}


def load_synonyms(path: str | os.PathLike) -> dict[str, str]:
    """Read a synonym file, a JSON object whose "synonyms" member maps words to concepts."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise SynonymFileError(f"synonym file not found: {path}") from error
    except json.JSONDecodeError as error:
        raise SynonymFileError(f"{path}: invalid JSON ({error})") from error
    synonyms = payload.get("synonyms") if isinstance(payload, dict) else None
    if not isinstance(synonyms, dict):
        raise SynonymFileError(
            f'{path}: expected a JSON object with a "synonyms" object mapping words to concepts, '
            'e.g. {"synonyms": {"bike": "bicycle"}}'
        )
    for word, concept in synonyms.items():
        if not isinstance(concept, str) or not concept.strip():
            raise SynonymFileError(
                f'{path}: "synonyms" -> {word!r} is {concept!r}, expected a concept name'
            )
    return dict(synonyms)


@dataclass(frozen=True)
class RowSpec:
    """One row of the results table: a model variant scored on one region setting."""

    model: str
    regions: str
    pooling: str = "max_mean"
    prototype: str = "mean"
    synonyms: bool = False


def row_specs(with_synonyms: bool) -> list[RowSpec]:
    """Return the table's rows: each variant on both region settings."""
    variants = [
        ("pretrained", {}),
        ("w/o region prototypes (random region)", {"prototype": "random_region"}),
        ("mean-mean pooling", {"pooling": "mean_mean"}),
    ]
    if with_synonyms:
        variants.append(("+ synonyms", {"synonyms": True}))
    return [
        RowSpec(model, regions, **options)
        for model, options in variants
        for regions in REGION_SETTINGS
    ]


def evaluate_rows(
    knowledge: Knowledge,
    parsed: dict[bool, list[ParsedText]],
    regions: dict[str, ImageRegions],
    specs: Sequence[RowSpec],
) -> list[dict[str, Any]]:
    """Score and evaluate every row. `parsed` maps "synonyms used" (bool) to the parsed captions."""
    rows = []
    for spec in specs:
        texts = parsed[spec.synonyms]
        sims = score_matrix(
            knowledge,
            texts,
            regions[spec.regions],
            pooling=spec.pooling,
            prototype=spec.prototype,
            progress=False,
        )
        result = metrics.evaluate(sims, captions_per_image=CAPTIONS_PER_IMAGE)
        rows.append(
            {
                "model": spec.model,
                "regions": spec.regions,
                "pooling": spec.pooling,
                "prototype": spec.prototype,
                "synonyms": spec.synonyms,
                "image_to_text": result["image_to_text"],
                "text_to_image": result["text_to_image"],
                "rsum": result["rsum"],
                "captions_without_known_word": sum(1 for text in texts if not text.units),
            }
        )
        logger.info(
            "%s (%s): rsum %.1f, text_to_image R@1 %.1f",
            spec.model, spec.regions, result["rsum"], result["text_to_image"]["r1"],
        )  # fmt: skip
    return rows


def unknown_word_counts(parsed: Sequence[ParsedText], top: int = 25) -> dict[str, int]:
    """Return the `top` most frequent caption words that the knowledge does not contain."""
    counts: dict[str, int] = {}
    for text in parsed:
        for word in text.unknown:
            counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return dict(ranked[:top])


def evaluate_encoder(
    data: CocoMiniData,
    encoder: RegionEncoder,
    cache: FeatureCache | None,
    *,
    synonyms: dict[str, str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the knowledge with `encoder`, encode the test regions, and evaluate every row.

    Returns rows, chance level, counts and per-stage timings (seconds), ready for JSON.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    knowledge, knowledge_stats = build_coco_knowledge(
        data.knowledge_sets, encoder, cache, seed=seed, progress=progress
    )
    timings["knowledge"] = time.perf_counter() - start

    start = time.perf_counter()
    val = load_val(data.val)
    regions = encode_val_regions(data.val, val, encoder, cache, progress=progress)
    timings["test_regions"] = time.perf_counter() - start

    start = time.perf_counter()
    parsed = {False: TextParser.from_knowledge(knowledge).parse_many(val.captions, progress)}
    if synonyms:
        parser = TextParser.from_knowledge(knowledge, synonyms=synonyms)
        parsed[True] = parser.parse_many(val.captions, progress)
    timings["parse_captions"] = time.perf_counter() - start

    start = time.perf_counter()
    rows = evaluate_rows(knowledge, parsed, regions, row_specs(bool(synonyms)))
    timings["score_and_evaluate"] = time.perf_counter() - start

    return {
        "rows": rows,
        "chance": metrics.chance_recall(len(val.image_ids), CAPTIONS_PER_IMAGE),
        "counts": {
            "knowledge_concepts": len(knowledge),
            "knowledge_images": knowledge_stats["images"],
            "knowledge_boxes": knowledge_stats["boxes"],
            "knowledge_crowd_boxes_skipped": knowledge_stats["crowd_boxes_skipped"],
            "test_images": len(val.image_ids),
            "test_captions": len(val.captions),
            "regions_per_image": {
                setting: float(regions[setting].counts.mean()) for setting in REGION_SETTINGS
            },
        },
        "unknown_words": unknown_word_counts(parsed[False]),
        "timings_seconds": timings,
    }


def peak_memory_mib() -> float | None:
    """Return this process's peak resident memory in MiB (None where the OS does not report it)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Format a GitHub Markdown table; floats get one decimal."""
    return pd.DataFrame(list(rows), columns=list(header)).to_markdown(index=False, floatfmt=".1f")


def results_markdown(result: dict[str, Any]) -> str:
    """Render the results of `run` as a Markdown page: the recall table, then counts and timings."""
    header = ["model", "regions", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5"]
    header += ["t2i R@10", "rsum", "captions w/o known word"]
    table = []
    for row in result["rows"]:
        i2t, t2i = row["image_to_text"], row["text_to_image"]
        recalls = [i2t["r1"], i2t["r5"], i2t["r10"], t2i["r1"], t2i["r5"], t2i["r10"]]
        table.append(
            [
                row["model"],
                row["regions"],
                *recalls,
                row["rsum"],
                row["captions_without_known_word"],
            ]
        )
    chance = result["chance"]
    i2t, t2i = chance["image_to_text"], chance["text_to_image"]
    recalls = [i2t["r1"], i2t["r5"], i2t["r10"], t2i["r1"], t2i["r5"], t2i["r10"]]
    table.append(["chance (random scores)", "-", *recalls, chance["rsum"], "-"])

    counts = result["counts"]
    knowledge_line = (
        f"Knowledge: {counts['knowledge_concepts']} concepts from {counts['knowledge_boxes']} "
        f"boxes of {counts['knowledge_images']} images ({KNOWLEDGE_SOURCE}). "
        f"{counts['knowledge_crowd_boxes_skipped']} crowd boxes were skipped."
    )
    test_line = (
        f"Test: {counts['test_images']} coco-mini val2017 images, {counts['test_captions']} "
        "captions. i2t = image_to_text, t2i = text_to_image, recalls in percent."
    )
    timings = ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in result["timings_seconds"].items()
    )
    cost_line = f"Timings: {timings}."
    if "feature_cache" in result:
        cache = result["feature_cache"]
        cost_line += f" Feature cache: {cache['hits']} hits, {cache['misses']} misses."
    if result["peak_memory_mib"] is not None:
        cost_line += f" Peak memory: {result['peak_memory_mib']:.0f} MiB."

    lines = [
        "# coco-mini: unpaired image-text matching with COCO category knowledge",
        "",
        f"Encoder: `{json.dumps(result['encoder'], sort_keys=True)}`.",
        knowledge_line,
        test_line,
        "",
        markdown_table(header, table),
        "",
        cost_line,
        "",
    ]
    return "\n".join(lines)


def ensure_tagger(data_root: str | os.PathLike | None = None) -> None:
    """Load the NLTK tagger before any slow step, falling back to <data_root>/nltk_data.

    Raises mack.text.NLTKDataMissingError (with the download command) when neither has it.
    """
    try:
        load_tagger()
        return
    except NLTKDataMissingError:
        fallback = config.data_root(data_root, must_exist=False) / "nltk_data"
        if not fallback.is_dir():
            raise
    nltk.data.path.append(str(fallback))
    logger.info("NLTK tagger not found on nltk.data.path; using %s", fallback)
    load_tagger()


def run(
    data_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    method: str = DEFAULT_METHOD,
    image_size: int | None = None,
    synonyms: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole coco-mini pipeline and write coco_mini.json and coco_mini.md into `out`.

    out: output folder (default results/ of the project). cache_dir: feature cache folder (default
    mack.config.cache_root() / "features"). synonyms: a synonym file adds the "+ synonyms" rows.
    Returns the results dict that the JSON file holds.
    """
    start = time.perf_counter()
    out = Path(out) if out is not None else config.PROJECT_ROOT / "results"
    synonym_map = load_synonyms(synonyms) if synonyms else None
    config.data_root(data_root)  # a missing data folder is reported before the tagger check
    ensure_tagger(data_root)
    data = load_data(data_root)
    load_seconds = time.perf_counter() - start

    encoder = EfficientNetLite0Encoder(method, image_size=image_size)
    cache = FeatureCache(cache_dir)
    result = {"encoder": encoder.settings(), "grid_layout": [list(level) for level in GRID_LAYOUT]}
    result.update(
        evaluate_encoder(data, encoder, cache, synonyms=synonym_map, seed=seed, progress=progress)
    )
    result["timings_seconds"] = {"load_data": load_seconds, **result["timings_seconds"]}
    result["timings_seconds"]["total"] = time.perf_counter() - start
    result["feature_cache"] = {"root": str(cache.root), "hits": cache.hits, "misses": cache.misses}
    result["synonyms_file"] = str(synonyms) if synonyms else None
    result["peak_memory_mib"] = peak_memory_mib()

    write_json(out / "coco_mini.json", result)
    with atomic_write(out / "coco_mini.md", "w") as handle:
        handle.write(results_markdown(result))
    logger.info(
        "wrote %s and %s in %.1f s (peak memory %s MiB)",
        out / "coco_mini.json", out / "coco_mini.md", result["timings_seconds"]["total"],
        f"{result['peak_memory_mib']:.0f}" if result["peak_memory_mib"] else "unknown",
    )  # fmt: skip
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mack.coco_mini", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--data-root",
        help="real-data folder holding coco-mini/ (default: $MACK_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--out", help="folder for coco_mini.json and coco_mini.md (default: results/)"
    )
    parser.add_argument(
        "--method", choices=("crop", "roi"), default=DEFAULT_METHOD, help="region encoder method"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        help="crop side (crop) or image short side (roi) in pixels (default: 160 crop, 320 roi)",
    )
    parser.add_argument(
        "--synonyms",
        nargs="?",
        const=str(DEFAULT_SYNONYMS),
        help="word -> concept synonym JSON that adds the '+ synonyms' rows "
        f"(without a value: data/{DEFAULT_SYNONYMS.name})",
    )
    parser.add_argument(
        "--cache",
        help="feature cache folder (default: $MACK_CACHE/features or data/cache/features)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-region ablation")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        run(
            args.data_root,
            args.out,
            method=args.method,
            image_size=args.image_size,
            synonyms=args.synonyms,
            cache_dir=args.cache,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except (config.DataNotFoundError, SynonymFileError, NLTKDataMissingError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
