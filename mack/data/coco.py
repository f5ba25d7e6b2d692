"""COCO instances and captions JSON: images, boxes with category names, and captions per image.

The JSON files are read one array element at a time with ijson (mack.data.jsonstream) and segmentations are
dropped as they are read, so a full train2017 instances file (about 450 MB) costs memory for its
boxes only. Every cross-reference is checked: annotation -> image, annotation -> category, the
image files on disk, and the instances and captions files against each other.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mack import config
from mack.data import DataFormatError
from mack.data.jsonstream import JsonItem, iter_json_members

logger = logging.getLogger(__name__)

_STREAMED = ("images", "annotations", "categories")
_FIX = "Check that it is a COCO-format file and re-download it if it is"


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int
    path: Path  # images_dir / file_name


@dataclass(frozen=True)
class CocoBox:
    image_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    category: str  # category name, e.g. "person"
    iscrowd: bool
    id: int  # annotation id
    category_id: int


@dataclass
class CocoSet:
    """One COCO split: images in file order, their boxes and captions, and the category names."""

    images: dict[int, CocoImage]  # image id -> image, in file order
    boxes: dict[int, list[CocoBox]]  # image id -> boxes in file order ([] for an image without any)
    categories: dict[int, str]  # category id -> name
    captions: dict[int, list[str]] = field(default_factory=dict)  # image id -> captions, file order
    # category name -> its "supercategory" ("dog" -> "animal"); names without one are absent
    supercategories: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_boxes(self) -> int:
        return sum(len(boxes) for boxes in self.boxes.values())

    @property
    def n_captions(self) -> int:
        return sum(len(captions) for captions in self.captions.values())


@dataclass(frozen=True)
class CocoPaths:
    """Paths of one COCO split. `load()` reads it."""

    images_dir: Path
    instances_json: Path
    captions_json: Path | None
    captions_cover_all: bool  # False when the captions file covers only some of the images

    def load(self, **kwargs: Any) -> CocoSet:
        kwargs.setdefault("require_all_captioned", self.captions_cover_all)
        return load_coco(self.images_dir, self.instances_json, self.captions_json, **kwargs)


def _error(path: Path, where: str, problem: str, fix: str = _FIX) -> DataFormatError:
    return DataFormatError(f"{path}, {where}: {problem}. {fix}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- reading one file


def _read_members(
    path: Path,
    required: tuple[str, ...],
    progress: bool,
    convert: Callable[[Path, JsonItem], Any] | None = None,
) -> dict[str, list]:
    """Collect the elements of the streamed top-level arrays; check that `required` keys exist.

    convert: applied to each "annotations" element as it is read, so only its result is kept.
    """
    members: dict[str, list] = {key: [] for key in _STREAMED}
    seen: set[str] = set()
    for item in iter_json_members(path, _STREAMED, progress=progress):
        seen.add(item.key)
        if item.key not in members:
            continue
        if item.index is None:
            kind = type(item.value).__name__
            raise _error(path, item.where, f'"{item.key}" is a JSON {kind}, expected a list')
        if item.key == "annotations" and convert is not None:
            members[item.key].append(convert(path, item))
        else:
            members[item.key].append(item)

    missing = [key for key in required if key not in seen]
    if missing:
        problem = f"missing top-level keys {missing} (a COCO file has {', '.join(required)})"
        raise _error(path, "top level", problem)
    return members


def _parse_images(path: Path, items: list[JsonItem], images_dir: Path) -> dict[int, CocoImage]:
    images: dict[int, CocoImage] = {}
    for item in items:
        entry = _require_object(path, item, ("id", "file_name", "width", "height"))
        image_id = entry["id"]
        where = f"{item.where}, image id {image_id!r}"
        if not _is_int(image_id):
            raise _error(path, where, "image id is not an integer")
        for key in ("width", "height"):
            if not _is_int(entry[key]) or entry[key] <= 0:
                raise _error(path, where, f'"{key}" is {entry[key]!r}, expected a positive integer')
        if not isinstance(entry["file_name"], str) or not entry["file_name"]:
            raise _error(
                path, where, f'"file_name" is {entry["file_name"]!r}, expected a file name'
            )
        if image_id in images:
            raise _error(path, where, "duplicate image id")
        file_name = entry["file_name"]
        images[image_id] = CocoImage(
            image_id, file_name, entry["width"], entry["height"], images_dir / file_name
        )
    return images


def _parse_categories(path: Path, items: list[JsonItem]) -> dict[int, str]:
    categories: dict[int, str] = {}
    for item in items:
        entry = _require_object(path, item, ("id", "name"))
        where = f"{item.where}, category id {entry['id']!r}"
        if not _is_int(entry["id"]) or not isinstance(entry["name"], str) or not entry["name"]:
            raise _error(path, where, f"expected an integer id and a name, found {entry!r}")
        if entry["id"] in categories:
            raise _error(path, where, "duplicate category id")
        categories[entry["id"]] = entry["name"]
    return categories


def _parse_supercategories(path: Path, items: list[JsonItem]) -> dict[str, str]:
    """Return category name -> "supercategory" for the categories that have one."""
    supercategories: dict[str, str] = {}
    for item in items:
        entry = _require_object(path, item, ("id", "name"))
        supercategory = entry.get("supercategory")
        if supercategory is None:
            continue
        if not isinstance(supercategory, str) or not supercategory:
            where = f"{item.where}, category id {entry['id']!r}"
            raise _error(path, where, f'"supercategory" is {supercategory!r}, expected a name')
        supercategories[entry["name"]] = supercategory
    return supercategories


class _PendingBox(NamedTuple):
    """An annotation read before the categories (which COCO files list after the annotations)."""

    id: int
    image_id: Any
    bbox: tuple[float, float, float, float]
    category_id: Any
    iscrowd: bool
    where: str


def _read_box(path: Path, item: JsonItem) -> _PendingBox:
    """Check one instances annotation, keeping no segmentation."""
    entry = _require_object(path, item, ("id", "image_id", "bbox", "category_id"))
    where = f"{item.where}, annotation id {entry['id']!r}"
    if not _is_int(entry["id"]):
        raise _error(path, where, "annotation id is not an integer")

    bbox = entry["bbox"]
    numbers = isinstance(bbox, list) and len(bbox) == 4
    numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    if not numbers or not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
        raise _error(path, where, f'"bbox" is {bbox!r}, expected [x, y, w, h] with w, h >= 0')
    iscrowd = entry.get("iscrowd", 0)
    if iscrowd not in (0, 1) or isinstance(iscrowd, float):
        raise _error(path, where, f'"iscrowd" is {iscrowd!r}, expected 0 or 1')

    box = (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
    return _PendingBox(
        entry["id"], entry["image_id"], box, entry["category_id"], bool(iscrowd), where
    )


def _resolve_box(
    path: Path, pending: _PendingBox, images: dict, categories: dict[int, str]
) -> CocoBox:
    """Check the annotation's image and category ids and return the box with its category name."""
    if pending.image_id not in images:
        problem = f"image_id {pending.image_id!r} is not in the file's images"
        raise _error(
            path, pending.where, problem, "Use the instances file that belongs to these images"
        )
    if pending.category_id not in categories:
        problem = f"category_id {pending.category_id!r} is not in the file's categories"
        raise _error(path, pending.where, problem)
    category = categories[pending.category_id]
    return CocoBox(
        pending.image_id, pending.bbox, category, pending.iscrowd, pending.id, pending.category_id
    )


