"""Tests of mack.vgknowledge: eq. 1 built from VG JSON + a bottom-up TSV, checked by brute force."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mack import vgknowledge
from mack.data import DataFormatError
from mack.data.bottomup import iter_bottomup_tsv, write_bottomup_tsv
from mack.data.vg import clean_attribute, clean_object_name
from mack.encoders import RegionEncoder, check_boxes, load_rgb
from mack.knowledge import ATTRIBUTE, OBJECT, KnowledgeBuilder, cap_annotations
from mack.synthetic import generate
from mack.vgknowledge import (
    DETECTED,
    _ImageRegions,
    build_from_vg,
    extract_vg_features,
    match_annotated_boxes,
)

from helpers import needs_real_data, vg_samples

DIM = 6


# ----------------------------------------------------------------------------- brute force


def records_of(path: Path) -> list[dict]:
    """Read a VG objects/attributes file whole with the json module."""
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else [data]


def brute_force_regions(path: Path) -> tuple[dict, dict]:
    """Return word -> [(image_id, object_id)] and word -> type, with plain loops over the JSON.

    The rules are those documented by mack.data.vg.word_regions. Boxes under 1 pixel and repeated
    ids are skipped. Names are cleaned as objects and attributes as attributes, and a word counts
    once per box, in its first role. The type is the role with more annotations (a tie gives
    object).
    """
    annotations: dict[str, list] = defaultdict(list)
    roles: dict[str, dict[str, int]] = defaultdict(lambda: {OBJECT: 0, ATTRIBUTE: 0})
    seen = set()
    for record in records_of(path):
        image_id = record.get("image_id", record.get("id"))
        for obj in record.get("objects", record.get("attributes", [])):
            key = (image_id, obj["object_id"])
            if obj["w"] < 1 or obj["h"] < 1 or key in seen:
                continue
            words: dict[str, str] = {}
            for name in obj["names"]:
                word = clean_object_name(name)
                if word and word not in words:
                    words[word] = OBJECT
            for attribute in obj.get("attributes") or []:
                word = clean_attribute(attribute)
                if word and word not in words:
                    words[word] = ATTRIBUTE
            if not words:
                continue
            seen.add(key)
            for word, role in words.items():
                annotations[word].append(key)
                roles[word][role] += 1
    types = {w: ATTRIBUTE if r[ATTRIBUTE] > r[OBJECT] else OBJECT for w, r in roles.items()}
    return dict(annotations), types


def brute_force_means(annotations: dict, feature_of: dict) -> dict[str, np.ndarray]:
    """Return word -> float64 mean of its regions' features, summed one region at a time."""
    means = {}
    for word, keys in annotations.items():
        total = np.zeros(len(next(iter(feature_of.values()))), dtype=np.float64)
        for key in keys:
            total += feature_of[key]
        means[word] = total / len(keys)
    return means


def write_fake_tsv(path: Path, records: list[dict], seed: int, dim: int = DIM, order=None) -> dict:
    """Write one row per image with every object's box (x1y1x2y2) and a random feature.

    order: optional function (n) -> permutation of the rows; then equal boxes of an image get equal
    features, as from a real encoder, because a shuffled row can only be found by its box.
    Returns (image_id, object_id) -> feature of the object's first occurrence.
    """
    rng = np.random.default_rng(seed)
    feature_of = {}
    rows = []
    for record in records:
        image_id = record.get("image_id", record.get("id"))
        objects = record.get("objects", record.get("attributes", []))
        boxes = np.array([(o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]) for o in objects])
        features = rng.normal(size=(len(objects), dim)).astype(np.float32)
        if order is not None:
            first_of_box = {}
            for position, box in enumerate(map(tuple, boxes)):
                features[position] = features[first_of_box.setdefault(box, position)]
        for obj, feature in zip(objects, features, strict=True):
            feature_of.setdefault((image_id, obj["object_id"]), feature.astype(np.float64))
        permutation = order(len(objects)) if order else np.arange(len(objects))
        rows.append(
            {"image_id": image_id, "image_w": 2000, "image_h": 2000,
             "boxes": boxes.reshape(-1, 4)[permutation], "features": features[permutation]}
        )  # fmt: skip
    write_bottomup_tsv(path, rows)
    return feature_of


