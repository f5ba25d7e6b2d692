"""Rehearse the full Visual Genome knowledge build (eq. 1) on synthetic files of the real layout.

Full size: 108,000 images, 3.8 million regions (35.2 per image), F = 2048, about 1.74 words per
region (3.8 million names and 2.8 million attributes, the counts Visual Genome publishes), and
27,801 concepts. Its bottom-up TSV would hold 3.8e6 x 2048 float32 values, about 31 GB, or about
41 GB as base64 text, too big for this machine's disk budget. So the script writes a fraction
1/N of the images (default N = 20: 5,400 images, 190,000 regions, a TSV of about 2.1 GB),
with the same vocabulary, attributes.json layout and TSV layout, builds the knowledge with
mack.vgknowledge.build_from_vg (with checkpoints every 10,000 / N rows, so the run writes as many
checkpoints as a full one), and extrapolates the time to the full size. The files go to a
temporary folder under /tmp (or --workdir) and are deleted afterwards.

Extrapolation: the annotation pass and the TSV pass scale with the number of regions, so they are
multiplied by N. At this size build_from_vg reads the annotations in a forked process while it
reads the TSV ahead, so their time is part of tsv_pass_seconds, and annotation_pass_seconds
(timed in this process) is 0. A checkpoint costs the same at any N (it stores the K x F sums), and the run
writes as many as a full run, so their time is added once. The plain linear estimate (all time
times N) is reported too. Peak memory is resource.getrusage's ru_maxrss of the build process,
which generates no data itself, and apart that of its largest child, the forked annotation
reader (its RSS counts the pages it shares with the parent, so the sum is an upper bound). The builder's K x F arrays do not grow with N, but the word
index of the annotations does (about 370 bytes per region, as mack.data.vg estimates).

Run: `python -m benchmarks.vg_rehearsal [--fraction 20]`; `--quick` runs 1/2000 of the size.
Writes --json PATH if given (run_all passes one).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FULL_IMAGES = 108_000
FULL_REGIONS = 3_800_000
FULL_ATTRIBUTES = 2_800_000
FULL_CONCEPTS = 27_801
N_OBJECT_WORDS = 21_000  # the other 6,801 concepts are attributes
DIM = 2048
FULL_CHUNK_ROWS = 10_000
ZIPF_EXPONENT = 1.1
IMAGE_SIZE = (800, 600)


# ----------------------------------------------------------------------------- data generation


def word_sampler(rng: np.random.Generator, names: list[str]):
    """Return a function (n) -> n names drawn with Zipf-like frequencies (rank ** -1.1)."""
    weights = np.arange(1, len(names) + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    cumulative = np.cumsum(weights / weights.sum())
    return lambda n: [names[i] for i in np.searchsorted(cumulative, rng.random(n), side="right")]


def generate(folder: Path, n_images: int, seed: int) -> dict[str, Any]:
    """Write folder/attributes.json and folder/features.tsv for `n_images` images."""
    from mack.data.bottomup import write_bottomup_tsv

    rng = np.random.default_rng(seed)
    # Names that word cleaning keeps as they are (no plural "s"), so K stays at FULL_CONCEPTS.
    objects = word_sampler(rng, [f"object{i}x" for i in range(N_OBJECT_WORDS)])
    attributes = word_sampler(
        rng, [f"attribute{i}x" for i in range(FULL_CONCEPTS - N_OBJECT_WORDS)]
    )
    per_image = FULL_REGIONS / FULL_IMAGES
    attribute_rate = FULL_ATTRIBUTES / FULL_REGIONS
    records = []
    next_object_id = 1

    def tsv_rows():
        for record in records:
            boxes = np.array(
                [(o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]) for o in record["attributes"]],
                dtype=np.float32,
            )
            features = rng.random((len(boxes), DIM), dtype=np.float32)
            yield {"image_id": record["image_id"], "image_w": IMAGE_SIZE[0],
                   "image_h": IMAGE_SIZE[1], "boxes": boxes, "features": features}  # fmt: skip

    for image_id in range(1, n_images + 1):
        n_objects = max(1, int(rng.poisson(per_image)))
        names = objects(n_objects)
        n_attributes = rng.poisson(attribute_rate, n_objects)
        entries = []
        for name, count in zip(names, n_attributes, strict=True):
            x, y = (int(v) for v in rng.integers(0, 700, 2))
            w, h = (int(v) for v in rng.integers(2, 100, 2))
            entry = {"object_id": next_object_id, "x": x, "y": y, "w": w, "h": h,
                     "names": [name], "synsets": []}  # fmt: skip
            if count:
                entry["attributes"] = attributes(int(count))
            entries.append(entry)
            next_object_id += 1
        records.append({"image_id": image_id, "attributes": entries})

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "attributes.json").write_text(json.dumps(records))
    write_bottomup_tsv(folder / "features.tsv", tsv_rows())
    return {
        "images": n_images,
        "regions": next_object_id - 1,
        "attribute_annotations": sum(
            len(o.get("attributes", [])) for r in records for o in r["attributes"]
        ),
        "attributes_json_bytes": (folder / "attributes.json").stat().st_size,
        "features_tsv_bytes": (folder / "features.tsv").stat().st_size,
    }


# ----------------------------------------------------------------------------- the build


def timed_build(folder: Path, chunk_rows: int) -> dict[str, Any]:
    """Build the knowledge from folder's files; return times, counts and peak memory."""
    import psutil

    from mack import vgknowledge

    timings = {"annotation_pass": 0.0, "checkpoints": 0.0, "checkpoint_count": 0}
    kept_regions, save_checkpoint = vgknowledge._kept_regions, vgknowledge._save_checkpoint

    def timed_kept_regions(*args, **kwargs):
        start = time.perf_counter()
        try:
            return kept_regions(*args, **kwargs)
        finally:
            timings["annotation_pass"] += time.perf_counter() - start

    def timed_save_checkpoint(*args, **kwargs):
        start = time.perf_counter()
        try:
            return save_checkpoint(*args, **kwargs)
        finally:
            timings["checkpoints"] += time.perf_counter() - start
            timings["checkpoint_count"] += 1

    vgknowledge._kept_regions = timed_kept_regions
    vgknowledge._save_checkpoint = timed_save_checkpoint
    rss_before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    knowledge, report = vgknowledge.build_from_vg(
        folder / "attributes.json", folder / "features.tsv",
        checkpoint_dir=folder / "checkpoints", chunk_rows=chunk_rows, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "seconds": seconds,
        "annotation_pass_seconds": timings["annotation_pass"],
        "checkpoint_seconds": timings["checkpoints"],
        "checkpoints_written": timings["checkpoint_count"],
        "tsv_pass_seconds": seconds - timings["annotation_pass"] - timings["checkpoints"],
        "rss_before_build_gib": rss_before / 2**30,
        "peak_rss_gib": peak / 2**30,
        "peak_rss_child_gib": peak_child / 2**30,
        "words": len(knowledge),
        "annotations": int(knowledge.counts.sum()),
        "matched_share": report.matched_share,
        "counters": dict(report.counters),
    }


