"""Pretrained general knowledge (eq. 1) from Visual Genome annotations and bottom-up region features.

`build_from_vg` makes one streaming pass:
1. words: read objects.json or attributes.json one image record at a time, clean the words and
   index each word's regions (mack.data.vg.word_regions);
2. region cap f: keep a seeded sample of at most f regions per word (mack.knowledge.cap_annotations)
   before any feature is read;
3. features: read the bottom-up TSV one image row at a time, find the feature row of each kept
   region and add it to mack.knowledge.KnowledgeBuilder, ADD_BATCH_ROWS rows per call. Memory
   for features is the builder's K x F sums plus one batch of rows. The word index of step 1 is
   separate and grows with the regions.

For a TSV of PARALLEL_MIN_BYTES (64 MiB) or more, steps 1 and 2 run in a forked process while
this one reads up to READ_AHEAD_BYTES (512 MiB) of TSV rows ahead, which adds that much to the
memory peak. The knowledge, the report and the checkpoints are the same as without it.

Two kinds of region features fit (`region_boxes`):
- "annotated" (route a): the TSV contains one feature per annotated VG box, extracted by the user
  with a RegionEncoder for the given boxes (`extract_vg_features`). Public bottom-up features of
  the VG ground-truth boxes do not exist. A kept region takes its feature row by this rule:
  1. box equality: a TSV box x1, y1, x2, y2 equals the region's x, y, x + w, y + h when every
     coordinate differs by at most `box_tolerance` pixels (default 1, which absorbs float32
     rounding and the x2 = x + w - 1 convention). If several rows match, the closest box wins
     (largest coordinate difference smallest). Among equally close rows (VG repeats boxes under
     other object ids), the row at the object's position in the image's object list wins when it
     is one of them, else the first.
  2. object order: otherwise, when the row has exactly as many boxes as the image has objects in
     the annotation file, the row at the object's position.
  3. otherwise the region is unmatched and counted in the report.
  The synthetic world (mack.synthetic) and `extract_vg_features` both write every object of an
  image, in file order, with its box as x, y, x + w, y + h, so rule 1 matches every region.
- "detected" (route b): the TSV holds the detector's own boxes (36 per image in the usual
  bottom-up release). A detection takes the words of every kept VG box of its image with
  IoU >= `iou_threshold` (mack.data.vg.assign_words_to_detections), and the report gives the
  share of kept annotations that reach a detection.

Checkpoints: with `checkpoint_dir`, every `chunk_rows` TSV rows the builder state, the counters and
the TSV byte offset are saved atomically. A rerun with the same inputs and settings resumes after
the last saved row, and its knowledge equals that of an uninterrupted build exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import sys
import time
import warnings
import zipfile
from array import array
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mack.data import DataFormatError
from mack.data.bottomup import BottomUpRow, iter_bottomup_tsv, write_bottomup_tsv
from mack.data.vg import VGObject, assign_words_to_detections, iter_vg_objects, word_regions
from mack.encoders import RegionEncoder, load_rgb
from mack.io import save_npz
from mack.knowledge import Knowledge, KnowledgeBuilder, cap_annotations

logger = logging.getLogger(__name__)

ANNOTATED, DETECTED = "annotated", "detected"
REGION_BOXES = (ANNOTATED, DETECTED)
CHECKPOINT_VERSION = 2  # 2: regions added in batches of ADD_BATCH_ROWS
DEFAULT_CHUNK_ROWS = 10_000
ADD_BATCH_ROWS = 4096  # labelled region rows per KnowledgeBuilder.add call
PARALLEL_MIN_BYTES = 64 * 2**20  # TSV size from which parallel=None uses a second process
READ_AHEAD_BYTES = 512 * 2**20  # TSV features read ahead while the annotations are parsed
_HASHED_BYTES = 1 << 16  # bytes hashed at each end of an input file for the checkpoint fingerprint
_LOGGED_UNMATCHED = 5


@dataclass
class BuildReport:
    """Counts of what `build_from_vg` read, kept, matched and added, step by step."""

    annotations_path: str
    features_path: str
    region_boxes: str
    region_cap: int | None
    seed: int
    share_kept: float = 1.0  # p, share of word-region annotations the region cap keeps
    # Per step ("read": raw strings and objects; "cleaned"; "capped"; "with features"):
    # its words, regions and word-region annotations.
    steps: list[dict[str, Any]] = field(default_factory=list)
    cleaning: dict[str, int] = field(default_factory=dict)  # mack.data.vg word_regions stats
    counters: dict[str, int] = field(default_factory=dict)  # TSV rows, matches, rows added
    resumed_from_row: int | None = None  # TSV rows already done when a checkpoint was found
    checkpoints_written: int = 0
    seconds: float = 0.0

    @property
    def matched_share(self) -> float:
        """Share of kept (word, region) annotations that reached a feature row."""
        total = self.counters.get("annotations_kept", 0)
        return self.counters.get("annotations_matched", 0) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-compatible values, matched_share included."""
        return {**asdict(self), "matched_share": self.matched_share}


