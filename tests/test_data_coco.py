"""COCO instances/captions loader on the real coco-mini and coco-extra samples and broken copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mack import config
from mack.data import DataFormatError
from mack.data.coco import coco_mini_paths, load_coco

from helpers import needs_real_data


def mini_file(name: str) -> Path:
    return config.data_root() / "coco-mini" / "annotations" / name


def val_images_dir() -> Path:
    return config.data_root() / "coco-mini" / "val2017"


def write_tiny_coco(root: Path) -> tuple[Path, Path, Path]:
    """Write a hand-made two-image COCO split (images are empty files) and return its paths."""
    images_dir = root / "images"
    images_dir.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images_dir / name).write_bytes(b"")
    images = [
        {"id": 10, "file_name": "a.jpg", "width": 640, "height": 480},
        {"id": 20, "file_name": "b.jpg", "width": 300, "height": 200},
    ]
    instances = {
        "info": {},
        "images": images,
        "annotations": [
            {"id": 1, "image_id": 20, "bbox": [1, 2.5, 30, 40], "category_id": 3, "iscrowd": 0,
             "segmentation": [[1, 2, 3, 4]], "area": 1200},
            {"id": 2, "image_id": 10, "bbox": [0, 0, 5, 5], "category_id": 1, "iscrowd": 1},
            {"id": 3, "image_id": 20, "bbox": [7, 8, 9, 10], "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }  # fmt: skip
    captions = {
        "images": images,
        "annotations": [
            {"id": 5, "image_id": 20, "caption": "A red car. "},
            {"id": 6, "image_id": 10, "caption": "People in a crowd."},
            {"id": 4, "image_id": 20, "caption": "A car parked on a street."},
        ],
    }
    instances_path, captions_path = root / "instances.json", root / "captions.json"
    instances_path.write_text(json.dumps(instances))
    captions_path.write_text(json.dumps(captions))
    return images_dir, instances_path, captions_path


# ----------------------------------------------------------------------------- hand-made split


def test_tiny_coco_fields(tmp_path: Path) -> None:
    images_dir, instances, captions = write_tiny_coco(tmp_path)

    coco = load_coco(images_dir, instances, captions)

    assert list(coco.images) == [10, 20]
    assert coco.images[20].path == images_dir / "b.jpg"
    assert (coco.images[20].width, coco.images[20].height) == (300, 200)
    assert coco.categories == {1: "person", 3: "car"}
    assert [(box.id, box.category, box.bbox) for box in coco.boxes[20]] == [
        (1, "car", (1.0, 2.5, 30.0, 40.0)),
        (3, "person", (7.0, 8.0, 9.0, 10.0)),
    ]
    assert [box.iscrowd for box in coco.boxes[10]] == [True]
    assert coco.boxes[20][1].iscrowd is False  # "iscrowd" missing -> 0
    assert coco.captions == {
        10: ["People in a crowd."],
        20: ["A red car.", "A car parked on a street."],
    }


def test_tiny_coco_without_captions(tmp_path: Path) -> None:
    images_dir, instances, _ = write_tiny_coco(tmp_path)

    coco = load_coco(images_dir, instances)

    assert coco.captions == {}
    assert coco.n_boxes == 3


def test_tiny_coco_supercategories(tmp_path: Path) -> None:
    images_dir, instances, _ = write_tiny_coco(tmp_path)
    payload = json.loads(instances.read_text())
    payload["categories"][0]["supercategory"] = "person"
    payload["categories"][1]["supercategory"] = "vehicle"
    instances.write_text(json.dumps(payload))

    coco = load_coco(images_dir, instances)

    assert coco.supercategories == {"person": "person", "car": "vehicle"}


def test_tiny_coco_without_supercategories(tmp_path: Path) -> None:
    images_dir, instances, _ = write_tiny_coco(tmp_path)

    coco = load_coco(images_dir, instances)

    assert coco.supercategories == {}


def test_invalid_supercategory(tmp_path: Path) -> None:
    images_dir, instances, _ = write_tiny_coco(tmp_path)
    payload = json.loads(instances.read_text())
    payload["categories"][1]["supercategory"] = 7
    instances.write_text(json.dumps(payload))

    with pytest.raises(DataFormatError, match=r"category id 3.*\"supercategory\" is 7"):
        load_coco(images_dir, instances)


# ----------------------------------------------------------------------------- real samples


@needs_real_data
@pytest.mark.parametrize(
    ("split", "images", "boxes", "crowd", "categories_used"),
    [("train", 80, 739, 8, 80), ("val", 79, 624, 5, 78)],
)
def test_coco_mini_counts(
    split: str, images: int, boxes: int, crowd: int, categories_used: int
) -> None:
    coco = coco_mini_paths()[split].load()

    assert len(coco) == images
    assert coco.n_boxes == boxes
    assert sum(box.iscrowd for boxes in coco.boxes.values() for box in boxes) == crowd
    assert len({box.category for boxes in coco.boxes.values() for box in boxes}) == categories_used
    assert len(coco.categories) == 80
    assert all(len(captions) == 5 for captions in coco.captions.values())
    assert coco.n_captions == 5 * images
    assert all(image.path.is_file() for image in coco.images.values())


@needs_real_data
def test_coco_mini_hand_checked_entries() -> None:
    """Values read by eye from the first entries of the train2017 JSON files."""
    coco = coco_mini_paths()["train"].load()

    first = coco.boxes[535506][0]
    assert first.id == 441444
    assert first.bbox == (120.46, 133.32, 212.31, 498.58)
    assert first.category == "person"
    assert first.iscrowd is False
    assert coco.images[493652].file_name == "000000493652.jpg"
    assert (coco.images[493652].width, coco.images[493652].height) == (640, 399)
    assert coco.supercategories["dog"] == "animal"
    assert coco.supercategories["hot dog"] == "food"
    assert len(coco.supercategories) == 80
    assert coco.captions[125870][:2] == [
        "An airport filled with large passenger jets parked next to each other.",
        "A fleet of airplanes rest at their gates at the airport.",
    ]


@needs_real_data
def test_coco_extra_counts() -> None:
    paths = coco_mini_paths()
    assert "extra" in paths

    coco = paths["extra"].load()

    assert len(coco) == 253
    assert coco.n_boxes == 2322
    assert sum(box.iscrowd for boxes in coco.boxes.values() for box in boxes) == 26
    assert sum(1 for captions in coco.captions.values() if captions) == 94
    assert {len(captions) for captions in coco.captions.values()} == {0, 5}
    assert not set(coco.images) & set(paths["train"].load(check_files=False).images)


@needs_real_data
def test_coco_extra_captions_must_cover_all_by_default() -> None:
    extra = coco_mini_paths()["extra"]

    with pytest.raises(DataFormatError, match="159 only in the instances file"):
        load_coco(extra.images_dir, extra.instances_json, extra.captions_json)


def test_coco_mini_paths_missing(tmp_path: Path) -> None:
    with pytest.raises(config.DataNotFoundError) as caught:
        coco_mini_paths(tmp_path)

    message = str(caught.value)
    assert str(tmp_path / "coco-mini") in message
    assert "MACK_DATA" in message
    assert "make data-coco-mini" in message


# ----------------------------------------------------------------------------- broken copies


@needs_real_data
def test_truncated_instances_json(tmp_path: Path) -> None:
    data = mini_file("instances_val2017.json").read_bytes()
    path = tmp_path / "instances_val2017.json"
    path.write_bytes(data[: len(data) * 2 // 3])

    with pytest.raises(DataFormatError) as caught:
        load_coco(val_images_dir(), path)

    message = str(caught.value)
    assert str(path) in message
    assert "line 1, column" in message
    assert "ends in the middle of a value" in message


@needs_real_data
def test_broken_json_line_and_column(tmp_path: Path) -> None:
    """A pretty-printed copy with one ':' removed: the error gives where the parser stopped.

    ijson's parser stops at the end of the token after the missing ':', the caption string's
    closing quote, so that is the line and column in the message.
    """
    text = json.dumps(json.loads(mini_file("captions_val2017.json").read_text()), indent=1)
    broken_at = text.index('"caption":', text.index('"annotations"')) + len('"caption"')
    broken = text[:broken_at] + text[broken_at + 1 :]
    path = tmp_path / "captions_val2017.json"
    path.write_text(broken)
    _, token_end = json.JSONDecoder().raw_decode(broken, broken_at + 1)
    stop = token_end - 1  # the closing quote of the caption
    line = broken.count("\n", 0, stop) + 1
    column = stop - broken.rfind("\n", 0, stop)

    with pytest.raises(DataFormatError) as caught:
        load_coco(val_images_dir(), mini_file("instances_val2017.json"), path)

    assert str(path) in str(caught.value)
    assert f"line {line}, column {column}, byte offset {stop}" in str(caught.value)
    assert '"annotations"[0]' in str(caught.value)


@needs_real_data
def test_missing_image_file(tmp_path: Path) -> None:
    data = json.loads(mini_file("instances_val2017.json").read_text())
    image = data["images"][3]
    image["file_name"] = "000000000000_missing.jpg"
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))

    with pytest.raises(DataFormatError) as caught:
        load_coco(val_images_dir(), path)

    message = str(caught.value)
    assert str(val_images_dir() / "000000000000_missing.jpg") in message
    assert f"image id {image['id']}" in message
    assert len(load_coco(val_images_dir(), path, check_files=False)) == 79


@needs_real_data
def test_unknown_image_id(tmp_path: Path) -> None:
    data = json.loads(mini_file("instances_val2017.json").read_text())
    annotation = data["annotations"][10]
    annotation["image_id"] = 999999999
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))

    with pytest.raises(DataFormatError) as caught:
        load_coco(val_images_dir(), path)

    message = str(caught.value)
    assert str(path) in message
    assert f"annotation id {annotation['id']}" in message
    assert "image_id 999999999 is not in the file's images" in message
    assert '"annotations"[10]' in message


@needs_real_data
def test_unknown_category_id(tmp_path: Path) -> None:
    data = json.loads(mini_file("instances_val2017.json").read_text())
    data["annotations"][0]["category_id"] = 1000
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))

    with pytest.raises(DataFormatError, match="category_id 1000 is not in the file's categories"):
        load_coco(val_images_dir(), path)


@needs_real_data
def test_captions_image_set_differs(tmp_path: Path) -> None:
    data = json.loads(mini_file("captions_val2017.json").read_text())
    dropped = data["images"].pop(0)["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != dropped]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    instances = mini_file("instances_val2017.json")

    with pytest.raises(DataFormatError) as caught:
        load_coco(val_images_dir(), instances, path)
    assert str(path) in str(caught.value)
    assert f"1 only in the instances file [{dropped}]" in str(caught.value)

    coco = load_coco(val_images_dir(), instances, path, require_all_captioned=False)
    assert coco.captions[dropped] == []


@needs_real_data
def test_caption_for_unlisted_image(tmp_path: Path) -> None:
    data = json.loads(mini_file("captions_val2017.json").read_text())
    data["annotations"][7]["image_id"] = 123
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))

    with pytest.raises(DataFormatError, match=r'"annotations"\[7\].*image_id 123 is not in'):
        load_coco(val_images_dir(), mini_file("instances_val2017.json"), path)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.pop("categories"), "missing top-level keys ['categories']"),
        (lambda d: d["images"][1].pop("file_name"), "missing keys ['file_name']"),
        (lambda d: d["images"][1].update(width=-3), '"width" is -3'),
        (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id"),
        (lambda d: d["annotations"][1].update(bbox=[0, 0, 5]), '"bbox" is [0, 0, 5]'),
        (lambda d: d["annotations"][1].update(bbox=[0, 0, -5, 1]), '"bbox" is [0, 0, -5, 1]'),
        (lambda d: d["annotations"][1].update(iscrowd=2), '"iscrowd" is 2'),
        (lambda d: d["annotations"][1].update(id=1), "duplicate annotation id"),
        (lambda d: d.update(images={}), '"images" is a JSON dict, expected a list'),
    ],
)
def test_malformed_instances(tmp_path: Path, change, problem: str) -> None:
    images_dir, instances, _ = write_tiny_coco(tmp_path)
    data = json.loads(instances.read_text())
    change(data)
    instances.write_text(json.dumps(data))

    with pytest.raises(DataFormatError) as caught:
        load_coco(images_dir, instances)

    assert str(instances) in str(caught.value)
    assert problem in str(caught.value)