def _require_object(path: Path, item: JsonItem, keys: tuple[str, ...]) -> dict:
    if not isinstance(item.value, dict):
        raise _error(path, item.where, f"expected a JSON object, found {type(item.value).__name__}")
    missing = [key for key in keys if key not in item.value]
    if missing:
        raise _error(path, item.where, f"missing keys {missing}")
    return item.value


# ----------------------------------------------------------------------------- loading a split


def load_coco(
    images_dir: str | os.PathLike,
    instances_json: str | os.PathLike,
    captions_json: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
    require_all_captioned: bool = True,
    progress: bool = False,
) -> CocoSet:
    """Read a COCO split and check every cross-reference.

    check_files: every image file must exist under images_dir. require_all_captioned: the
    captions file must list the same images as the instances file; when False it may list a
    subset (images without captions get []). Captions keep file order, stripped of surrounding
    whitespace. Raises DataFormatError naming the file, position and id.
    """
    images_dir, instances_json = Path(images_dir), Path(instances_json)
    members = _read_members(instances_json, _STREAMED, progress, convert=_read_box)
    images = _parse_images(instances_json, members["images"], images_dir)
    categories = _parse_categories(instances_json, members["categories"])
    supercategories = _parse_supercategories(instances_json, members["categories"])
    boxes: dict[int, list[CocoBox]] = {image_id: [] for image_id in images}
    annotation_ids: set[int] = set()
    for pending in members.pop("annotations"):
        box = _resolve_box(instances_json, pending, images, categories)
        if box.id in annotation_ids:
            raise _error(instances_json, pending.where, "duplicate annotation id")
        annotation_ids.add(box.id)
        boxes[box.image_id].append(box)

    if check_files:
        _check_image_files(images, images_dir)
    captions = {}
    if captions_json is not None:
        captions = _load_captions(
            Path(captions_json), images, instances_json, require_all_captioned, progress
        )

    coco = CocoSet(images, boxes, categories, captions, supercategories)
    logger.info(
        "COCO %s: %d images, %d boxes, %d categories, %d captions",
        instances_json.name, len(coco), coco.n_boxes, len(categories), coco.n_captions,
    )  # fmt: skip
    return coco