@dataclass
class _ImageRegions:
    """The kept regions of one image, in annotation file order."""

    object_ids: list[int]
    boxes: np.ndarray  # (m, 4) float64 x1, y1, x2, y2
    words: list[list[str]]  # per region, its kept words
    positions: np.ndarray  # (m,) int64, per region the index of its object in the image's list
    n_objects: int  # objects of the image in the annotation file, kept or not


# ----------------------------------------------------------------------------- annotations


def _record_order(objects: Iterable[VGObject], order: dict[int, array]) -> Iterator[VGObject]:
    """Pass objects through, recording each image's object ids in file order."""
    for obj in objects:
        ids = order.get(obj.image_id)
        if ids is None:
            ids = order[obj.image_id] = array("q")
        ids.append(obj.object_id)
        yield obj


def _step(report: BuildReport, name: str, words: int, regions: int, annotations: int) -> None:
    report.steps.append(
        {"step": name, "words": words, "regions": regions, "annotations": annotations}
    )
    logger.info(
        "%s: %d words, %d regions, %d word-region annotations", name, words, regions, annotations
    )


def _kept_regions(
    annotations_json: Path,
    report: BuildReport,
    *,
    region_cap: int | None,
    seed: int,
    use_attributes: bool,
    progress: bool,
) -> tuple[dict[int, _ImageRegions], dict[str, str]]:
    """Read, clean and cap the annotations; return the kept regions per image and word types."""
    order: dict[int, array] = {}
    objects = _record_order(iter_vg_objects(annotations_json, progress=progress), order)
    regions = word_regions(objects, use_attributes=use_attributes)
    stats = report.cleaning = dict(regions.stats)
    raw_words = stats.get("object_distinct_raw", 0) + stats.get("attribute_distinct_raw", 0)
    raw_annotations = stats.get("object_strings", 0) + stats.get("attribute_strings", 0)
    _step(report, "read", raw_words, stats.get("objects_read", 0), raw_annotations)
    _step(report, "cleaned", len(regions.annotations), len(regions.boxes), regions.n_annotations)

    kept_annotations, share_kept = cap_annotations(regions.annotations, region_cap, seed)
    report.share_kept = share_kept
    words_of: dict[tuple[int, int], list[str]] = defaultdict(list)
    for word in sorted(kept_annotations):
        for key in kept_annotations[word]:
            words_of[key].append(word)
    n_kept = sum(len(keys) for keys in kept_annotations.values())
    _step(
        report,
        "capped",
        sum(1 for keys in kept_annotations.values() if keys),
        len(words_of),
        n_kept,
    )
    report.counters["annotations_kept"] = n_kept

    grouped: dict[int, list[tuple[int, tuple, list[str]]]] = defaultdict(list)
    for key, (x, y, w, h) in regions.boxes.items():  # file order
        if key in words_of:
            grouped[key[0]].append((key[1], (x, y, x + w, y + h), words_of[key]))
    by_image = {
        image_id: _ImageRegions(
            object_ids=[object_id for object_id, _, _ in entries],
            boxes=np.array([box for _, box, _ in entries], dtype=np.float64),
            words=[words for _, _, words in entries],
            positions=np.array(
                [order[image_id].index(object_id) for object_id, _, _ in entries], dtype=np.int64
            ),
            n_objects=len(order[image_id]),
        )
        for image_id, entries in grouped.items()
    }
    return by_image, dict(regions.types)


# ----------------------------------------------------------------------------- matching features