def assert_matches_brute_force(knowledge, means, counts, types) -> None:
    assert sorted(knowledge.words) == sorted(means)
    for row, word in enumerate(knowledge.words):
        np.testing.assert_allclose(knowledge.prototypes[row], means[word], rtol=1e-5, atol=1e-6)
        assert knowledge.counts[row] == counts[word], word
        assert knowledge.types[row] == types[word], word


# ----------------------------------------------------------------------------- real VG samples


@needs_real_data
def test_real_samples_equal_brute_force(tmp_path: Path) -> None:
    path = vg_samples() / "minyus_attributes.json_samples.json"
    feature_of = write_fake_tsv(tmp_path / "features.tsv", records_of(path), seed=1)
    annotations, types = brute_force_regions(path)

    knowledge, report = build_from_vg(path, tmp_path / "features.tsv", progress=False)

    means = brute_force_means(annotations, feature_of)
    counts = {word: len(keys) for word, keys in annotations.items()}
    assert_matches_brute_force(knowledge, means, counts, types)
    assert report.counters["regions_matched_by_box"] == len(
        {k for v in annotations.values() for k in v}
    )
    assert report.counters.get("regions_unmatched", 0) == 0
    assert report.matched_share == 1.0
    assert report.share_kept == 1.0
    assert [step["step"] for step in report.steps] == ["read", "cleaned", "capped", "with features"]
    assert knowledge.provenance["region_cap"] is None
    assert knowledge.random_regions is not None


@needs_real_data
def test_real_samples_shuffled_rows_match_by_box(tmp_path: Path) -> None:
    """Rows in another order than the objects still find their box (rule 1)."""
    path = vg_samples() / "minyus_objects.json_samples.json"
    rng = np.random.default_rng(5)
    feature_of = write_fake_tsv(
        tmp_path / "features.tsv", records_of(path), seed=2, order=rng.permutation
    )
    annotations, types = brute_force_regions(path)

    knowledge, report = build_from_vg(path, tmp_path / "features.tsv", progress=False)

    means = brute_force_means(annotations, feature_of)
    counts = {word: len(keys) for word, keys in annotations.items()}
    assert_matches_brute_force(knowledge, means, counts, types)
    assert report.counters.get("regions_matched_by_order", 0) == 0


@needs_real_data
def test_real_samples_region_cap(tmp_path: Path) -> None:
    path = vg_samples() / "minyus_attributes.json_samples.json"
    feature_of = write_fake_tsv(tmp_path / "features.tsv", records_of(path), seed=3)
    annotations, types = brute_force_regions(path)
    kept, share = cap_annotations(annotations, 5, seed=7)

    knowledge, report = build_from_vg(
        path, tmp_path / "features.tsv", region_cap=5, seed=7, progress=False
    )

    means = brute_force_means(kept, feature_of)
    counts = {word: len(keys) for word, keys in kept.items()}
    assert_matches_brute_force(knowledge, means, counts, types)
    assert knowledge.counts.max() == 5
    n_all = sum(len(keys) for keys in annotations.values())
    assert report.share_kept == pytest.approx(sum(counts.values()) / n_all)
    assert report.share_kept == share < 1.0
    assert knowledge.provenance["share_kept"] == share


@needs_real_data
def test_real_samples_without_attributes(tmp_path: Path) -> None:
    path = vg_samples() / "minyus_attributes.json_samples.json"
    write_fake_tsv(tmp_path / "features.tsv", records_of(path), seed=4)

    knowledge, _ = build_from_vg(
        path, tmp_path / "features.tsv", use_attributes=False, progress=False
    )

    assert knowledge.attributes() == set()
    assert "tall" not in knowledge.index  # an attribute of the first object
    assert "clock" in knowledge.index


# ----------------------------------------------------------------------------- synthetic world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("world"), size="tiny", dim=16, progress=False)


def tsv_features(path: Path) -> dict:
    """Return image_id -> (boxes, features) read back from a TSV."""
    return {
        row.image_id: (row.boxes, row.features) for row in iter_bottomup_tsv(path, progress=False)
    }


