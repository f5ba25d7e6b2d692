"""Streaming reader and atomic writer for the bottom-up-attention region feature TSV.

Each line is one image: image_id, image_w, image_h, num_boxes, boxes, features, separated by tabs
and without a header. `boxes` is base64 of float32 (num_boxes, 4) x1, y1, x2, y2 in pixels, and
`features` is base64 of float32 (num_boxes, F). The original extraction script writes the rows
with Python's csv module, so lines end with "\\r\\n". The reader accepts "\\n" too, and the writer
writes "\\n".

Base64 never contains a tab, a quote or a line break, so a line is split on tabs directly. This
also avoids csv's field size limit, which a 2048-d feature field (about 400 KB) exceeds.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mack.data import DataFormatError
from mack.io import atomic_write

logger = logging.getLogger(__name__)

FIELDNAMES = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
_FIX = "The file looks truncated or corrupt: re-run the feature extraction for this image or re-download"


@dataclass
class BottomUpRow:
    """One image of a bottom-up TSV file."""

    image_id: int
    image_w: int
    image_h: int
    boxes: np.ndarray  # (num_boxes, 4) float32 x1, y1, x2, y2 in pixels
    features: np.ndarray  # (num_boxes, F) float32 region features
    line: int = 0  # 1-based line number in the file, 0 when the row was not read from a file
    offset: int = 0  # byte offset where the row starts
    next_offset: int = (
        0  # byte offset of the next row: pass it as `offset` to resume after this row
    )

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)


def iter_bottomup_tsv(
    path: str | os.PathLike,
    dim: int | None = None,
    *,
    offset: int = 0,
    line: int = 1,
    progress: bool = True,
) -> Iterator[BottomUpRow]:
    """Yield the rows of a bottom-up TSV file one at a time, never holding more than one line.

    dim: expected feature size F; None takes it from the first row with boxes, and every later row
    must match. offset/line: resume at a byte offset from an earlier row's `next_offset`, with the
    line number used in messages (that row's `line + 1`). Blank lines are skipped; a first line
    starting with "image_id" is taken as a header and skipped.
    Raises DataFormatError naming the file, line, image_id and field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bottom-up TSV file not found. Check the path.")
    size = path.stat().st_size
    with (
        open(path, "rb") as handle,
        tqdm(
            total=size,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=path.name,
            disable=not progress,
        ) as bar,
    ):
        _seek_row_start(handle, path, offset, size)
        position = offset
        while raw := handle.readline():
            row_offset, position = position, position + len(raw)
            bar.update(len(raw))
            text = raw.rstrip(b"\r\n")
            if text.strip() and not (row_offset == 0 and text.startswith(b"image_id\t")):
                row = parse_line(text, path, line, dim)
                row.line, row.offset, row.next_offset = line, row_offset, position
                if dim is None and row.num_boxes:
                    dim = row.features.shape[1]
                yield row
            line += 1


def _seek_row_start(handle: Any, path: Path, offset: int, size: int) -> None:
    if not 0 <= offset <= size:
        raise ValueError(f"{path}: offset {offset} is outside the file (size {size} bytes)")
    if offset > 0:
        handle.seek(offset - 1)
        if handle.read(1) != b"\n":
            raise ValueError(
                f"{path}: byte offset {offset} is not the start of a line. "
                "Resume from a row's next_offset."
            )
    handle.seek(offset)


def parse_line(
    text: bytes, path: str | os.PathLike, line: int, dim: int | None = None
) -> BottomUpRow:
    """Decode and check one TSV line (without its line break)."""
    fields = text.split(b"\t")
    if len(fields) != len(FIELDNAMES):
        problem = f"found {len(fields)} tab-separated fields, expected {len(FIELDNAMES)} ({', '.join(FIELDNAMES)})"
        raise DataFormatError(f"{path}, line {line}: {problem}. {_FIX}")

    where = f"line {line}"
    image_id = _int_field(fields[0], "image_id", path, where)
    where = f"line {line}, image_id {image_id}"
    image_w = _int_field(fields[1], "image_w", path, where, minimum=1)
    image_h = _int_field(fields[2], "image_h", path, where, minimum=1)
    num_boxes = _int_field(fields[3], "num_boxes", path, where, minimum=0)

    boxes = _decode_floats(fields[4], "boxes", path, where)
    features = _decode_floats(fields[5], "features", path, where)
    boxes, features = _shape_arrays(boxes, features, num_boxes, dim, path, where)
    check_regions(boxes, features, path, where)
    return BottomUpRow(image_id, image_w, image_h, boxes, features)


def _error(path: Any, where: str, field: str, problem: str) -> DataFormatError:
    return DataFormatError(f'{path}, {where}, field "{field}": {problem}. {_FIX}')


def _int_field(raw: bytes, field: str, path: Any, where: str, minimum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise _error(path, where, field, f"{raw[:40]!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise _error(path, where, field, f"{value} is below {minimum}")
    return value


def _decode_floats(raw: bytes, field: str, path: Any, where: str) -> np.ndarray:
    try:
        data = base64.b64decode(raw, validate=True)
    except binascii.Error as error:
        raise _error(path, where, field, f"invalid base64 ({error})") from None
    if len(data) % 4:
        raise _error(
            path, where, field, f"{len(data)} bytes is not a whole number of float32 values"
        )
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _shape_arrays(
    boxes: np.ndarray, features: np.ndarray, num_boxes: int, dim: int | None, path: Any, where: str
) -> tuple[np.ndarray, np.ndarray]:
    if boxes.size != 4 * num_boxes:
        problem = f"{boxes.size} values, expected 4 x num_boxes = {4 * num_boxes}"
        raise _error(path, where, "boxes", problem)
    if num_boxes == 0:
        if features.size:
            raise _error(path, where, "features", f"{features.size} values for num_boxes = 0")
        return boxes.reshape(0, 4), features.reshape(0, dim or 0)
    if features.size == 0 or features.size % num_boxes:
        problem = f"{features.size} values do not split into num_boxes = {num_boxes} rows"
        raise _error(path, where, "features", problem)
    size = features.size // num_boxes
    if dim is not None and size != dim:
        problem = f"feature size {size} (= {features.size} / {num_boxes} boxes), expected {dim} like the earlier rows"
        raise _error(path, where, "features", problem)
    return boxes.reshape(num_boxes, 4), features.reshape(num_boxes, size)


def check_regions(boxes: np.ndarray, features: np.ndarray, path: Any, where: str) -> None:
    """Raise DataFormatError unless boxes and features are finite and every box has x2 >= x1, y2 >= y1."""
    for field, values in (("boxes", boxes), ("features", features)):
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if len(bad):
            problem = f"region {bad[0]} contains NaN or infinite values"
            raise _error(path, where, field, problem)
    inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if len(inverted):
        problem = f"box {inverted[0]} has x2 < x1 or y2 < y1: {boxes[inverted[0]].tolist()}"
        raise _error(path, where, "boxes", problem)


# ----------------------------------------------------------------------------- writer


def write_bottomup_tsv(
    path: str | os.PathLike,
    rows: Iterable[BottomUpRow | Mapping[str, Any]],
    *,
    progress: bool = False,
) -> int:
    """Write rows to a bottom-up TSV file atomically and return the number of rows.

    rows: BottomUpRow objects or mappings with image_id, image_w, image_h, boxes (n, 4) and
    features (n, F). Every row is checked like the reader checks it, with one F for the file.
    """
    path = Path(path)
    dim: int | None = None
    count = 0
    with atomic_write(path, "wb") as handle:
        for index, row in enumerate(tqdm(rows, desc=path.name, disable=not progress)):
            fields = _row_fields(row, path, index)
            line, dim = _encode_row(*fields, dim=dim, path=path, where=f"row {index}")
            handle.write(line)
            count += 1
    logger.info("wrote %d rows to %s", count, path)
    return count


def _row_fields(row: BottomUpRow | Mapping[str, Any], path: Path, index: int) -> tuple:
    names = ("image_id", "image_w", "image_h", "boxes", "features")
    if isinstance(row, Mapping):
        missing = [name for name in names if name not in row]
        if missing:
            raise ValueError(f"{path}, row {index}: missing keys {missing}; each row needs {names}")
        return tuple(row[name] for name in names)
    return tuple(getattr(row, name) for name in names)


def _encode_row(
    image_id: Any,
    image_w: Any,
    image_h: Any,
    boxes: Any,
    features: Any,
    *,
    dim: int | None,
    path: Path,
    where: str,
) -> tuple[bytes, int | None]:
    boxes = np.asarray(boxes, dtype=np.float32)
    features = np.asarray(features, dtype=np.float32)
    where = f"{where}, image_id {image_id}"
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise _error(path, where, "boxes", f"shape {boxes.shape}, expected (num_boxes, 4)")
    if features.ndim != 2 or len(features) != len(boxes):
        problem = f"shape {features.shape}, expected ({len(boxes)}, F)"
        raise _error(path, where, "features", problem)
    if len(boxes) and dim is not None and features.shape[1] != dim:
        raise _error(path, where, "features", f"F = {features.shape[1]}, earlier rows have {dim}")
    check_regions(boxes, features, path, where)
    if not isinstance(image_id, (int, np.integer)):
        raise _error(path, where, "image_id", f"{image_id!r} is not an integer")
    for field, value in (("image_w", image_w), ("image_h", image_h)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise _error(path, where, field, f"{value!r} is not a positive integer")

    fields = [
        str(int(image_id)).encode(),
        str(int(image_w)).encode(),
        str(int(image_h)).encode(),
        str(len(boxes)).encode(),
        base64.b64encode(boxes.astype("<f4").tobytes()),
        base64.b64encode(features.astype("<f4").tobytes()),
    ]
    if len(boxes) and dim is None:
        dim = features.shape[1]
    return b"\t".join(fields) + b"\n", dim