def match_annotated_boxes(
    regions: _ImageRegions, tsv_boxes: np.ndarray, box_tolerance: float
) -> tuple[np.ndarray, Counter]:
    """Return the TSV row of each kept region (-1 if none) and how each was matched.

    tsv_boxes: (n, 4) x1, y1, x2, y2 of one TSV row. See the module docstring for the rule.
    """
    n_regions, n_rows = len(regions.object_ids), len(tsv_boxes)
    positions = regions.positions
    # Fast path, the usual case of features extracted at the annotated boxes: each region's own
    # row contains its exact box. Distance 0 is the closest, and rule 1 then picks the own position.
    if n_regions and positions.max() < n_rows:
        if np.array_equal(regions.boxes, tsv_boxes[positions]):
            return positions.copy(), Counter(regions_matched_by_box=n_regions)
    distance = np.abs(regions.boxes[:, None, :] - np.asarray(tsv_boxes)[None, :, :]).max(axis=2)
    distance = np.where(distance <= box_tolerance, distance, np.inf).reshape(n_regions, n_rows)

    # Rule 1: the closest box within the tolerance; on a tie the object's own position, else the first.
    closest = distance.min(axis=1, initial=np.inf)
    by_box = np.isfinite(closest)
    tied = distance == closest[:, None]
    own = positions < n_rows
    own[own] = tied[own.nonzero()[0], positions[own]]
    first = tied.argmax(axis=1) if n_rows else np.zeros(n_regions, dtype=np.int64)
    rows = np.where(own, positions, first)

    # Rule 2: object order, when the row has one box per object of the image.
    by_order = ~by_box & (n_rows == regions.n_objects)
    rows = np.where(by_box, rows, np.where(by_order, positions, -1))
    match_counts = Counter(
        regions_matched_by_box=int(by_box.sum()),
        regions_matched_by_order=int(by_order.sum()),
        regions_unmatched=int((rows < 0).sum()),
    )
    return rows, +match_counts  # unary + drops zero counts


def _annotated_batch(
    regions: _ImageRegions,
    row: BottomUpRow,
    types: Mapping[str, str],
    tolerance: float,
    logged_before: int,
) -> tuple[list[str], np.ndarray, list[str], Counter]:
    """Return (words, features, types) of one image's kept regions, one row per word.

    logged_before: unmatched regions seen so far, so only the first few are logged.
    """
    rows, match_counts = match_annotated_boxes(regions, row.boxes, tolerance)
    words: list[str] = []
    feature_rows: list[int] = []
    for i, feature_row in enumerate(rows.tolist()):
        if feature_row >= 0:
            match_counts["annotations_matched"] += len(regions.words[i])
            words.extend(regions.words[i])
            feature_rows.extend([feature_row] * len(regions.words[i]))
        elif logged_before < _LOGGED_UNMATCHED:
            logged_before += 1
            logger.warning(
                "image_id %d, object_id %d: no TSV box equals %s and the row has %d boxes for "
                "%d objects, so the region gets no feature",
                row.image_id, regions.object_ids[i], regions.boxes[i].tolist(),
                row.num_boxes, regions.n_objects,
            )  # fmt: skip
    return words, row.features[feature_rows], [types[word] for word in words], match_counts


def _detected_batch(
    regions: _ImageRegions, row: BottomUpRow, types: Mapping[str, str], iou_threshold: float
) -> tuple[list[str], np.ndarray, list[str], Counter]:
    """Return (words, features, types) of one image's detections that overlap kept regions."""
    vg_boxes = [
        ((x1, y1, x2 - x1, y2 - y1), words)
        for (x1, y1, x2, y2), words in zip(regions.boxes.tolist(), regions.words, strict=True)
    ]
    assigned = assign_words_to_detections(vg_boxes, row.boxes, iou_threshold)
    words: list[str] = []
    feature_rows: list[int] = []
    for detection, detection_words in enumerate(assigned.words):
        for word in detection_words:
            words.append(word)
            feature_rows.append(detection)
    match_counts = Counter(
        annotations_matched=assigned.matched_annotations,
        detections_with_words=sum(1 for entry in assigned.words if entry),
    )
    return words, row.features[feature_rows], [types[word] for word in words], match_counts


# ----------------------------------------------------------------------------- checkpoints