def test_synthetic_world_equals_brute_force(world: Path) -> None:
    vg = world / "vg"
    rows = tsv_features(vg / "features.tsv")
    feature_of = {}
    for record in records_of(vg / "objects.json"):
        _, features = rows[record["image_id"]]
        for position, obj in enumerate(record["objects"]):
            feature_of[(record["image_id"], obj["object_id"])] = features[position].astype(
                np.float64
            )
    annotations, types = brute_force_regions(vg / "attributes.json")

    knowledge, report = build_from_vg(vg / "attributes.json", vg / "features.tsv", progress=False)

    means = brute_force_means(annotations, feature_of)
    counts = {word: len(keys) for word, keys in annotations.items()}
    assert_matches_brute_force(knowledge, means, counts, types)
    assert knowledge.dim == 16
    assert report.matched_share == 1.0


def brute_force_iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_synthetic_detections_route_b(world: Path, tmp_path: Path) -> None:
    """Route (b): jittered and random detections take words by IoU >= threshold."""
    vg = world / "vg"
    rng = np.random.default_rng(11)
    annotations, types = brute_force_regions(vg / "attributes.json")
    words_of = defaultdict(list)
    for word, keys in annotations.items():
        for key in keys:
            words_of[key].append(word)

    rows, expected = [], defaultdict(list)
    matched = 0
    for record in records_of(vg / "attributes.json"):
        image_id = record["image_id"]
        gt = [(o["object_id"], (o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]))
              for o in record["attributes"]]  # fmt: skip
        jitter = np.array([box for _, box in gt], dtype=np.float64) + rng.uniform(
            -8, 8, (len(gt), 4)
        )
        random_boxes = rng.uniform(0, 300, (4, 2))
        random_boxes = np.hstack([random_boxes, random_boxes + rng.uniform(5, 200, (4, 2))])
        detections = np.vstack([jitter, random_boxes]).astype(np.float32)
        detections[:, 2:] = np.maximum(detections[:, 2:], detections[:, :2])
        features = rng.normal(size=(len(detections), DIM)).astype(np.float32)
        rows.append({"image_id": image_id, "image_w": 1500, "image_h": 1500,
                     "boxes": detections, "features": features})  # fmt: skip
        for object_id, box in gt:
            words = words_of[(image_id, object_id)]
            hits = [d for d, det in enumerate(detections) if brute_force_iou(box, det) >= 0.6]
            matched += len(words) if hits else 0
        for d, det in enumerate(detections):
            detection_words = []
            for object_id, box in gt:
                if brute_force_iou(box, det) >= 0.6:
                    for word in words_of[(image_id, object_id)]:
                        if word not in detection_words:
                            detection_words.append(word)
            for word in detection_words:
                expected[word].append(features[d].astype(np.float64))
    write_bottomup_tsv(tmp_path / "detections.tsv", rows)

    knowledge, report = build_from_vg(
        vg / "attributes.json", tmp_path / "detections.tsv",
        region_boxes=DETECTED, iou_threshold=0.6, progress=False,
    )  # fmt: skip

    means = {word: np.mean(features, axis=0) for word, features in expected.items()}
    counts = {word: len(features) for word, features in expected.items()}
    assert_matches_brute_force(knowledge, means, counts, types)
    total = sum(len(keys) for keys in annotations.values())
    assert report.counters["annotations_matched"] == matched
    assert report.matched_share == pytest.approx(matched / total)
    assert 0.3 < report.matched_share < 1.0
    assert knowledge.provenance["iou_threshold"] == 0.6


# ----------------------------------------------------------------------------- checkpoints