def extrapolate(build: dict[str, Any], fraction: int) -> dict[str, float]:
    """Return the full-size time estimates in seconds (see the module docstring)."""
    scaling = build["annotation_pass_seconds"] + build["tsv_pass_seconds"]
    return {
        "full_seconds_estimate": scaling * fraction + build["checkpoint_seconds"],
        "full_seconds_linear": build["seconds"] * fraction,
        "full_hours_estimate": (scaling * fraction + build["checkpoint_seconds"]) / 3600,
    }


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from benchmarks import common

    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=int, default=20, help="run 1/N of the full size")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp folder")
    args = parser.parse_args(argv)
    common.setup_run(args)
    fraction = 2000 if args.quick else args.fraction
    if fraction < 1:
        raise SystemExit(f"--fraction must be at least 1, got {fraction}")
    n_images = FULL_IMAGES // fraction
    chunk_rows = max(1, FULL_CHUNK_ROWS // fraction)

    # A SIGTERM (run_all's timeout) becomes SystemExit, so the files below are still deleted.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    folder = Path(tempfile.mkdtemp(prefix="vg_rehearsal_", dir=args.workdir))
    try:
        start = time.perf_counter()
        generated = json.loads(_run_stage("generate", folder, n_images, args))
        generate_seconds = time.perf_counter() - start
        build = json.loads(_run_stage("build", folder, chunk_rows, args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    figures = {
        "fraction": f"1/{fraction}",
        "full_size": {
            "images": FULL_IMAGES,
            "regions": FULL_REGIONS,
            "dim": DIM,
            "concepts": FULL_CONCEPTS,
            "tsv_float32_gb": FULL_REGIONS * DIM * 4 / 1e9,
        },  # fmt: skip
        "generated": generated,
        "generate_seconds": generate_seconds,
        "chunk_rows": chunk_rows,
        "build": build,
        "extrapolated": extrapolate(build, fraction),
        "files_deleted": not folder.exists(),
        "machine": common.machine_info(),
    }
    return common.finish_run("vg_rehearsal", args, figures)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_stage(stage: str, folder: Path, number: int, args) -> str:
    """Run one stage in a fresh process, so ru_maxrss of the build excludes data generation."""
    command = [sys.executable, "-m", "benchmarks.vg_rehearsal", "--stage", stage, str(folder),
               str(number), str(args.seed)]  # fmt: skip
    threads = str(args.threads)
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if result.returncode:
        raise SystemExit(f"stage {stage} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def _stage(argv: Sequence[str]) -> None:
    stage, folder, number, seed = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    if stage == "generate":
        print(json.dumps(generate(folder, number, seed)))
    else:
        print(json.dumps(timed_build(folder, number)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--stage":
        _stage(sys.argv[2:])
    else:
        main()