def _file_fingerprint(path: Path) -> dict[str, Any]:
    """Return the size and the sha256 of the first and last 64 KiB of a file."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(_HASHED_BYTES))
        handle.seek(max(0, size - _HASHED_BYTES))
        digest.update(handle.read(_HASHED_BYTES))
    return {"name": path.name, "size": size, "ends_sha256": digest.hexdigest()}


def _fingerprint(annotations: Path, features: Path, settings: Mapping[str, Any]) -> str:
    identity = {
        "version": CHECKPOINT_VERSION,
        "annotations": _file_fingerprint(annotations),
        "features": _file_fingerprint(features),
        "settings": dict(settings),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass
class _Progress:
    """Position and counts of the TSV pass, saved with every checkpoint."""

    offset: int = 0  # byte offset of the next TSV row
    line: int = 1  # its line number
    rows: int = 0  # TSV rows done
    counters: Counter = field(default_factory=Counter)
    seen_images: set[int] = field(default_factory=set)


def _save_checkpoint(
    path: Path, fingerprint: str, builder: KnowledgeBuilder | None, progress: _Progress
) -> None:
    meta: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "fingerprint": fingerprint,
        "offset": progress.offset,
        "line": progress.line,
        "rows": progress.rows,
        "counters": dict(progress.counters),
    }
    arrays = {"seen_images": np.array(sorted(progress.seen_images), dtype=np.int64)}
    if builder is not None:
        state = builder.state(copy_arrays=False)
        for name in ("sums", "counts", "roles", "random"):
            arrays[name] = state.pop(name)
        meta["builder"] = state
    save_npz(path, meta=np.array(json.dumps(meta)), **arrays)


def _load_checkpoint(path: Path, fingerprint: str) -> tuple[KnowledgeBuilder | None, _Progress]:
    fix = f"Delete {path} to start the build again from the first TSV row."
    try:
        with np.load(path, allow_pickle=False) as stored:
            fields = {name: stored[name] for name in stored.files}
        meta = json.loads(str(fields["meta"][()]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataFormatError(f"{path}: unreadable checkpoint ({error}). {fix}") from error
    if meta.get("version") != CHECKPOINT_VERSION or meta.get("fingerprint") != fingerprint:
        raise DataFormatError(f"{path}: checkpoint of other inputs or settings. {fix}")

    builder = None
    if "builder" in meta:
        state = dict(meta["builder"])
        for name in ("sums", "counts", "roles", "random"):
            state[name] = fields[name]
        builder = KnowledgeBuilder.from_state(state)
    progress = _Progress(
        offset=int(meta["offset"]),
        line=int(meta["line"]),
        rows=int(meta["rows"]),
        counters=Counter(meta["counters"]),
        seen_images=set(fields["seen_images"].tolist()),
    )
    return builder, progress


# ----------------------------------------------------------------------------- the build


def _check_settings(region_boxes: str, chunk_rows: int, iou_threshold: float, tolerance: float):
    if region_boxes not in REGION_BOXES:
        raise ValueError(f"region_boxes is {region_boxes!r}; use one of {REGION_BOXES}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(
            f"chunk_rows must be a positive int (TSV rows per checkpoint), got {chunk_rows!r}"
        )
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    if not tolerance >= 0.0:
        raise ValueError(f"box_tolerance must be >= 0 pixels, got {tolerance!r}")


def build_from_vg(
    annotations_json: str | os.PathLike,
    features_tsv: str | os.PathLike,
    *,
    region_cap: int | None = None,
    seed: int = 0,
    use_attributes: bool = True,
    region_boxes: str = ANNOTATED,
    box_tolerance: float = 1.0,
    iou_threshold: float = 0.5,
    encoder: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    parallel: bool | None = None,
    progress: bool = True,
) -> tuple[Knowledge, BuildReport]:
    """Build the pretrained knowledge (eq. 1) from VG annotations and a bottom-up TSV.

    annotations_json: VG objects.json or attributes.json (names and attributes in one file).
    features_tsv: bottom-up TSV, one row per image; rows of images without kept regions are skipped.
    region_cap: at most this many regions per word (None keeps all); seed draws the sample and
    the random region per word. region_boxes: ANNOTATED (route a) or DETECTED (route b), see the
    module docstring. encoder: a name stored in the provenance (e.g. "bottom-up ResNet-101").
    checkpoint_dir / chunk_rows: save progress every chunk_rows TSV rows and resume from it.
    parallel: read the annotations in a second (forked) process while this one reads up to
    READ_AHEAD_BYTES (512 MiB) of TSV features ahead, which raises the memory peak by as much.
    The result is the same, with or without checkpoints. None does so on Linux, where fork is
    the default start method, when the TSV has PARALLEL_MIN_BYTES (64 MiB) or more. True where
    fork is missing (Windows) logs a warning and reads the annotations first.
    Returns the knowledge and a BuildReport. Raises ValueError when no region gets a feature.
    """
    started = time.perf_counter()
    annotations_json, features_tsv = Path(annotations_json), Path(features_tsv)
    _check_settings(region_boxes, chunk_rows, iou_threshold, box_tolerance)
    for path in (annotations_json, features_tsv):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found. Check the path (see docs/data.md).")
    settings = {
        "region_cap": region_cap, "seed": seed, "use_attributes": use_attributes,
        "region_boxes": region_boxes, "box_tolerance": box_tolerance,
        "iou_threshold": iou_threshold, "encoder": encoder, "chunk_rows": chunk_rows,
    }  # fmt: skip
    report = BuildReport(str(annotations_json), str(features_tsv), region_boxes, region_cap, seed)
    checkpoint = None
    if checkpoint_dir is not None:
        fingerprint = _fingerprint(annotations_json, features_tsv, settings)
        checkpoint = (Path(checkpoint_dir) / f"vg-knowledge-{fingerprint[:16]}.npz", fingerprint)
    builder, state = _start(checkpoint, report)

    dim = builder.dim if builder is not None else None
    rows = iter_bottomup_tsv(
        features_tsv, dim, offset=state.offset, line=state.line, progress=progress
    )
    with contextlib.closing(rows):
        options = {"region_cap": region_cap, "seed": seed, "use_attributes": use_attributes}
        if parallel is None:
            # Only on Linux: the multiprocessing docs call fork unsafe on macOS (the child may crash).
            parallel = sys.platform.startswith("linux") and (
                features_tsv.stat().st_size >= PARALLEL_MIN_BYTES
            )
        elif parallel and not _can_fork():
            logger.warning(
                "parallel=True needs the fork start method, so annotations are read first"
            )
            parallel = False
        if parallel:
            by_image, types, ahead = _kept_regions_while_reading(
                annotations_json, report, rows, options
            )
        else:
            by_image, types = _kept_regions(annotations_json, report, progress=progress, **options)
            ahead = []
        provenance = {
            "source": "visual_genome", "annotations": annotations_json.name,
            "features": features_tsv.name, "share_kept": report.share_kept, **settings,
        }  # fmt: skip
        provenance.pop("chunk_rows")
        builder = _add_rows(
            itertools.chain(ahead, rows), by_image, types, builder, state, report, provenance,
            checkpoint, region_boxes=region_boxes, tolerance=box_tolerance,
            iou_threshold=iou_threshold, chunk_rows=chunk_rows,
        )  # fmt: skip
    knowledge = _finish(builder, state, by_image, report)
    if checkpoint is not None:
        checkpoint[0].unlink(missing_ok=True)
        logger.info("build finished, removed checkpoint %s", checkpoint[0])
    report.seconds = time.perf_counter() - started
    return knowledge, report


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _kept_regions_while_reading(
    annotations_json: Path,
    report: BuildReport,
    rows: Iterator[BottomUpRow],
    options: dict[str, Any],
) -> tuple[dict[int, _ImageRegions], dict[str, str], list[BottomUpRow]]:
    """Run _kept_regions in a forked process while reading TSV rows ahead here.

    Both steps hold Python's global interpreter lock (GIL), so only a second process overlaps them. Reading ahead
    stops when the annotations are ready or READ_AHEAD_BYTES of features are read. Returns the
    kept regions, the word types and the rows read ahead, and adds the annotation steps to
    `report`.
    Raises the child's error as it was raised there.
    """
    logger.info("reading %s in a second process, and the TSV ahead here", annotations_json)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_send_kept_regions, args=(send, annotations_json, report, options), daemon=True
    )
    with warnings.catch_warnings():
        # The child runs only Python and NumPy code, none of the thread pools that make forking
        # a threaded process unsafe.
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        child.start()
    send.close()
    ahead: list[BottomUpRow] = []
    ahead_bytes = 0
    try:
        while ahead_bytes < READ_AHEAD_BYTES and not receive.poll():
            row = next(rows, None)
            if row is None:
                break
            ahead.append(row)
            ahead_bytes += row.features.nbytes
        try:
            kind, payload = receive.recv()
        except EOFError:
            raise RuntimeError(
                f"{annotations_json}: the process reading the annotations stopped with exit code "
                f"{child.exitcode}; run build_from_vg with parallel=False to see the error here"
            ) from None
    except BaseException:
        child.terminate()
        raise
    finally:
        child.join()
    if kind == "error":
        raise payload
    by_image, types, parts = payload
    report.steps[:0] = parts["steps"]
    report.cleaning, report.share_kept = parts["cleaning"], parts["share_kept"]
    report.counters.update(parts["counters"])
    return by_image, types, ahead


def _send_kept_regions(send, annotations_json: Path, report: BuildReport, options) -> None:
    """Child process of _kept_regions_while_reading: send ("result", ...) or ("error", error)."""
    try:
        by_image, types = _kept_regions(annotations_json, report, progress=False, **options)
        parts = {
            "steps": report.steps,
            "cleaning": report.cleaning,
            "share_kept": report.share_kept,
            "counters": report.counters,
        }
        send.send(("result", (by_image, types, parts)))
    except Exception as error:
        try:
            pickle.dumps(error)
        except Exception:
            error = RuntimeError(f"{type(error).__name__}: {error}")
        send.send(("error", error))
    finally:
        send.close()


def _start(
    checkpoint: tuple[Path, str] | None, report: BuildReport
) -> tuple[KnowledgeBuilder | None, _Progress]:
    if checkpoint is None or not checkpoint[0].is_file():
        return None, _Progress()
    builder, state = _load_checkpoint(*checkpoint)
    report.resumed_from_row = state.rows
    logger.info(
        "resuming from checkpoint %s: %d TSV rows done, next row at line %d (byte offset %d)",
        checkpoint[0], state.rows, state.line, state.offset,
    )  # fmt: skip
    return builder, state


def _add_rows(
    rows: Iterable[BottomUpRow],
    by_image: Mapping[int, _ImageRegions],
    types: Mapping[str, str],
    builder: KnowledgeBuilder | None,
    state: _Progress,
    report: BuildReport,
    provenance: dict[str, Any],
    checkpoint: tuple[Path, str] | None,
    *,
    region_boxes: str,
    tolerance: float,
    iou_threshold: float,
    chunk_rows: int,
) -> KnowledgeBuilder | None:
    """Add each TSV row's matched regions to the builder, checkpointing every chunk_rows rows."""
    pending = _PendingRegions()
    for row in rows:
        state.counters["tsv_rows"] += 1
        regions = by_image.get(row.image_id)
        if row.image_id in state.seen_images:
            state.counters["tsv_rows_repeated"] += 1
        elif regions is None:
            state.counters["tsv_rows_without_regions"] += 1
        else:
            state.seen_images.add(row.image_id)
            if region_boxes == ANNOTATED:
                unmatched = state.counters["regions_unmatched"]
                batch = _annotated_batch(regions, row, types, tolerance, unmatched)
            else:
                batch = _detected_batch(regions, row, types, iou_threshold)
            words, features, word_types, match_counts = batch
            state.counters.update(match_counts)
            if builder is None and row.num_boxes:
                builder = KnowledgeBuilder(
                    row.features.shape[1], seed=report.seed, provenance=provenance
                )
            if words:
                pending.append(words, features, word_types)
                state.counters["feature_rows_added"] += len(words)
                if len(pending) >= ADD_BATCH_ROWS:
                    pending.flush(builder)

        state.rows += 1
        state.offset, state.line = row.next_offset, row.line + 1
        if checkpoint is not None and state.rows % chunk_rows == 0:
            pending.flush(builder)
            _save_checkpoint(checkpoint[0], checkpoint[1], builder, state)
            report.checkpoints_written += 1
    pending.flush(builder)
    return builder