@needs_real_data
def test_interrupted_build_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    path = vg_samples() / "minyus_attributes.json_samples.json"
    write_fake_tsv(tmp_path / "features.tsv", records_of(path), seed=6)
    options = {"region_cap": 8, "seed": 3, "chunk_rows": 7, "progress": False}
    # Small add batches, so that rows are also added between checkpoints.
    monkeypatch.setattr(vgknowledge, "ADD_BATCH_ROWS", 10)
    reference, reference_report = build_from_vg(path, tmp_path / "features.tsv", **options)

    original_add = KnowledgeBuilder.add
    original_save = vgknowledge._save_checkpoint
    saved = {"n": 0}

    def counting_save(*args, **kwargs):
        saved["n"] += 1
        return original_save(*args, **kwargs)

    def failing_add(self, *args, **kwargs):
        if saved["n"] == 5:
            raise KeyboardInterrupt("simulated interruption")
        return original_add(self, *args, **kwargs)

    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setattr(KnowledgeBuilder, "add", failing_add)
    monkeypatch.setattr(vgknowledge, "_save_checkpoint", counting_save)
    with pytest.raises(KeyboardInterrupt):  # annotations read in a second process here
        build_from_vg(
            path, tmp_path / "features.tsv", checkpoint_dir=checkpoints, parallel=True, **options
        )
    monkeypatch.setattr(KnowledgeBuilder, "add", original_add)
    monkeypatch.setattr(vgknowledge, "_save_checkpoint", original_save)
    assert len(list(checkpoints.glob("*.npz"))) == 1

    resumed, report = build_from_vg(
        path, tmp_path / "features.tsv", checkpoint_dir=checkpoints, **options
    )

    assert report.resumed_from_row == 35  # 5 chunks of 7 rows were checkpointed
    assert resumed.words == reference.words
    assert resumed.types == reference.types
    assert np.array_equal(resumed.prototypes, reference.prototypes)
    assert np.array_equal(resumed.counts, reference.counts)
    assert np.array_equal(resumed.random_regions, reference.random_regions)
    assert resumed.provenance == reference.provenance
    assert report.counters == reference_report.counters
    assert list(checkpoints.glob("*.npz")) == []


@needs_real_data
@pytest.mark.parametrize("read_ahead", [10**9, 1])
def test_parallel_build_equals_sequential(tmp_path: Path, monkeypatch, read_ahead: int) -> None:
    """Annotations read in a second process, the TSV read ahead all or one row: the same result."""
    monkeypatch.setattr(vgknowledge, "READ_AHEAD_BYTES", read_ahead)
    path = vg_samples() / "minyus_attributes.json_samples.json"
    write_fake_tsv(tmp_path / "features.tsv", records_of(path), seed=6)
    options = {"region_cap": 8, "seed": 3, "progress": False}

    sequential, sequential_report = build_from_vg(
        path, tmp_path / "features.tsv", parallel=False, **options
    )
    parallel, parallel_report = build_from_vg(
        path, tmp_path / "features.tsv", parallel=True, **options
    )

    assert parallel.words == sequential.words
    assert np.array_equal(parallel.prototypes, sequential.prototypes)
    assert np.array_equal(parallel.random_regions, sequential.random_regions)
    assert parallel.provenance == sequential.provenance
    parallel_report.seconds = sequential_report.seconds
    assert parallel_report == sequential_report


