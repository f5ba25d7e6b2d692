"""Time the knowledge build (eq. 1) from a bottom-up TSV file against only reading that file.

The script writes, to a temporary folder, a synthetic bottom-up TSV file of at least 1 GB
(36 boxes of 2048 random float32 features per image) and a Visual Genome attributes.json whose
objects have exactly those boxes. Each object is named by one object word and 0 to 2 attribute
words of the bottom-up Visual Genome vocabulary, drawn with a seed. Then it times
- the read-only pass: iter_bottomup_tsv over the file, decoding and checking every row;
- the build: mack.vgknowledge.build_from_vg (reading and cleaning the annotations, matching each
  region to its TSV box, the same TSV pass, KnowledgeBuilder.add, build()). At this size it
  reads the annotations in a second process while it reads the TSV ahead (its default for files
  of 64 MiB or more), so build_cpu_seconds, which includes that process, is reported too;
- the builder alone: the same TSV pass feeding KnowledgeBuilder with the drawn words directly.
The read pass runs before and after the builds and the ratio uses their mean, so a change of
machine load during the run weighs on both sides. The one-time load of lemminflect's lemma table,
which the VG word cleaning triggers on first use in a process, is timed apart
(word_cleaner_load_seconds) and not in build_seconds, because it does not grow with the data. The file was just written, so every pass reads
it from the page cache and measures decoding, not the disk. The folder is deleted at the end.

Run: `python -m benchmarks.knowledge_build` (add `--quick` for a smoke run).
"""

from __future__ import annotations

import gc
import json
import math
import resource
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from mack.data.bottomup import iter_bottomup_tsv, write_bottomup_tsv
from mack.data.vg import clean_object_name
from mack.io import atomic_write
from mack.knowledge import ATTRIBUTE, OBJECT, Knowledge, KnowledgeBuilder
from mack.vgknowledge import build_from_vg

N_BOXES = 36
IMAGE_SIZE = 600
BATCH_ROWS = 4096  # labelled boxes per KnowledgeBuilder.add call of the builder-only pass


@dataclass(frozen=True)
class Size:
    target_bytes: int  # the TSV file has at least this many bytes
    dim: int


FULL = Size(target_bytes=10**9, dim=2048)
QUICK = Size(target_bytes=200_000, dim=64)


@dataclass
class ImageLabels:
    """The words of one image's boxes: box[i] is labelled words[i] as types[i]."""

    boxes: np.ndarray  # (n_labels,) int64 box index
    words: list[str]
    types: list[str]


