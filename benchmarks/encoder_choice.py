"""Compare the EfficientNet-Lite0 region methods ("crop", "roi") and input sizes on coco-mini.

For each configuration this script measures
- speed: boxes per second and seconds per image when encoding the grid + gt-boxes regions of the
  first SPEED_IMAGES val2017 images without the cache, after one warm-up image;
- quality: the full coco-mini run (knowledge from train + coco-extra, test on val2017) with the
  feature cache, reporting rsum and text_to_image R@1 per region setting.

Run: `NLTK_DATA=../shared/data/nltk_data python benchmarks/encoder_choice.py`. It prints a
Markdown table and writes results/encoder_choice.{json,md}. A cold run encodes about 6,600 boxes
per configuration, so the crop configurations take several minutes each on one CPU core.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mack import config
from mack.coco_mini import (
    REGION_SETTINGS,
    CocoMiniData,
    ensure_tagger,
    evaluate_encoder,
    image_key,
    load_data,
    load_val,
    markdown_table,
)
from mack.encoders import EfficientNetLite0Encoder, FeatureCache, RegionItem
from mack.io import atomic_write, write_json

logger = logging.getLogger("encoder_choice")

CONFIGS = ("crop:128", "crop:160", "crop:224", "roi:320", "roi:384", "roi:448")
SPEED_IMAGES = 8


def parse_config(text: str) -> tuple[str, int]:
    """Read "method:image_size", e.g. "crop:160"."""
    method, _, size = text.partition(":")
    if method not in ("crop", "roi") or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected method:image_size like crop:160, got {text!r}")
    return method, int(size)


def speed_items(data: CocoMiniData, n_images: int) -> list[RegionItem]:
    """Return the grid + gt-boxes regions of the first `n_images` test images."""
    val = load_val(data.val)
    items = []
    for position, image_id in enumerate(val.image_ids[:n_images]):
        boxes = np.concatenate([val.boxes[setting][position] for setting in REGION_SETTINGS])
        path = data.val.images[image_id].path
        items.append(RegionItem(path, boxes, image_key(data.val, image_id)))
    return items


def measure_speed(encoder: EfficientNetLite0Encoder, items: list[RegionItem]) -> dict[str, float]:
    """Time encoding `items` without the cache; the first item is a warm-up and is not timed."""
    encoder.encode(items[0].image, items[0].boxes)
    start = time.perf_counter()
    n_boxes = 0
    for item in items[1:]:
        n_boxes += len(encoder.encode(item.image, item.boxes))
    seconds = time.perf_counter() - start
    return {
        "boxes_per_second": n_boxes / seconds,
        "seconds_per_image": seconds / (len(items) - 1),
        "timed_boxes": n_boxes,
    }


def benchmark(
    method: str, image_size: int, data: CocoMiniData, cache: FeatureCache, items: list[RegionItem]
) -> dict[str, Any]:
    """Measure one configuration's speed and retrieval quality."""
    encoder = EfficientNetLite0Encoder(method, image_size=image_size)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    speed = measure_speed(encoder, items)
    misses_before = cache.misses
    start = time.perf_counter()
    result = evaluate_encoder(data, encoder, cache, progress=False)
    quality = {}
    for row in result["rows"]:
        if row["model"] in ("pretrained", "w/o region prototypes (random region)"):
            name = "pretrained" if row["model"] == "pretrained" else "random_region"
            quality[f"{name} {row['regions']}"] = {
                "rsum": row["rsum"],
                "text_to_image_r1": row["text_to_image"]["r1"],
                "image_to_text_r1": row["image_to_text"]["r1"],
            }
    return {
        "method": method,
        "image_size": image_size,
        "settings": encoder.settings(),
        **speed,
        "load_average_1min_before_speed": load_before,
        "quality": quality,
        "run_seconds": time.perf_counter() - start,
        "cold_images_encoded": cache.misses - misses_before,
    }


def table_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for record in records:
        quality = record["quality"]
        rows.append(
            [
                record["method"],
                record["image_size"],
                record["boxes_per_second"],
                f"{record['seconds_per_image']:.2f}",
                record["load_average_1min_before_speed"],
                quality["pretrained grid"]["rsum"],
                quality["pretrained gt-boxes"]["rsum"],
                quality["pretrained grid"]["text_to_image_r1"],
                quality["random_region grid"]["rsum"],
                record["run_seconds"],
                record["cold_images_encoded"],
            ]
        )
    return rows


HEADER = [
    "method",
    "size",
    "boxes/s",
    "s/image",
    "load",
    "rsum grid",
    "rsum gt-boxes",
    "t2i R@1 grid",
    "rsum random-region grid",
    "run s",
    "images encoded",
]


COLUMNS = (
    f"boxes/s and s/image: uncached encoding of the grid + gt-boxes regions of {SPEED_IMAGES} "
    "val2017 images. load: the machine's 1-minute load average just before (other jobs slow "
    "the speed columns down). rsum: both directions, R@1+5+10, pretrained knowledge, max-mean "
    "pooling. t2i R@1: text_to_image R@1 (chance 1.3). run s: the full run, which encodes the "
    "images counted in the last column and reads the rest from the feature cache."
)


def cpu_name() -> str:
    """Return the CPU model name from /proc/cpuinfo, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "configs",
        nargs="*",
        type=parse_config,
        default=[parse_config(c) for c in CONFIGS],
        help=f"method:image_size pairs (default: {' '.join(CONFIGS)})",
    )
    parser.add_argument(
        "--data-root", help="real-data folder (default: $MACK_DATA or ../shared/data)"
    )
    parser.add_argument(
        "--cache", help="feature cache folder (default: the project's feature cache)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", help="folder for encoder_choice.{json,md} (default: results/)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    ensure_tagger(args.data_root)
    data = load_data(args.data_root)
    cache = FeatureCache(args.cache)
    items = speed_items(data, SPEED_IMAGES + 1)

    records = []
    for method, image_size in args.configs:
        logger.info("configuration %s:%d", method, image_size)
        records.append(benchmark(method, image_size, data, cache, items))

    machine = f"{cpu_name()}, {args.threads} torch thread(s), torch {torch.__version__}"
    table = markdown_table(HEADER, table_rows(records))
    print(f"Machine: {machine}\n\n{table}")

    out = config.PROJECT_ROOT / "results" if args.out is None else Path(args.out)
    payload = {"machine": machine, "speed_images": SPEED_IMAGES, "records": records}
    write_json(out / "encoder_choice.json", payload)
    with atomic_write(out / "encoder_choice.md", "w") as handle:
        handle.write(
            f"# Region encoder choice on coco-mini\n\n{COLUMNS}\n\nMachine: {machine}.\n\n"
        )
        handle.write(table + "\n")


if __name__ == "__main__":
    main()
