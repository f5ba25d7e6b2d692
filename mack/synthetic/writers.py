"""Writers of the public file formats: Visual Genome JSON, bottom-up TSV, SCAN precomp, JSON.

Every writer produces the same bytes for the same input: JSON with sorted keys and fixed
separators, float32 arrays written as raw little-endian bytes. Each file is written atomically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from mack.io import atomic_write
from mack.synthetic.images import VGImageRecord


def dumps(data: Any) -> str:
    """Serialise JSON deterministically: sorted keys, compact separators, ASCII only."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def write_json_file(path: Path, data: Any) -> None:
    """Write `data` with `dumps` plus a final newline, atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(dumps(data).encode("ascii") + b"\n")


def vg_object_entry(image: VGImageRecord, with_attributes: bool) -> list[dict[str, Any]]:
    """Return the objects of one image as VG 1.4 `objects.json` / `attributes.json` entries."""
    entries = []
    for obj in image.objects:
        x, y, w, h = obj.box
        entry = {"object_id": obj.object_id, "x": x, "y": y, "w": w, "h": h}
        entry.update(names=[obj.name], synsets=[])
        if with_attributes:
            if obj.attributes:  # as in VG, objects without attributes have no "attributes" key
                entry["attributes"] = list(obj.attributes)
        else:
            entry["merged_object_ids"] = []
        entries.append(entry)
    return entries


class VGJsonCollector:
    """Collects the three VG JSON documents image by image and writes them at the end."""

    def __init__(self) -> None:
        self.image_data: list[dict[str, Any]] = []
        self.objects: list[dict[str, Any]] = []
        self.attributes: list[dict[str, Any]] = []

    def add(self, image: VGImageRecord) -> None:
        size = {"image_id": image.image_id, "width": image.width, "height": image.height}
        self.image_data.append({**size, "url": None, "coco_id": None, "flickr_id": None})
        self.objects.append({"image_id": image.image_id, "objects": vg_object_entry(image, False)})
        self.attributes.append(
            {"image_id": image.image_id, "attributes": vg_object_entry(image, True)}
        )

    def write(self, folder: Path) -> None:
        write_json_file(folder / "image_data.json", self.image_data)
        write_json_file(folder / "objects.json", self.objects)
        write_json_file(folder / "attributes.json", self.attributes)


def bottomup_line(image: VGImageRecord, features: np.ndarray) -> bytes:
    """Encode one bottom-up TSV row: id, width, height, box count, base64 boxes and features.

    features: (num_boxes, F) float32, rows in the order of the image's objects. Boxes are
    x1, y1, x2, y2 float32. Lines end with CRLF because the original extraction script
    (tools/generate_tsv.py of peteanderson80/bottom-up-attention) writes rows with
    csv.DictWriter, whose default line end is CRLF.
    """
    boxes = np.array(
        [(x, y, x + w, y + h) for x, y, w, h in (obj.box for obj in image.objects)],
        dtype="<f4",
    ).reshape(-1, 4)
    fields = [
        str(image.image_id).encode(),
        str(image.width).encode(),
        str(image.height).encode(),
        str(len(image.objects)).encode(),
        base64.b64encode(boxes.tobytes()),
        base64.b64encode(np.ascontiguousarray(features, dtype="<f4").tobytes()),
    ]
    return b"\t".join(fields) + b"\r\n"


@contextmanager
def npy_stream(path: Path, shape: tuple[int, ...]) -> Iterator[IO[bytes]]:
    """Open `path` atomically for a float32 .npy array of `shape` whose rows are written in order.

    The header is the one np.save writes (format 1.0), so a file written in chunks is byte-identical
    to np.save of the whole array. The caller writes exactly prod(shape) float32 values.
    """
    header = {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}
    expected = int(np.prod(shape)) * 4
    with atomic_write(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        start = handle.tell()
        yield handle
        written = handle.tell() - start
        if written != expected:
            raise RuntimeError(f"{path}: wrote {written} bytes of array data, expected {expected}")


def write_captions(path: Path, captions: Sequence[str]) -> None:
    """Write one caption per line (UTF-8, "\\n" line ends, final newline), atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write("".join(f"{caption}\n" for caption in captions).encode("utf-8"))


def file_digest(path: Path) -> str:
    """Return the sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_table(root: Path, paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Return relative path -> {"sha256", "bytes"} for the given files under `root`."""
    table = {}
    for path in sorted(paths):
        relative = path.relative_to(root).as_posix()
        table[relative] = {"sha256": file_digest(path), "bytes": os.path.getsize(path)}
    return table