def main() -> None:
    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--tmp-dir", type=Path, default=None, help="parent of the temporary folder (default: /tmp)"
    )
    parser.add_argument(
        "--megabytes",
        type=float,
        default=None,
        help=f"size of the TSV file in MB (default: {FULL.target_bytes / 1e6:g}, quick: "
        f"{QUICK.target_bytes / 1e6:g})",
    )
    args = parser.parse_args()
    common.setup_run(args)
    size = QUICK if args.quick else FULL
    if args.megabytes is not None:
        size = replace(size, target_bytes=int(args.megabytes * 1e6))
    vocabulary = common.load_vocabulary(args.data_root)

    folder = Path(tempfile.mkdtemp(prefix="mack-bench-bottomup-", dir=args.tmp_dir))
    try:
        figures = run(size, vocabulary, folder, args.seed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    common.finish_run("knowledge_build", args, {"machine": common.machine_info(), **figures})


def run(size: Size, vocabulary: common.Vocabulary, folder: Path, seed: int) -> dict[str, Any]:
    """Write the inputs, time the read and build passes, and return the figures."""
    n_images = images_for(size)
    labels = draw_labels(n_images, vocabulary, seed + 1)
    tsv, annotations = folder / "features.tsv", folder / "attributes.json"
    with common.timer() as write:
        boxes = write_tsv(tsv, n_images, size.dim, seed)
        write_annotations(annotations, boxes, labels)
    total_bytes = tsv.stat().st_size

    read_before = time_read(tsv)
    with common.timer() as cleaner_load:
        clean_object_name("benchmark dogs")  # loads lemminflect's lemma table once per process
    gc.collect()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with common.timer() as build:
        knowledge, report = build_from_vg(annotations, tsv, progress=False)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_cpu = sum(
        getattr(children_after, field) - getattr(children_before, field)
        for field in ("ru_utime", "ru_stime")
    )
    gc.collect()
    with common.timer() as builder_only:
        direct = build_direct(tsv, labels, size.dim, seed)
    read_after = time_read(tsv)

    n_labels = sum(len(item.words) for item in labels.values())
    check_counts(direct, report, n_labels)
    read_seconds = (read_before["seconds"] + read_after["seconds"]) / 2
    ratio = build["seconds"] / read_seconds
    return {
        "bytes": total_bytes,
        "images": n_images,
        "regions": read_before["regions"],
        "dim": size.dim,
        "labelled_boxes": n_labels,
        "knowledge_words": len(knowledge),
        "knowledge_annotations": int(knowledge.counts.sum()),
        "regions_matched_by_box": report.counters.get("regions_matched_by_box", 0),
        "write_seconds": write["seconds"],
        "read_seconds_before_build": read_before["seconds"],
        "read_seconds_after_build": read_after["seconds"],
        "read_megabytes_per_second": total_bytes / read_seconds / 1e6,
        "word_cleaner_load_seconds": cleaner_load["seconds"],
        "build_seconds": build["seconds"],
        "build_cpu_seconds": build["cpu_seconds"] + children_cpu,
        "read_cpu_seconds": (read_before["cpu_seconds"] + read_after["cpu_seconds"]) / 2,
        "build_over_read": ratio,
        "build_with_cleaner_load_over_read": (build["seconds"] + cleaner_load["seconds"])
        / read_seconds,
        "builder_only_seconds": builder_only["seconds"],
        "builder_only_over_read": builder_only["seconds"] / read_seconds,
        "targets": {
            "bytes": common.check(total_bytes, size.target_bytes, at_least=True),
            "build_over_read": common.check(ratio, 2.0),
        },
    }


def images_for(size: Size) -> int:
    """Return how many 36-box images make a TSV file of at least size.target_bytes."""
    features = 4 * math.ceil(N_BOXES * size.dim * 4 / 3)  # base64 length of the features field
    boxes = 4 * math.ceil(N_BOXES * 4 * 4 / 3)
    return max(1, math.ceil(size.target_bytes / (features + boxes)))


def write_tsv(path: Path, n_images: int, dim: int, seed: int) -> dict[int, np.ndarray]:
    """Write the TSV file; return each image's (N_BOXES, 4) integer-valued x1, y1, x2, y2 boxes."""
    rng = np.random.default_rng(seed)
    boxes: dict[int, np.ndarray] = {}

    def rows() -> Iterator[dict[str, Any]]:
        for image_id in range(n_images):
            corners = rng.integers(0, IMAGE_SIZE // 2, size=(N_BOXES, 2))
            sizes = rng.integers(1, IMAGE_SIZE // 2, size=(N_BOXES, 2))
            boxes[image_id] = np.concatenate([corners, corners + sizes], axis=1)
            yield {
                "image_id": image_id,
                "image_w": IMAGE_SIZE,
                "image_h": IMAGE_SIZE,
                "boxes": boxes[image_id].astype(np.float32),
                "features": rng.random((N_BOXES, dim), dtype=np.float32),
            }

    write_bottomup_tsv(path, rows())
    return boxes


def draw_labels(n_images: int, vocabulary: common.Vocabulary, seed: int) -> dict[int, ImageLabels]:
    """Label each box with one object and 0 to 2 attributes, drawn uniformly from the vocabulary."""
    rng = np.random.default_rng(seed)
    labels = {}
    for image_id in range(n_images):
        objects = rng.integers(len(vocabulary.objects), size=N_BOXES)
        n_attributes = rng.integers(3, size=N_BOXES)
        attributes = rng.integers(len(vocabulary.attributes), size=int(n_attributes.sum()))
        labels[image_id] = ImageLabels(
            boxes=np.concatenate([np.arange(N_BOXES), np.repeat(np.arange(N_BOXES), n_attributes)]),
            words=[vocabulary.objects[i] for i in objects]
            + [vocabulary.attributes[i] for i in attributes],
            types=[OBJECT] * N_BOXES + [ATTRIBUTE] * len(attributes),
        )
    return labels


def write_annotations(
    path: Path, boxes: dict[int, np.ndarray], labels: dict[int, ImageLabels]
) -> None:
    """Write a VG attributes.json: one object per TSV box, in TSV order, with its drawn words."""
    records = []
    for image_id, image_boxes in boxes.items():
        item = labels[image_id]
        attributes: list[list[str]] = [[] for _ in range(N_BOXES)]
        for box, word in zip(item.boxes[N_BOXES:], item.words[N_BOXES:], strict=True):
            attributes[box].append(word)
        objects = []
        for box, (x1, y1, x2, y2) in enumerate(image_boxes.tolist()):
            entry = {"object_id": image_id * N_BOXES + box, "x": x1, "y": y1}
            entry.update(w=x2 - x1, h=y2 - y1, names=[item.words[box]], synsets=[])
            if attributes[box]:
                entry["attributes"] = attributes[box]
            objects.append(entry)
        records.append({"image_id": image_id, "attributes": objects})
    with atomic_write(path, "w") as handle:
        json.dump(records, handle)


def time_read(path: Path) -> dict[str, float]:
    """Read and decode every row of the file; return the seconds and the region count."""
    regions = 0
    with common.timer() as elapsed:
        for row in iter_bottomup_tsv(path, progress=False):
            regions += row.num_boxes
    return {
        "seconds": elapsed["seconds"],
        "cpu_seconds": elapsed["cpu_seconds"],
        "regions": regions,
    }


def build_direct(path: Path, labels: dict[int, ImageLabels], dim: int, seed: int) -> Knowledge:
    """Stream the file into a KnowledgeBuilder with the drawn words, BATCH_ROWS boxes per add."""
    builder = KnowledgeBuilder(dim, seed=seed, provenance={"source": "benchmarks synthetic TSV"})
    words: list[str] = []
    types: list[str] = []
    features: list[np.ndarray] = []
    for row in iter_bottomup_tsv(path, dim, progress=False):
        item = labels[row.image_id]
        words += item.words
        types += item.types
        features.append(row.features[item.boxes])
        if len(words) >= BATCH_ROWS:
            builder.add(words, np.concatenate(features), types)
            words, types, features = [], [], []
    if words:
        builder.add(words, np.concatenate(features), types)
    return builder.build()


def check_counts(direct: Knowledge, report: Any, n_labels: int) -> None:
    """Raise RuntimeError unless both builds used every annotation they kept.

    build_from_vg cleans the words and counts a word once per region, so a box drawn with the same
    attribute twice counts once there. The builder-only pass counts every drawn label.
    """
    counted = int(direct.counts.sum())
    if counted != n_labels:
        raise RuntimeError(
            f"KnowledgeBuilder counted {counted} labelled boxes, expected {n_labels}"
        )
    if report.matched_share != 1.0:
        raise RuntimeError(
            f"build_from_vg matched {report.matched_share:.4f} of its kept annotations to a TSV "
            f"box, expected all of them (counters: {report.counters})"
        )


if __name__ == "__main__":
    main()