class _PendingRegions:
    """Labelled region rows waiting for one KnowledgeBuilder.add call.

    One call per ADD_BATCH_ROWS rows instead of one per image (about 70 rows) spreads the fixed
    cost of a call. Rows are flushed in TSV order, and before every checkpoint, so a resumed build
    makes the same calls as an uninterrupted one.
    """

    def __init__(self) -> None:
        self.words: list[str] = []
        self.types: list[str] = []
        self.features: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.words)

    def append(self, words: Sequence[str], features: np.ndarray, types: Sequence[str]) -> None:
        self.words.extend(words)
        self.types.extend(types)
        self.features.append(features)

    def flush(self, builder: KnowledgeBuilder | None) -> None:
        if self.words:
            builder.add(self.words, np.concatenate(self.features), self.types)
            self.words, self.types, self.features = [], [], []


def _finish(
    builder: KnowledgeBuilder | None,
    state: _Progress,
    by_image: Mapping[int, _ImageRegions],
    report: BuildReport,
) -> Knowledge:
    missing = [image_id for image_id in by_image if image_id not in state.seen_images]
    state.counters["images_without_features"] = len(missing)
    if missing:
        logger.warning(
            "%d of %d images with kept regions have no TSV row, e.g. image_id %s",
            len(missing), len(by_image), missing[:5],
        )  # fmt: skip
    report.counters.update(state.counters)
    if builder is None or not state.counters["feature_rows_added"]:
        raise ValueError(
            f"no region of {report.annotations_path} got a feature from {report.features_path} "
            f"(counters: {dict(state.counters)}). Check that the TSV belongs to these annotations "
            f"and that region_boxes={report.region_boxes!r} describes its boxes."
        )

    knowledge = builder.build()
    regions_used = report.counters.get("regions_matched_by_box", 0) + report.counters.get(
        "regions_matched_by_order", 0
    )
    _step(
        report,
        "with features",
        len(knowledge),
        regions_used or report.counters.get("detections_with_words", 0),
        int(knowledge.counts.sum()),
    )
    logger.info("%.1f %% of the kept annotations got a feature row", 100 * report.matched_share)
    return knowledge


