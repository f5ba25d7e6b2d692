"""Visual Genome 1.2/1.4 readers, VG word cleaning, and the word -> region index behind eq. 1.

Files: image_data.json (one record per image), objects.json (records with "objects") and
attributes.json (the same objects with an optional "attributes" list each). All three are
top-level JSON arrays. They are read one image record at a time with ijson (mack.data.jsonstream), so
memory contains one record, never the whole file. In the 100-image VG 1.4 sample, attributes.json
lists every object of objects.json (and more) with its names, so it alone gives names and attributes.

Word cleaning: lower case, punctuation to spaces (apostrophes and hyphens inside a word stay),
collapsed spaces, and for object names the last word singularised with lemminflect's
`getLemma(word, upos="NOUN")` (its suffix rules only for unknown words ending in "s", so
misspellings such as "brocolli" stay as they are). Multi-word names stay one word
("tennis racket"). Attributes are not singularised.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mack.data import DataFormatError
from mack.data.jsonstream import JsonItem, iter_json_records

logger = logging.getLogger(__name__)

OBJECT, ATTRIBUTE = "object", "attribute"  # same values as mack.knowledge.OBJECT / ATTRIBUTE

RegionKey = tuple[int, int]  # (image_id, object_id)
Box = tuple[float, float, float, float]  # x, y, w, h in pixels, as VG stores them

_FIX = "Check that the file is a Visual Genome 1.2/1.4 JSON file and re-download it if it is"

# Nouns used only in the plural (pluralia tantum). Singularising them would merge them with another
# concept ("shorts" -> "short", which is also an attribute). Applied to the last word of a name.
# NOTE: "wine glasses" therefore stays plural, because "glasses" usually means spectacles in VG.
KEEP_PLURAL = frozenset(
    {
        "binoculars", "blinds", "clothes", "earphones", "eyeglasses", "glasses", "goggles",
        "graffiti", "headphones", "jeans", "leggings", "overalls", "pajamas", "pants", "pliers",
        "pyjamas", "scissors", "shorts", "slacks", "sunglasses", "suspenders", "sweatpants",
        "tights", "tongs", "trousers",
    }
)  # fmt: skip
# lemminflect lists ("leave", "leaf") for "leaves", but in VG object names it is nearly always foliage.
NOUN_LEMMA_OVERRIDES = {"leaves": "leaf"}


@dataclass(frozen=True)
class VGImage:
    """One image_data.json record."""

    image_id: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class VGObject:
    """One object of objects.json or attributes.json, with its raw (uncleaned) strings."""

    image_id: int
    object_id: int
    box: Box
    names: tuple[str, ...]
    attributes: tuple[str, ...]
    synsets: tuple[str, ...]

    @property
    def key(self) -> RegionKey:
        return (self.image_id, self.object_id)


def _error(path: Path, where: str, problem: str, fix: str = _FIX) -> DataFormatError:
    return DataFormatError(f"{path}, {where}: {problem}. {fix}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # `type(...) is` rejects bool and is the fast path for the millions of VG coordinates.
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _record_image_id(record: Any, path: Path, item: JsonItem) -> int:
    """Return the image id of a VG record ("image_id", or "id" in some releases)."""
    if not isinstance(record, dict):
        kind = type(record).__name__
        raise _error(path, item.where, f"the record is a JSON {kind}, expected an object")
    image_id = record.get("image_id", record.get("id"))
    if not _is_int(image_id):
        raise _error(path, item.where, f"missing or non-integer image_id (found {image_id!r})")
    return image_id


# ----------------------------------------------------------------------------- readers


def load_image_data(path: str | os.PathLike, *, progress: bool = False) -> dict[int, VGImage]:
    """Read image_data.json into image_id -> VGImage, checking ids, widths and heights."""
    path = Path(path)
    images: dict[int, VGImage] = {}
    for item in iter_json_records(path, progress=progress):
        image_id = _record_image_id(item.value, path, item)
        where = f"{item.where}, image_id {image_id}"
        width, height = item.value.get("width"), item.value.get("height")
        for name, value in (("width", width), ("height", height)):
            if not _is_int(value) or value <= 0:
                raise _error(path, where, f'"{name}" is {value!r}, expected a positive integer')
        if image_id in images:
            raise _error(path, where, "duplicate image_id")
        images[image_id] = VGImage(image_id, width, height)

    logger.info("read %d images from %s", len(images), path)
    return images


def iter_vg_objects(
    path: str | os.PathLike,
    *,
    images: Mapping[int, VGImage] | None = None,
    progress: bool = True,
) -> Iterator[VGObject]:
    """Yield every object of objects.json or attributes.json, one image record at a time.

    `images` (from load_image_data) makes an image_id missing from image_data.json an error.
    Raises DataFormatError naming the file, the record index, image_id and object (and the byte
    offset, line and column of malformed JSON).
    """
    path = Path(path)
    for item in iter_json_records(path, progress=progress):
        image_id = _record_image_id(item.value, path, item)
        where = f"{item.where}, image_id {image_id}"
        if images is not None and image_id not in images:
            problem = "image_id is not in image_data.json"
            raise _error(path, where, problem, "Pass the image_data.json of the same VG release")

        objects = item.value.get("objects", item.value.get("attributes"))
        if not isinstance(objects, list):
            problem = f'"objects" (or "attributes") is {type(objects).__name__}, expected a list'
            raise _error(path, where, problem)
        for position, obj in enumerate(objects):
            parsed = _parse_object(obj, image_id)
            if type(parsed) is str:  # the problem, named with its place only now
                raise _error(path, f"{where}, object {position}{_object_id_note(obj)}", parsed)
            yield parsed


def _parse_object(obj: Any, image_id: int) -> VGObject | str:
    """Return the VGObject of one JSON object, or the problem that makes it invalid.

    Returning the problem lets the caller format the message, with the object's place, only on
    failure, so the millions of valid objects of a VG file cost no formatting.
    """
    if type(obj) is not dict:
        return f"the object is a JSON {type(obj).__name__}, expected an object"
    object_id = obj.get("object_id", obj.get("id"))
    if not _is_int(object_id):
        return f"missing or non-integer object_id (found {object_id!r})"

    box = (obj.get("x"), obj.get("y"), obj.get("w"), obj.get("h"))
    if not (
        _is_number(box[0]) and _is_number(box[1]) and _is_number(box[2]) and _is_number(box[3])
    ):
        return f"x, y, w, h are {box!r}, expected four finite numbers"
    if box[2] < 0 or box[3] < 0:
        return f"negative box size w={box[2]}, h={box[3]}"

    # VG 1.0 stores one "name", and later releases store a list of "names".
    names = _strings(obj["names"] if "names" in obj else [obj.get("name")], required=True)
    attributes = _strings(obj.get("attributes"), required=False)
    synsets = _strings(obj.get("synsets"), required=False)
    if names is None or attributes is None or synsets is None:
        name = "synsets"
        if names is None:
            name = "names"
        elif attributes is None:
            name = "attributes"
        found = obj.get(name, obj.get("name")) if name == "names" else obj.get(name)
        return f'"{name}" is {found!r}, expected a list of strings'
    return VGObject(image_id, object_id, box, names, attributes, synsets)


def _object_id_note(obj: Any) -> str:
    """Return " (object_id N)" for an object with an integer id, else ""."""
    object_id = obj.get("object_id", obj.get("id")) if type(obj) is dict else None
    return f" (object_id {object_id})" if _is_int(object_id) else ""


def _strings(value: Any, *, required: bool) -> tuple[str, ...] | None:
    """Return `value` as a tuple if it is a list of strings, () if it is an allowed None, else None."""
    if value is None and not required:
        return ()
    if type(value) is not list:
        return None
    for entry in value:
        if type(entry) is not str:
            return None
    return tuple(value)


# ----------------------------------------------------------------------------- word cleaning

_NON_WORD = re.compile(r"[^\w\s'-]|_")


def normalise_words(raw: str) -> str:
    """Lower-case `raw`, turn punctuation into spaces and collapse spaces ("" if nothing is left).

    Apostrophes and hyphens inside a word stay ("man's", "t-shirt"), as in the bottom-up-attention
    VG vocabulary, and are removed at the edges of a word ("'walk'" -> "walk").
    """
    text = _NON_WORD.sub(" ", raw.lower().replace("\u2019", "'"))
    words = (word.strip("'-") for word in text.split())
    return " ".join(word for word in words if word)


@functools.lru_cache(maxsize=1 << 16)
def singular_noun(word: str) -> str:
    """Return the singular of one lower-case noun; unknown words and KEEP_PLURAL stay as they are."""
    from lemminflect import getLemma

    if word in KEEP_PLURAL:
        return word
    if word in NOUN_LEMMA_OVERRIDES:
        return NOUN_LEMMA_OVERRIDES[word]
    lemmas = getLemma(word, upos="NOUN", lemmatize_oov=False)
    if not lemmas and word.endswith("s"):
        # Regular plurals missing from lemminflect's lexicon ("trunks", "dvds"). Other unknown
        # words keep their form, because its suffix rules turn "brocolli" into "brocollus".
        lemmas = getLemma(word, upos="NOUN", lemmatize_oov=True)
    lemmas = [lemma for lemma in lemmas if lemma != word]
    if lemmas:
        return lemmas[0]
    # lemminflect does not list most hyphenated compounds; singularise their last part ("t-shirts").
    head, _, tail = word.rpartition("-")
    return f"{head}-{singular_noun(tail)}" if head and tail else word


@functools.lru_cache(maxsize=1 << 18)
def clean_object_name(raw: str, singularise: bool = True) -> str:
    """Normalise a VG object name and singularise its last word ("Tree Trunks " -> "tree trunk")."""
    name = normalise_words(raw)
    if not name or not singularise:
        return name
    head, _, last = name.rpartition(" ")
    return f"{head} {singular_noun(last)}" if head else singular_noun(last)


@functools.lru_cache(maxsize=1 << 18)
def clean_attribute(raw: str) -> str:
    """Normalise a VG attribute ("Off white " -> "off white") without singularising it."""
    return normalise_words(raw)


# ----------------------------------------------------------------------------- word -> regions


@dataclass
class WordRegions:
    """Index from each cleaned word to the VG regions it labels (the annotations averaged by eq. 1).

    Memory: about 370 bytes per region at 1.9 annotations per region (tracemalloc, 100-image VG
    sample), so full VG with several million regions needs a few GB (extrapolated, not measured).
    """

    annotations: dict[str, list[RegionKey]]  # word -> region keys, in file order, no repeats
    boxes: dict[RegionKey, Box]  # region key -> (x, y, w, h)
    types: dict[str, str]  # word -> OBJECT or ATTRIBUTE, the role with more annotations
    type_counts: dict[str, dict[str, int]]  # word -> {OBJECT: n, ATTRIBUTE: m}
    stats: dict[str, int] = field(default_factory=dict)  # cleaning counts, also logged

    @property
    def n_annotations(self) -> int:
        """Number of (word, region) pairs."""
        return sum(len(keys) for keys in self.annotations.values())

    def box(self, key: RegionKey) -> Box:
        return self.boxes[key]

    def by_image(self) -> dict[int, list[tuple[int, Box, list[str]]]]:
        """Group the annotations per image: image_id -> [(object_id, box, words)] in file order."""
        words_of: dict[RegionKey, list[str]] = defaultdict(list)
        for word, keys in self.annotations.items():
            for key in keys:
                words_of[key].append(word)
        images: dict[int, list[tuple[int, Box, list[str]]]] = defaultdict(list)
        for key, box in self.boxes.items():
            if key in words_of:
                images[key[0]].append((key[1], box, words_of[key]))
        return dict(images)


def word_regions(
    objects: Iterable[VGObject],
    *,
    use_names: bool = True,
    use_attributes: bool = True,
    singularise: bool = True,
    min_box_size: float = 1.0,
) -> WordRegions:
    """Index VG objects by cleaned word: each object's box labels its names and its attributes.

    objects: from iter_vg_objects (attributes.json gives names and attributes in one pass).
    A box narrower or shorter than `min_box_size` pixels is skipped, and so is a repeated
    (image_id, object_id); both are counted in `stats`. A word that is both a name and an
    attribute of the same box counts once, as an object.
    """
    index = _WordIndex(singularise)
    for obj in objects:
        index.add(obj, use_names, use_attributes, min_box_size)
    result = index.result()
    _log_stats(result.stats)
    return result


class _WordIndex:
    """Accumulator behind word_regions: annotations, boxes and the counts for the cleaning log."""

    def __init__(self, singularise: bool):
        self.singularise = singularise
        self.annotations: dict[str, list[RegionKey]] = defaultdict(list)
        self.boxes: dict[RegionKey, Box] = {}
        self.type_counts: dict[str, Counter] = defaultdict(Counter)
        self.raw = {OBJECT: Counter(), ATTRIBUTE: Counter()}
        self.stats: Counter = Counter()

    def add(self, obj: VGObject, use_names: bool, use_attributes: bool, min_size: float) -> None:
        self.stats["objects_read"] += 1
        if obj.box[2] < min_size or obj.box[3] < min_size:
            self.stats["objects_too_small"] += 1
            return
        key = obj.key
        if key in self.boxes:
            self.stats["objects_repeated"] += 1
            return

        words: dict[str, str] = {}  # cleaned word -> role, first role wins
        if use_names:
            self._collect(obj.names, OBJECT, words)
        if use_attributes:
            self._collect(obj.attributes, ATTRIBUTE, words)
        if not words:
            self.stats["objects_without_words"] += 1
            return

        self.boxes[key] = obj.box
        for word, role in words.items():
            self.annotations[word].append(key)
            self.type_counts[word][role] += 1

    def _collect(self, strings: Sequence[str], role: str, words: dict[str, str]) -> None:
        for raw in strings:
            self.raw[role][raw] += 1
            word = (
                clean_object_name(raw, self.singularise) if role == OBJECT else clean_attribute(raw)
            )
            if not word:
                self.stats[f"{role}_strings_empty"] += 1
            elif word in words:
                self.stats[f"{role}_strings_repeated_on_region"] += 1
            else:
                words[word] = role

    def result(self) -> WordRegions:
        types = {
            word: OBJECT if counts[OBJECT] >= counts[ATTRIBUTE] else ATTRIBUTE
            for word, counts in self.type_counts.items()
        }
        type_counts = {
            word: {OBJECT: counts[OBJECT], ATTRIBUTE: counts[ATTRIBUTE]}
            for word, counts in self.type_counts.items()
        }
        stats = dict(self.stats)
        stats.update(self._distinct_counts())
        stats["regions"] = len(self.boxes)
        stats["words"] = len(self.annotations)
        stats["annotations"] = sum(len(keys) for keys in self.annotations.values())
        return WordRegions(dict(self.annotations), self.boxes, types, type_counts, stats)

    def _distinct_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for role, raw in self.raw.items():
            normalised = {normalise_words(text) for text in raw} - {""}
            counts[f"{role}_strings"] = sum(raw.values())
            counts[f"{role}_distinct_raw"] = len(raw)
            counts[f"{role}_distinct_normalised"] = len(normalised)
            if role == OBJECT:
                cleaned = {clean_object_name(text, self.singularise) for text in raw} - {""}
                counts[f"{role}_distinct_cleaned"] = len(cleaned)
            else:
                counts[f"{role}_distinct_cleaned"] = len(normalised)
        return counts


def _log_stats(stats: Mapping[str, int]) -> None:
    for role in (OBJECT, ATTRIBUTE):
        logger.info(
            "%s strings: %d annotations, %d distinct raw; %d distinct after lower case, punctuation "
            "and spaces (%d emptied); %d distinct after singularising (object names only); "
            "%d repeats of a word on one region dropped",
            role,
            stats.get(f"{role}_strings", 0),
            stats.get(f"{role}_distinct_raw", 0),
            stats.get(f"{role}_distinct_normalised", 0),
            stats.get(f"{role}_strings_empty", 0),
            stats.get(f"{role}_distinct_cleaned", 0),
            stats.get(f"{role}_strings_repeated_on_region", 0),
        )
    logger.info(
        "word regions: %d objects read, %d too small, %d repeated ids, %d without words -> "
        "%d regions, %d words, %d annotations",
        stats.get("objects_read", 0),
        stats.get("objects_too_small", 0),
        stats.get("objects_repeated", 0),
        stats.get("objects_without_words", 0),
        stats.get("regions", 0),
        stats.get("words", 0),
        stats.get("annotations", 0),
    )


# ----------------------------------------------------------------------------- words for detected boxes


@dataclass
class DetectionWords:
    """Words given to detected boxes by overlap with VG boxes."""

    words: list[list[str]]  # per detection, distinct words of the VG boxes it overlaps
    matched_annotations: int  # (VG box, word) pairs whose box reaches the IoU threshold
    total_annotations: int

    @property
    def matched_share(self) -> float:
        """Share of annotations matched to at least one detection (0.0 when there are none)."""
        return self.matched_annotations / self.total_annotations if self.total_annotations else 0.0


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of two box sets; a pair with zero union scores 0.

    boxes_a: (n, 4) x1, y1, x2, y2. boxes_b: (m, 4) x1, y1, x2, y2. Returns (n, m) float64.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def assign_words_to_detections(
    vg_boxes: Sequence[tuple[Box, Sequence[str]]],
    detected_boxes: np.ndarray,
    iou_threshold: float = 0.5,
) -> DetectionWords:
    """Give each detected box the words of every VG box of the same image it overlaps.

    vg_boxes: [(x, y, w, h), words] per VG box, e.g. from WordRegions.by_image().
    detected_boxes: (n_detections, 4) x1, y1, x2, y2, as in the bottom-up TSV.
    A pair matches when IoU >= iou_threshold.
    """
    detected = np.asarray(detected_boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(detected).all():
        raise ValueError("detected_boxes contains NaN or infinite values. Fix the detector output.")
    vg_xyxy = np.array([[x, y, x + w, y + h] for (x, y, w, h), _ in vg_boxes], dtype=np.float64)
    matches = box_iou(vg_xyxy, detected) >= iou_threshold  # (n_vg, n_detections)

    words: list[list[str]] = [[] for _ in range(len(detected))]
    matched = total = 0
    for row, (_, box_words) in enumerate(vg_boxes):
        total += len(box_words)
        hits = np.flatnonzero(matches[row]) if len(detected) else []
        if len(hits):
            matched += len(box_words)
        for column in hits:
            for word in box_words:
                if word not in words[column]:
                    words[column].append(word)
    return DetectionWords(words, matched, total)