def _check_image_files(images: dict[int, CocoImage], images_dir: Path) -> None:
    missing = [image for image in images.values() if not image.path.is_file()]
    if missing:
        first = missing[0]
        raise DataFormatError(
            f"{first.path}: image file not found (image id {first.id}; {len(missing)} of "
            f"{len(images)} images are missing). Check images_dir ({images_dir}) or pass check_files=False."
        )


def _load_captions(
    path: Path,
    images: dict[int, CocoImage],
    instances_json: Path,
    require_all: bool,
    progress: bool,
) -> dict[int, list[str]]:
    members = _read_members(path, ("images", "annotations"), progress)
    listed = {_require_object(path, item, ("id",))["id"] for item in members["images"]}
    _check_same_images(path, listed, instances_json, set(images), require_all)

    captions: dict[int, list[str]] = {image_id: [] for image_id in images}
    for item in members["annotations"]:
        entry = _require_object(path, item, ("image_id", "caption"))
        where = f"{item.where}, annotation id {entry.get('id')!r}"
        if entry["image_id"] not in listed:
            problem = f"image_id {entry['image_id']!r} is not in the file's images"
            raise _error(path, where, problem, "Use the captions file that belongs to these images")
        if not isinstance(entry["caption"], str) or not entry["caption"].strip():
            raise _error(
                path, where, f'"caption" is {entry["caption"]!r}, expected a non-empty string'
            )
        captions[entry["image_id"]].append(entry["caption"].strip())
    return captions


def _check_same_images(
    path: Path, listed: set, instances_json: Path, instance_ids: set[int], require_all: bool
) -> None:
    unknown = sorted(listed - instance_ids, key=repr)
    uncaptioned = sorted(instance_ids - listed)
    if unknown or (require_all and uncaptioned):
        raise _error(
            path,
            "images",
            f"the image set differs from {instances_json}: {len(unknown)} image ids only here "
            f"{unknown[:5]}, {len(uncaptioned)} only in the instances file {uncaptioned[:5]}",
            "Use the captions and instances files of the same split, or pass "
            "require_all_captioned=False if the captions cover only some images",
        )


# ----------------------------------------------------------------------------- sample data


def coco_mini_paths(data_root: str | os.PathLike | None = None) -> dict[str, CocoPaths]:
    """Return CocoPaths for coco-mini "train" and "val", and "extra" when coco-extra exists.

    data_root: the real-data root (default mack.config.data_root(): $MACK_DATA or ../shared/data).
    Raises DataNotFoundError naming every missing file and how to get the data.
    """
    root = config.data_root(data_root)
    mini = root / "coco-mini"
    paths = {
        split: CocoPaths(
            mini / f"{split}2017",
            mini / "annotations" / f"instances_{split}2017.json",
            mini / "annotations" / f"captions_{split}2017.json",
            captions_cover_all=True,
        )
        for split in ("train", "val")
    }
    required = [
        p
        for split in paths.values()
        for p in (split.images_dir, split.instances_json, split.captions_json)
    ]
    missing = [str(p) for p in required if not p.exists()]
    if missing:
        raise config.DataNotFoundError(
            f"coco-mini not found: looked in {mini} and did not find {', '.join(missing)}. "
            f"Set {config.DATA_ENV} to the folder that contains coco-mini/, or run `make data-coco-mini`."
        )

    extra = root / "coco-extra"
    if (extra / "images").is_dir() and (extra / "annotations" / "instances_extra.json").is_file():
        captions = extra / "annotations" / "captions_extra.json"
        paths["extra"] = CocoPaths(
            extra / "images",
            extra / "annotations" / "instances_extra.json",
            captions if captions.is_file() else None,
            captions_cover_all=False,
        )
    return paths
