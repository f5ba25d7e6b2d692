"""Tests of mack.coco_mini: region layouts, knowledge from COCO boxes, test-set assembly, the
synonym file, the Markdown output, and (slow, real data) the whole pipeline."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mack import config
from mack.coco_mini import (
    DEFAULT_SYNONYMS,
    GRID_LAYOUT,
    REGION_SETTINGS,
    SynonymFileError,
    build_coco_knowledge,
    encode_val_regions,
    grid_boxes,
    gt_boxes,
    knowledge_regions,
    load_synonyms,
    load_val,
    markdown_table,
    results_markdown,
    row_specs,
    run,
    xywh_to_xyxy,
)
from mack.data.coco import CocoBox, CocoImage, CocoSet
from mack.encoders import FeatureCache, RegionEncoder

from helpers import needs_real_data


class BoxEncoder(RegionEncoder):
    """Stand-in encoder whose feature of a box is the box itself (x1, y1, x2, y2)."""

    dim = 4

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, image, boxes):
        self.calls += 1
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)

    def settings(self):
        return {"encoder": "box"}


def make_coco(tmp_path, captions_per_image=(5, 5)) -> CocoSet:
    """Build two images: image 1 has two dogs, a crowd of persons and a hot dog, image 2 a crowd."""
    images, boxes, captions = {}, {}, {}
    for image_id, size in ((1, (64, 48)), (2, (32, 32))):
        path = tmp_path / f"{image_id:012d}.png"
        Image.new("RGB", size, (image_id * 50, 0, 0)).save(path)
        images[image_id] = CocoImage(image_id, path.name, size[0], size[1], path)
    boxes[1] = [
        CocoBox(1, (2.0, 4.0, 10.0, 20.0), "dog", False, 11, 18),
        CocoBox(1, (0.0, 0.0, 30.0, 30.0), "person", True, 12, 1),
        CocoBox(1, (20.0, 10.0, 8.0, 6.0), "hot dog", False, 13, 58),
        CocoBox(1, (30.0, 20.0, 10.0, 10.0), "dog", False, 14, 18),
    ]
    boxes[2] = [CocoBox(2, (1.0, 1.0, 5.0, 5.0), "person", True, 21, 1)]
    for image_id, n_captions in zip(images, captions_per_image, strict=True):
        captions[image_id] = [f"caption {k} of image {image_id}" for k in range(n_captions)]
    categories = {1: "person", 18: "dog", 58: "hot dog"}
    return CocoSet(images, boxes, categories, captions)


# --- region layouts --------------------------------------------------------------------------


def test_grid_has_36_regions():
    assert sum(columns * rows for columns, rows in GRID_LAYOUT) == 36
    assert grid_boxes(640, 480).shape == (36, 4)


def test_grid_levels_tile_image():
    boxes = grid_boxes(640, 480)
    start = 0
    for columns, rows in GRID_LAYOUT:
        level = boxes[start : start + columns * rows]
        areas = (level[:, 2] - level[:, 0]) * (level[:, 3] - level[:, 1])
        assert areas.sum() == pytest.approx(640 * 480)
        np.testing.assert_allclose(areas, 640 * 480 / (columns * rows))
        start += columns * rows


def test_grid_cells_by_hand():
    boxes = grid_boxes(600, 300)
    np.testing.assert_allclose(boxes[0], [0, 0, 600, 300])  # whole image
    np.testing.assert_allclose(boxes[1], [0, 0, 300, 150])  # 2x2, top left
    np.testing.assert_allclose(boxes[4], [300, 150, 600, 300])  # 2x2, bottom right
    np.testing.assert_allclose(boxes[5 + 5], [400, 100, 600, 200])  # 3x3, middle row, right
    np.testing.assert_allclose(boxes[-1], [400, 150, 600, 300])  # 3 columns x 2 rows, last


def test_xywh_to_xyxy():
    assert xywh_to_xyxy((2.0, 4.0, 10.0, 20.0)) == (2.0, 4.0, 12.0, 24.0)


def test_gt_boxes_whole_image_first(tmp_path):
    coco = make_coco(tmp_path)
    boxes = gt_boxes(coco, 1)
    assert boxes.shape == (5, 4)
    np.testing.assert_allclose(boxes[0], [0, 0, 64, 48])
    np.testing.assert_allclose(boxes[1], [2, 4, 12, 24])
    np.testing.assert_allclose(boxes[2], [0, 0, 30, 30])  # crowd boxes stay image regions


# --- knowledge -------------------------------------------------------------------------------


def test_knowledge_regions_skip_crowd(tmp_path):
    coco = make_coco(tmp_path)
    items, words, n_crowd = knowledge_regions(coco)
    assert n_crowd == 2
    assert len(items) == 1  # image 2 has only a crowd box
    assert words == [["dog", "hot dog", "dog"]]
    np.testing.assert_allclose(items[0].boxes, [[2, 4, 12, 24], [20, 10, 28, 16], [30, 20, 40, 30]])
    assert items[0].key == "coco2017:1:64x48"


def test_knowledge_prototypes_are_box_means(tmp_path):
    coco = make_coco(tmp_path)
    knowledge, stats = build_coco_knowledge({"toy": coco}, BoxEncoder(), None, progress=False)

    assert knowledge.words == ["dog", "hot dog"]
    assert knowledge.types == ["object", "object"]
    np.testing.assert_allclose(knowledge.prototypes[0], [(2 + 30) / 2, 12, 26, 27])
    np.testing.assert_allclose(knowledge.prototypes[1], [20, 10, 28, 16])
    np.testing.assert_array_equal(knowledge.counts, [2, 1])
    assert stats == {"images": 1, "boxes": 3, "crowd_boxes_skipped": 2, "share_kept": 1.0}
    assert knowledge.provenance["encoder"] == {"encoder": "box"}
    assert knowledge.provenance["crowd_boxes_skipped"] == 2


def test_knowledge_region_cap_keeps_one_box_per_word(tmp_path):
    coco = make_coco(tmp_path)
    knowledge, stats = build_coco_knowledge(
        {"toy": coco}, BoxEncoder(), None, region_cap=1, seed=3, progress=False
    )

    np.testing.assert_array_equal(knowledge.counts, [1, 1])
    assert stats["share_kept"] == 2 / 3
    assert knowledge.provenance["region_cap"] == 1
    # the kept "dog" box is one of its two boxes, whole (x1, y1, x2, y2 of the toy encoder)
    dog_boxes = [[2, 4, 12, 24], [30, 20, 40, 30]]
    assert any(np.allclose(knowledge.prototypes[0], box) for box in dog_boxes)


# --- test set --------------------------------------------------------------------------------


def test_load_val_keeps_first_five_captions(tmp_path):
    coco = make_coco(tmp_path, captions_per_image=(6, 5))
    val = load_val(coco)
    assert val.image_ids == [1, 2]
    assert len(val.captions) == 10
    assert val.captions[4] == "caption 4 of image 1"
    assert val.captions[5] == "caption 0 of image 2"
    assert [len(b) for b in val.boxes["grid"]] == [36, 36]
    assert [len(b) for b in val.boxes["gt-boxes"]] == [5, 2]


def test_load_val_rejects_too_few_captions(tmp_path):
    coco = make_coco(tmp_path, captions_per_image=(5, 4))
    with pytest.raises(ValueError, match="image 2 .* has 4 captions"):
        load_val(coco)


def test_val_regions_split_by_setting(tmp_path):
    coco = make_coco(tmp_path)
    val = load_val(coco)
    encoder = BoxEncoder()
    cache = FeatureCache(tmp_path / "cache")

    regions = encode_val_regions(coco, val, encoder, cache, progress=False)
    again = encode_val_regions(coco, val, encoder, cache, progress=False)

    assert encoder.calls == 2  # one call per image for both settings, none on the second run
    for setting in REGION_SETTINGS:
        np.testing.assert_array_equal(regions[setting].counts, [len(b) for b in val.boxes[setting]])
        np.testing.assert_array_equal(regions[setting].features, again[setting].features)
        for position, boxes in enumerate(val.boxes[setting]):
            np.testing.assert_allclose(regions[setting].valid_regions(position), boxes)


def test_row_specs_both_settings():
    plain = row_specs(with_synonyms=False)
    assert len(plain) == 6
    assert {spec.regions for spec in plain} == set(REGION_SETTINGS)
    assert not any(spec.synonyms for spec in plain)
    with_synonyms = row_specs(with_synonyms=True)
    assert [spec.model for spec in with_synonyms[-2:]] == ["+ synonyms", "+ synonyms"]


# --- synonyms --------------------------------------------------------------------------------


def test_load_synonyms_reads_mapping(tmp_path):
    path = tmp_path / "synonyms.json"
    path.write_text(json.dumps({"description": "x", "synonyms": {"bike": "bicycle"}}))
    assert load_synonyms(path) == {"bike": "bicycle"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "invalid JSON"),
        ('{"bike": "bicycle"}', '"synonyms" object'),
        ('{"synonyms": {"bike": 3}}', "'bike' is 3"),
    ],
)
def test_load_synonyms_rejects_bad_file(tmp_path, content, message):
    path = tmp_path / "synonyms.json"
    path.write_text(content)
    with pytest.raises(SynonymFileError, match=message) as error:
        load_synonyms(path)
    assert str(path) in str(error.value)


def test_load_synonyms_missing_file(tmp_path):
    with pytest.raises(SynonymFileError, match="not found"):
        load_synonyms(tmp_path / "absent.json")


@needs_real_data
def test_shipped_synonyms_target_coco_categories():
    path = config.data_root() / "coco-mini" / "annotations" / "instances_val2017.json"
    names = {category["name"] for category in json.loads(path.read_text())["categories"]}
    synonyms = load_synonyms(DEFAULT_SYNONYMS)
    assert synonyms["man"] == "person"
    assert synonyms["sofa"] == "couch"
    assert set(synonyms.values()) <= names
    assert not set(synonyms) & names  # a category name never maps to another concept


# --- Markdown --------------------------------------------------------------------------------


def test_markdown_table_one_decimal():
    lines = markdown_table(["a", "b"], [["x", 1.25], ["y", 3]]).splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == ["a", "b"]
    assert [cell.strip() for cell in lines[2].strip("|").split("|")] == ["x", "1.2"]
    assert len(lines) == 4


def test_results_markdown_lists_rows_and_chance():
    recalls = {"r1": 1.0, "r5": 5.0, "r10": 10.0}
    result = {
        "encoder": {"method": "roi"},
        "rows": [
            {
                "model": "pretrained",
                "regions": "grid",
                "image_to_text": recalls,
                "text_to_image": recalls,
                "rsum": 32.0,
                "captions_without_known_word": 7,
            }
        ],
        "chance": {"image_to_text": recalls, "text_to_image": recalls, "rsum": 32.0},
        "counts": {
            "knowledge_concepts": 80,
            "knowledge_boxes": 3,
            "knowledge_images": 2,
            "knowledge_crowd_boxes_skipped": 1,
            "test_images": 79,
            "test_captions": 395,
        },
        "timings_seconds": {"total": 1.0},
        "peak_memory_mib": 100.0,
    }
    text = results_markdown(result)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()]
    assert ["pretrained", "grid", "1.0", "5.0", "10.0", "1.0", "5.0", "10.0", "32.0", "7"] in rows
    assert any(row[:2] == ["chance (random scores)", "-"] for row in rows)
    assert "Peak memory: 100 MiB" in text


# --- the whole pipeline on real data ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.real_data
@needs_real_data
def test_coco_mini_pipeline_cold(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # CPU time of this process, because other jobs on a shared machine stretch the wall time
        start = time.process_time()
        result = run(out=tmp_path, cache_dir=tmp_path / "cache", synonyms=DEFAULT_SYNONYMS)
        cpu_seconds = time.process_time() - start
        rerun = run(out=tmp_path / "rerun", cache_dir=tmp_path / "cache", progress=False)
    finally:
        torch.set_num_threads(threads)

    assert cpu_seconds < 300
    assert result["feature_cache"]["hits"] == 0
    rows = {(row["model"], row["regions"]): row for row in result["rows"]}
    chance_r1 = result["chance"]["text_to_image"]["r1"]
    assert rows["pretrained", "grid"]["text_to_image"]["r1"] >= 5 * chance_r1
    for setting in REGION_SETTINGS:
        random_region = rows["w/o region prototypes (random region)", setting]
        assert rows["pretrained", setting]["rsum"] > random_region["rsum"]
    assert result["counts"]["knowledge_concepts"] == 80
    assert result["counts"]["test_captions"] == 395
    assert (tmp_path / "coco_mini.json").is_file()
    table_rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in (tmp_path / "coco_mini.md").read_text().splitlines()
    ]
    assert any(row[:2] == ["pretrained", "grid"] for row in table_rows)
    assert rerun["feature_cache"]["misses"] == 0
    assert rerun["rows"][0] == result["rows"][0]