@needs_real_data
def test_checkpoint_of_other_settings_not_used(tmp_path: Path, monkeypatch) -> None:
    path = vg_samples() / "minyus_attributes.json_samples.json"
    write_fake_tsv(tmp_path / "features.tsv", records_of(path), seed=6)
    original_add = KnowledgeBuilder.add

    calls = {"n": 0}

    def failing_add(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # one add per chunk of 5 rows: 4 checkpoints are written first
            raise RuntimeError("stop")
        return original_add(self, *args, **kwargs)

    monkeypatch.setattr(KnowledgeBuilder, "add", failing_add)
    with pytest.raises(RuntimeError):
        build_from_vg(path, tmp_path / "features.tsv", checkpoint_dir=tmp_path, chunk_rows=5,
                      progress=False)  # fmt: skip
    monkeypatch.setattr(KnowledgeBuilder, "add", original_add)

    _, report = build_from_vg(
        path, tmp_path / "features.tsv", checkpoint_dir=tmp_path, chunk_rows=5, seed=1,
        progress=False,
    )  # fmt: skip

    assert report.resumed_from_row is None
    assert len(list(tmp_path.glob("vg-knowledge-*.npz"))) == 1  # the seed-0 one is kept


@needs_real_data
def test_corrupt_checkpoint_named(tmp_path: Path) -> None:
    path = vg_samples() / "minyus_attributes.json_samples.json"
    write_fake_tsv(tmp_path / "features.tsv", records_of(path), seed=6)
    build_from_vg(path, tmp_path / "features.tsv", checkpoint_dir=tmp_path, progress=False)
    # Find the checkpoint name by writing one, then corrupt it.
    fingerprint = vgknowledge._fingerprint(
        path, tmp_path / "features.tsv",
        {"region_cap": None, "seed": 0, "use_attributes": True, "region_boxes": "annotated",
         "box_tolerance": 1.0, "iou_threshold": 0.5, "encoder": None, "chunk_rows": 10_000},
    )  # fmt: skip
    checkpoint = tmp_path / f"vg-knowledge-{fingerprint[:16]}.npz"
    checkpoint.write_bytes(b"PK\x03\x04 not a zip")

    with pytest.raises(DataFormatError) as caught:
        build_from_vg(path, tmp_path / "features.tsv", checkpoint_dir=tmp_path, progress=False)

    assert str(checkpoint) in str(caught.value)
    assert "Delete" in str(caught.value)


# ----------------------------------------------------------------------------- matching rule


def image_regions(boxes, positions, n_objects) -> _ImageRegions:
    return _ImageRegions(
        object_ids=list(range(len(boxes))),
        boxes=np.array(boxes, dtype=np.float64),
        words=[["w"]] * len(boxes),
        positions=np.asarray(positions, dtype=np.int64),
        n_objects=n_objects,
    )


def test_match_by_box_with_tolerance() -> None:
    regions = image_regions([(0, 0, 10, 10), (5, 5, 20, 20)], positions=[0, 1], n_objects=2)
    tsv = np.array([(5, 5, 19, 19), (0.4, 0, 9, 10)], dtype=np.float32)  # x2 = x + w - 1 style

    rows, how = match_annotated_boxes(regions, tsv, box_tolerance=1.0)

    assert rows.tolist() == [1, 0]
    assert how["regions_matched_by_box"] == 2


def test_match_closest_box_wins() -> None:
    """VG has boxes 1 pixel apart: each region takes the nearest row, not the first in tolerance."""
    regions = image_regions([(0, 0, 10, 10), (1, 0, 11, 10)], positions=[0, 1], n_objects=2)
    tsv = np.array([(1, 0, 11, 10), (0, 0, 10, 10)], dtype=np.float32)

    rows, _ = match_annotated_boxes(regions, tsv, box_tolerance=1.0)

    assert rows.tolist() == [1, 0]


def test_match_duplicate_boxes_prefers_own_position() -> None:
    regions = image_regions([(0, 0, 10, 10), (0, 0, 10, 10)], positions=[0, 2], n_objects=3)
    tsv = np.array([(0, 0, 10, 10), (50, 50, 60, 60), (0, 0, 10, 10)], dtype=np.float32)

    rows, _ = match_annotated_boxes(regions, tsv, box_tolerance=0.0)

    assert rows.tolist() == [0, 2]


def test_match_falls_back_to_order_then_unmatched() -> None:
    regions = image_regions([(0, 0, 10, 10), (5, 5, 20, 20)], positions=[0, 2], n_objects=3)
    scaled = np.array([(0, 0, 5, 5), (1, 1, 2, 2), (2, 2, 10, 10)], dtype=np.float32)

    rows, how = match_annotated_boxes(regions, scaled, box_tolerance=1.0)
    assert rows.tolist() == [0, 2]
    assert how["regions_matched_by_order"] == 2

    rows, how = match_annotated_boxes(regions, scaled[:2], box_tolerance=1.0)
    assert rows.tolist() == [-1, -1]
    assert how["regions_unmatched"] == 2


def reference_match(boxes, positions, n_objects, tsv, tolerance) -> list[int]:
    """The matching rules of the module docstring, as a loop over regions and rows."""
    rows = []
    for box, position in zip(boxes, positions, strict=True):
        distances = [
            max(abs(float(a) - float(b)) for a, b in zip(box, row, strict=True)) for row in tsv
        ]
        within = [d for d in distances if d <= tolerance]
        if within:
            tied = [j for j, d in enumerate(distances) if d == min(within)]
            rows.append(position if position in tied else tied[0])
        else:
            rows.append(position if len(tsv) == n_objects else -1)
    return rows


@pytest.mark.parametrize("seed", range(40))
def test_match_equals_rule_loop(seed: int) -> None:
    """Exact own boxes (the fast path), duplicates, shifted boxes and short rows, against a loop."""
    rng = np.random.default_rng(seed)
    n_objects = int(rng.integers(1, 7))
    tsv = rng.integers(0, 20, size=(n_objects, 4)).astype(np.float32)
    if n_objects > 1 and rng.random() < 0.3:
        tsv[-1] = tsv[0]  # a duplicate box
    positions = np.flatnonzero(rng.random(n_objects) < 0.7)
    if positions.size == 0:
        positions = np.array([0])
    boxes = tsv[positions].astype(np.float64)
    if rng.random() < 0.5:  # shift some boxes, so the fast path does not apply
        boxes += rng.integers(-2, 3, size=boxes.shape) * (rng.random((len(boxes), 1)) < 0.5)
    if rng.random() < 0.2:
        tsv = tsv[: max(1, n_objects - 1)]  # a row with fewer boxes than objects
    regions = image_regions(boxes.tolist(), positions.tolist(), n_objects)

    rows, match_counts = match_annotated_boxes(regions, tsv, box_tolerance=1.0)

    expected = reference_match(boxes, positions.tolist(), n_objects, tsv, 1.0)
    assert rows.tolist() == expected
    assert sum(match_counts.values()) == len(positions)


# ----------------------------------------------------------------------------- malformed inputs


@needs_real_data
def test_truncated_annotations_named(tmp_path: Path) -> None:
    data = (vg_samples() / "minyus_attributes.json_samples.json").read_bytes()
    path = tmp_path / "attributes.json"
    path.write_bytes(data[: len(data) // 3])
    write_fake_tsv(
        tmp_path / "features.tsv", records_of(vg_samples() / "vadbeg_attributes.json"), 1
    )

    for parallel in (False, True):  # the same error when a second process reads the file
        with pytest.raises(DataFormatError) as caught:
            build_from_vg(path, tmp_path / "features.tsv", parallel=parallel, progress=False)

        message = str(caught.value)
        assert str(path) in message
        assert f"byte offset {len(data) // 3}" in message
        assert "ends in the middle of a value" in message


@needs_real_data
def test_malformed_tsv_row_named(tmp_path: Path) -> None:
    path = vg_samples() / "minyus_attributes.json_samples.json"
    write_fake_tsv(tmp_path / "features.tsv", records_of(path), seed=1)
    lines = (tmp_path / "features.tsv").read_bytes().split(b"\n")
    fields = lines[2].split(b"\t")
    fields[5] = fields[5][:-9] + b"!!!!!!!!!"  # invalid base64 in image 3's features
    lines[2] = b"\t".join(fields)
    (tmp_path / "broken.tsv").write_bytes(b"\n".join(lines))

    with pytest.raises(DataFormatError) as caught:
        build_from_vg(path, tmp_path / "broken.tsv", progress=False)

    message = str(caught.value)
    assert str(tmp_path / "broken.tsv") in message
    assert "line 3, image_id 3" in message
    assert '"features"' in message


@needs_real_data
def test_foreign_tsv_raises(tmp_path: Path) -> None:
    path = vg_samples() / "minyus_attributes.json_samples.json"
    write_bottomup_tsv(
        tmp_path / "other.tsv",
        [{"image_id": 999, "image_w": 10, "image_h": 10,
          "boxes": np.zeros((1, 4)), "features": np.ones((1, DIM))}],
    )  # fmt: skip

    with pytest.raises(ValueError, match="no region of .* got a feature"):
        build_from_vg(path, tmp_path / "other.tsv", progress=False)


def test_bad_settings_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[]")
    (tmp_path / "f.tsv").write_text("")
    with pytest.raises(ValueError, match="region_boxes"):
        build_from_vg(tmp_path / "a.json", tmp_path / "f.tsv", region_boxes="gt")
    with pytest.raises(ValueError, match="chunk_rows"):
        build_from_vg(tmp_path / "a.json", tmp_path / "f.tsv", chunk_rows=0)
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        build_from_vg(tmp_path / "a.json", tmp_path / "missing.tsv")


# ----------------------------------------------------------------------------- route (a) extraction


class MeanColourEncoder(RegionEncoder):
    """Mean R, G, B of the clipped box and its area: a deterministic stand-in for a CNN."""

    dim = 4

    def encode(self, image, boxes) -> np.ndarray:
        rgb = load_rgb(image)
        pixels = np.asarray(rgb, dtype=np.float64)
        clipped = check_boxes(boxes, rgb.width, rgb.height, "test")
        rows = []
        for x1, y1, x2, y2 in clipped:
            patch = pixels[int(y1) : max(int(y1) + 1, int(y2)), int(x1) : max(int(x1) + 1, int(x2))]
            rows.append([*patch.reshape(-1, 3).mean(axis=0), (x2 - x1) * (y2 - y1) / 1e4])
        return np.array(rows, dtype=np.float32).reshape(-1, self.dim)

    def settings(self) -> dict:
        return {"name": "mean colour"}


@needs_real_data
def test_extract_vg_features_then_build(tmp_path: Path) -> None:
    objects_json = vg_samples() / "minyus_attributes.json_samples.json"
    images = tmp_path / "images" / "VG_100K"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {1: (800, 600), 2: (800, 600), 3: (640, 480)}
    for image_id, (width, height) in sizes.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{image_id}.png")
        (images / f"{image_id}.png").rename(images / f"{image_id}.jpg")  # lossless content

    count = extract_vg_features(
        tmp_path / "images", objects_json, MeanColourEncoder(), tmp_path / "vg.tsv",
        image_ids={1, 2, 3}, progress=False,
    )  # fmt: skip
    knowledge, report = build_from_vg(objects_json, tmp_path / "vg.tsv", progress=False)

    assert count == 3
    encoder = MeanColourEncoder()
    feature_of = {}
    for record in records_of(objects_json)[:3]:
        image = images / f"{record['image_id']}.jpg"
        objects = record["attributes"]
        boxes = [[o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]] for o in objects]
        for obj, feature in zip(objects, encoder.encode(image, boxes), strict=True):
            feature_of[(record["image_id"], obj["object_id"])] = feature
    annotations, types = brute_force_regions(objects_json)
    annotations = {
        word: [key for key in keys if key[0] in sizes] for word, keys in annotations.items()
    }
    annotations = {word: keys for word, keys in annotations.items() if keys}
    means = brute_force_means(annotations, feature_of)
    counts = {word: len(keys) for word, keys in annotations.items()}
    types = {word: types[word] for word in annotations}
    assert_matches_brute_force(knowledge, means, counts, types)
    assert report.counters["images_without_features"] == 97
    assert report.counters["regions_matched_by_box"] == len(
        {key for keys in annotations.values() for key in keys}
    )


def test_extract_reports_missing_image(tmp_path: Path) -> None:
    path = tmp_path / "objects.json"
    path.write_text(json.dumps([{"image_id": 5, "objects": [
        {"object_id": 1, "x": 0, "y": 0, "w": 4, "h": 4, "names": ["dog"]}]}]))  # fmt: skip

    with pytest.raises(FileNotFoundError, match="Visual Genome image 5 not found"):
        extract_vg_features(tmp_path, path, MeanColourEncoder(), tmp_path / "out.tsv")


def test_match_empty_row_unmatched() -> None:
    regions = image_regions([(0, 0, 10, 10)], positions=[0], n_objects=1)

    rows, how = match_annotated_boxes(regions, np.zeros((0, 4), dtype=np.float32), 1.0)

    assert rows.tolist() == [-1]
    assert how["regions_unmatched"] == 1


def test_builder_state_round_trip() -> None:
    """A builder restored from state() continues exactly like the original, random draws too."""
    rng = np.random.default_rng(0)
    words = [f"word {i}" for i in rng.integers(0, 12, 300)]
    features = rng.normal(size=(300, 5)).astype(np.float32)
    types = [OBJECT if i % 3 else ATTRIBUTE for i in range(300)]
    whole = KnowledgeBuilder(5, seed=4)
    whole.add(words[:120], features[:120], types[:120])
    whole.add(words[120:], features[120:], types[120:])
    first = KnowledgeBuilder(5, seed=4)
    first.add(words[:120], features[:120], types[:120])

    state = json.loads(json.dumps({k: v for k, v in first.state().items() if k not in
                                   ("sums", "counts", "roles", "random")}))  # fmt: skip
    state.update({k: first.state()[k] for k in ("sums", "counts", "roles", "random")})
    resumed = KnowledgeBuilder.from_state(state)
    resumed.add(words[120:], features[120:], types[120:])

    expected, got = whole.build(), resumed.build()
    assert got.words == expected.words
    assert got.types == expected.types
    assert np.array_equal(got.prototypes, expected.prototypes)
    assert np.array_equal(got.random_regions, expected.random_regions)
    assert np.array_equal(got.counts, expected.counts)