# ----------------------------------------------------------------------------- route (a) features


def find_vg_image(vg_images_dir: str | os.PathLike, image_id: int) -> Path:
    """Return the path of VG image `image_id`: <id>.jpg in the folder, VG_100K/ or VG_100K_2/."""
    root = Path(vg_images_dir)
    candidates = [root / f"{image_id}.jpg"]
    candidates += [root / folder / f"{image_id}.jpg" for folder in ("VG_100K", "VG_100K_2")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Visual Genome image {image_id} not found: looked for {', '.join(map(str, candidates))}. "
        "Unzip images.zip and images2.zip of Visual Genome 1.2 into that folder."
    )


def _objects_by_image(objects: Iterable[VGObject]) -> Iterator[tuple[int, list[VGObject]]]:
    """Group consecutive objects by image (iter_vg_objects yields one image record at a time)."""
    image_id: int | None = None
    group: list[VGObject] = []
    for obj in objects:
        if obj.image_id != image_id and group:
            yield image_id, group
            group = []
        image_id = obj.image_id
        group.append(obj)
    if group:
        yield image_id, group


def extract_vg_features(
    vg_images_dir: str | os.PathLike,
    objects_json: str | os.PathLike,
    encoder: RegionEncoder,
    out_tsv: str | os.PathLike,
    *,
    image_ids: Collection[int] | None = None,
    progress: bool = True,
) -> int:
    """Write a bottom-up TSV with `encoder`'s feature of every annotated VG box (route a).

    Each row lists the image's objects in file order with their own boxes x, y, x + w, y + h
    (not clipped), so build_from_vg matches them by box equality. The encoder gets each box
    clipped to the image. A box entirely outside its image is left out and counted in the log.
    image_ids: only these images (for a shard or a test). Returns the number of rows written.
    NOTE: the TSV is written in one atomic step, so an interrupted extraction starts again from
    the first image. For the full 108,000 images, extract shards with image_ids and concatenate.
    """
    selected = None if image_ids is None else set(image_ids)
    skipped = Counter()

    def rows() -> Iterator[dict[str, Any]]:
        objects = iter_vg_objects(objects_json, progress=False)
        for image_id, group in _objects_by_image(objects):
            if selected is not None and image_id not in selected:
                continue
            image = load_rgb(find_vg_image(vg_images_dir, image_id))
            boxes = np.array([(o.box[0], o.box[1], o.box[0] + o.box[2], o.box[1] + o.box[3])
                              for o in group], dtype=np.float64).reshape(-1, 4)  # fmt: skip
            inside = (boxes[:, 0] < image.width) & (boxes[:, 1] < image.height)
            inside &= (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
            skipped["boxes_outside_image"] += int((~inside).sum())
            features = encoder.encode(image, boxes[inside])
            yield {"image_id": image_id, "image_w": image.width, "image_h": image.height,
                   "boxes": boxes[inside], "features": features}  # fmt: skip

    count = write_bottomup_tsv(out_tsv, rows(), progress=progress)
    logger.info(
        "extracted features of %d VG images into %s (%d boxes outside their image left out)",
        count, out_tsv, skipped["boxes_outside_image"],
    )  # fmt: skip
    return count
