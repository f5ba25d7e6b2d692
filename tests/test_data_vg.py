"""Visual Genome readers, word cleaning, word -> region index, IoU assignment, streaming JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mack.data import DataFormatError
from mack.data.jsonstream import iter_json_members, iter_json_records
from mack.data.vg import (
    ATTRIBUTE,
    OBJECT,
    assign_words_to_detections,
    box_iou,
    clean_attribute,
    clean_object_name,
    iter_vg_objects,
    load_image_data,
    word_regions,
)

from helpers import needs_real_data, vg_samples


def objects_of(name: str) -> list:
    return list(iter_vg_objects(vg_samples() / name, progress=False))


# ----------------------------------------------------------------------------- word cleaning


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("trees", "tree"),
        ("Tree Trunks ", "tree trunk"),
        ("grey keys", "grey key"),
        ('"walk"', "walk"),
        ("monitor is off.", "monitor is off"),
        ("pants", "pants"),
        ("glasses", "glasses"),
        ("shorts", "shorts"),
        ("ski pants", "ski pants"),
        ("leaves", "leaf"),
        ("men", "man"),
        ("T-Shirts", "t-shirt"),
        ("pitcher's mounds", "pitcher's mound"),
        ("pluged", "pluged"),
        ("brocolli", "brocolli"),
        ("flags`", "flag"),
        ("  ...  ", ""),
    ],
)
def test_clean_object_name(raw: str, expected: str) -> None:
    assert clean_object_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Off white", "off white"),
        ("tan  ", "tan"),
        ("brick\\", "brick"),
        ("brown.", "brown"),
        (" colorful public bus", "colorful public bus"),
        ('lit "walk"', "lit walk"),
        ("made of bricks", "made of bricks"),
        ("man's", "man's"),
        ("-", ""),
    ],
)
def test_clean_attribute_keeps_plural(raw: str, expected: str) -> None:
    assert clean_attribute(raw) == expected


def test_clean_object_name_without_singularising() -> None:
    assert clean_object_name("Tree Trunks ", singularise=False) == "tree trunks"


# ----------------------------------------------------------------------------- real samples


@needs_real_data
def test_sample_counts_match_readme() -> None:
    objects = objects_of("minyus_objects.json_samples.json")
    attributes = objects_of("minyus_attributes.json_samples.json")

    assert (
        sum(1 for _ in iter_json_records(vg_samples() / "minyus_objects.json_samples.json")) == 100
    )
    assert len(objects) == 2484
    assert len({name for obj in objects for name in obj.names}) == 809
    assert len(attributes) == 3671
    assert sum(1 for obj in attributes if obj.attributes) == 1901
    assert sum(len(obj.attributes) for obj in attributes) == 2931


@needs_real_data
def test_image_data_sample() -> None:
    images = load_image_data(vg_samples() / "minyus_image_data.json_samples.json")

    assert len(images) == 100
    assert (images[1].width, images[1].height) == (800, 600)
    assert sorted(images) == list(range(1, 101))


@needs_real_data
def test_single_image_record_matches_minyus() -> None:
    single = objects_of("vadbeg_attributes.json")
    minyus = [obj for obj in objects_of("minyus_attributes.json_samples.json") if obj.image_id == 1]

    assert len(single) == 40
    assert single == minyus


@needs_real_data
def test_word_regions_hand_checked_objects() -> None:
    """Expectations written by hand from vadbeg_attributes{,2,3}.json (VG images 1, 2, 3)."""
    objects = [
        obj
        for name in ("vadbeg_attributes.json", "vadbeg_attributes2.json", "vadbeg_attributes3.json")
        for obj in objects_of(name)
    ]
    regions = word_regions(objects)

    # image 1, object 1058549: names ["trees"], attributes ["sparse"], x=190 y=0 w=606 h=557
    assert (1, 1058549) in regions.annotations["tree"]
    assert (1, 1058549) in regions.annotations["sparse"]
    assert regions.box((1, 1058549)) == (190, 0, 606, 557)
    # image 1, object 1058528: names ["pants"] (kept plural), attributes ["black"]
    assert (1, 1058528) in regions.annotations["pants"]
    assert (1, 1058528) in regions.annotations["black"]
    assert "pant" not in regions.annotations
    # image 2, object 5069: names ["walk sign"], attributes ["on", 'lit "walk"']
    assert (2, 5069) in regions.annotations["walk sign"]
    assert (2, 5069) in regions.annotations["on"]
    assert (2, 5069) in regions.annotations["lit walk"]
    assert regions.box((2, 5069)) == (463, 141, 43, 103)
    # image 2, object 5090: names ['"walk"'], no attributes
    assert regions.annotations["walk"] == [(2, 5090)]
    # image 3, object 1060245: names ["grey keys"], x=168 y=273 w=175 h=48
    assert regions.annotations["grey key"] == [(3, 1060245)]
    assert regions.box((3, 1060245)) == (168, 273, 175, 48)
    # image 3, object 1060261: names ["pluged", "plugged", "outlets"], three words, one box
    for word in ("pluged", "plugged", "outlet"):
        assert (3, 1060261) in regions.annotations[word]


@needs_real_data
def test_word_regions_messy_attributes() -> None:
    """Hand-checked objects of minyus_attributes.json_samples.json with messy strings."""
    regions = word_regions(objects_of("minyus_attributes.json_samples.json"))

    # image 78, object 1025779: names ["table"], attributes ["brown", "brown."] -> "brown" once
    assert regions.annotations["brown"].count((78, 1025779)) == 1
    assert (78, 1025779) in regions.annotations["table"]
    # image 55, object 1533747: names ["bus"], attributes ["colorful", " colorful public bus"]
    assert (55, 1533747) in regions.annotations["colorful public bus"]
    assert (55, 1533747) in regions.annotations["colorful"]
    assert regions.box((55, 1533747)) == (6, 318, 272, 117)
    # image 85, object 4520334: names ["sofa"], attributes ["Off white"]
    assert (85, 4520334) in regions.annotations["off white"]
    # image 15, object 5348: attributes ["off", "white", "Computer"], and the names are sentences
    assert (15, 5348) in regions.annotations["computer"]
    assert (15, 5348) in regions.annotations["monitor is off"]


@needs_real_data
def test_word_regions_types_and_counts() -> None:
    regions = word_regions(objects_of("minyus_attributes.json_samples.json"))

    assert len(regions.boxes) == 3671
    assert regions.n_annotations == regions.stats["annotations"]
    for word, keys in regions.annotations.items():
        assert len(keys) == len(set(keys)), word
        counts = regions.type_counts[word]
        assert counts[OBJECT] + counts[ATTRIBUTE] == len(keys)
        expected = OBJECT if counts[OBJECT] >= counts[ATTRIBUTE] else ATTRIBUTE
        assert regions.types[word] == expected
    assert regions.types["tree"] == OBJECT
    assert regions.types["white"] == ATTRIBUTE


@needs_real_data
def test_word_regions_logs_each_step(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mack.data.vg"):
        word_regions(objects_of("minyus_objects.json_samples.json"), use_attributes=False)

    text = caplog.text
    assert "object strings: 2484 annotations, 809 distinct raw" in text
    assert "2484 objects read" in text


@needs_real_data
def test_word_regions_names_only_brute_force() -> None:
    """Recount names from the raw JSON with plain loops and compare."""
    path = vg_samples() / "minyus_objects.json_samples.json"
    expected: dict[str, set] = {}
    for record in json.loads(path.read_text()):
        for obj in record["objects"]:
            for name in obj["names"]:
                word = clean_object_name(name)
                expected.setdefault(word, set()).add((record["image_id"], obj["object_id"]))

    regions = word_regions(iter_vg_objects(path, progress=False), use_attributes=False)

    assert {word: set(keys) for word, keys in regions.annotations.items()} == expected


def test_word_regions_skips_small_and_repeated_boxes(tmp_path: Path) -> None:
    records = [
        {
            "image_id": 7,
            "objects": [
                {"object_id": 1, "x": 0, "y": 0, "w": 10, "h": 10, "names": ["Dogs"]},
                {"object_id": 2, "x": 0, "y": 0, "w": 0, "h": 10, "names": ["cat"]},
                {"object_id": 1, "x": 0, "y": 0, "w": 10, "h": 10, "names": ["dog"]},
                {"object_id": 3, "x": 5, "y": 5, "w": 4, "h": 4, "names": ["..."]},
            ],
        }
    ]
    path = tmp_path / "objects.json"
    path.write_text(json.dumps(records))

    regions = word_regions(iter_vg_objects(path, progress=False))

    assert regions.annotations == {"dog": [(7, 1)]}
    assert regions.stats["objects_too_small"] == 1
    assert regions.stats["objects_repeated"] == 1
    assert regions.stats["objects_without_words"] == 1
    assert regions.by_image() == {7: [(1, (0, 0, 10, 10), ["dog"])]}


# ----------------------------------------------------------------------------- malformed files


@needs_real_data
def test_truncated_objects_file(tmp_path: Path) -> None:
    data = (vg_samples() / "minyus_objects.json_samples.json").read_bytes()
    path = tmp_path / "objects.json"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(DataFormatError) as caught:
        list(iter_vg_objects(path, progress=False))

    message = str(caught.value)
    assert str(path) in message
    assert "line 1, column" in message
    assert "ends in the middle" in message


@needs_real_data
def test_malformed_record_position(tmp_path: Path) -> None:
    """Drop one comma from a pretty-printed copy; the error gives that line and column."""
    text = (vg_samples() / "vadbeg_attributes2.json").read_text()
    broken_at = text.index('"object_id": 5090') - 2  # the ", " before "object_id"
    assert text[broken_at] == ","
    path = tmp_path / "attributes2.json"
    path.write_text(text[:broken_at] + text[broken_at + 1 :])
    # ijson's parser stops at the closing quote of the next token, "object_id", which moved
    # one character left onto the comma's place.
    stop = broken_at + len('"object_id"')
    line = text.count("\n", 0, stop) + 1
    column = stop - text.rfind("\n", 0, stop)

    with pytest.raises(DataFormatError) as caught:
        list(iter_vg_objects(path, progress=False))

    assert str(path) in str(caught.value)
    assert f"line {line}, column {column}, byte offset {stop}" in str(caught.value)


def test_object_without_box_names_ids(tmp_path: Path) -> None:
    records = [
        {"image_id": 12, "objects": [{"object_id": 99, "x": 1, "y": 2, "w": 3, "names": ["a"]}]}
    ]
    path = tmp_path / "objects.json"
    path.write_text(json.dumps(records))

    with pytest.raises(DataFormatError) as caught:
        list(iter_vg_objects(path, progress=False))

    message = str(caught.value)
    assert str(path) in message
    assert "image_id 12" in message
    assert "object_id 99" in message
    assert "record 0, image_id 12" in message


def test_names_not_a_list_of_strings(tmp_path: Path) -> None:
    records = [
        {
            "image_id": 1,
            "attributes": [{"object_id": 5, "x": 0, "y": 0, "w": 1, "h": 1, "names": [3]}],
        }
    ]
    path = tmp_path / "attributes.json"
    path.write_text(json.dumps(records))

    with pytest.raises(DataFormatError, match=r'"names" is \[3\]'):
        list(iter_vg_objects(path, progress=False))


def test_unknown_image_id(tmp_path: Path) -> None:
    images_path = tmp_path / "image_data.json"
    images_path.write_text(json.dumps([{"image_id": 1, "width": 10, "height": 10}]))
    objects_path = tmp_path / "objects.json"
    objects_path.write_text(json.dumps([{"image_id": 2, "objects": []}]))

    images = load_image_data(images_path)
    with pytest.raises(DataFormatError, match="image_id 2: image_id is not in image_data.json"):
        list(iter_vg_objects(objects_path, images=images, progress=False))


def test_image_data_rejects_bad_width(tmp_path: Path) -> None:
    path = tmp_path / "image_data.json"
    path.write_text(
        json.dumps([{"id": 1, "width": 10, "height": 10}, {"id": 2, "width": 0, "height": 5}])
    )

    with pytest.raises(DataFormatError, match='record 1, image_id 2: "width" is 0'):
        load_image_data(path)


# ----------------------------------------------------------------------------- streaming JSON


@needs_real_data
@pytest.mark.parametrize("buf_size", [7, 100, 4096])
def test_stream_equals_json_load(buf_size: int) -> None:
    path = vg_samples() / "minyus_attributes.json_samples.json"

    streamed = [item.value for item in iter_json_records(path, buf_size=buf_size)]

    assert streamed == json.loads(path.read_text())


@pytest.mark.parametrize("buf_size", [1, 2, 3, 5, 8])
def test_stream_values_cut_at_boundaries(tmp_path: Path, buf_size: int) -> None:
    values = [12345, -0.5e-3, True, None, 'caf\u00e9 \\u00e9 "q"', [], {}, {"a": [1, 2.5]}, 7]
    path = tmp_path / "values.json"
    path.write_text(
        " [\n" + " ,\n ".join(json.dumps(v) for v in values) + "\n] \n", encoding="utf-8"
    )

    items = list(iter_json_records(path, buf_size=buf_size))

    assert [item.value for item in items] == values
    assert [item.index for item in items] == list(range(len(values)))
    assert items[3].where == "record 3"


def test_stream_object_members(tmp_path: Path) -> None:
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"info": {"v": 1}, "images": [{"id": 1}, {"id": 2}], "empty": []}))

    items = list(iter_json_members(path, ["images", "empty"], buf_size=4))

    assert [(item.key, item.index, item.value) for item in items] == [
        ("info", None, {"v": 1}),
        ("images", 0, {"id": 1}),
        ("images", 1, {"id": 2}),
    ]


# The parser stops at the end of the offending token or on the byte after it: in "[1 2]" the
# number 2 ends only when "]" arrives, at byte offset 4.
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "line 1, column 1: the file is empty"),
        (
            "[1, 2] 3",
            "record 2, line 1, column 9, byte offset 8: extra data after the top-level value",
        ),
        (
            "[1, 2",
            "record 2, line 1, column 6, byte offset 5: the file ends in the middle of a value",
        ),
        ("[1 2]", "record 1, line 1, column 5, byte offset 4: invalid JSON (after array element"),
        (
            '[1, {"a": }]',
            "record 1, line 1, column 11, byte offset 10: invalid JSON (unallowed token",
        ),
        ('[1,\n {"a": 1 "b": 2}]', "record 1, line 2, column 12, byte offset 15: invalid JSON"),
        ("42", "line 1, column 1, byte offset 0: expected '[' or '{', found '4'"),
    ],
)
def test_stream_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)

    with pytest.raises(DataFormatError) as caught:
        list(iter_json_records(path, buf_size=3))

    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


def test_stream_error_after_many_blocks(tmp_path: Path) -> None:
    """An error far into the file is located exactly, not only to its 4 KiB block."""
    records = [
        {"image_id": i, "objects": [{"object_id": i, "names": ["tree"]}]} for i in range(3000)
    ]
    text = json.dumps(records, indent=1)
    broken_at = text.index('"image_id": 2500')
    path = tmp_path / "objects.json"
    path.write_text(text[:broken_at] + "x" + text[broken_at:])  # a stray byte before a key
    line = text.count("\n", 0, broken_at) + 1
    column = broken_at - text.rfind("\n", 0, broken_at)

    with pytest.raises(DataFormatError) as caught:
        list(iter_json_records(path, buf_size=4096))

    assert f"record 2500, line {line}, column {column}, byte offset {broken_at}:" in str(
        caught.value
    )


def test_stream_skips_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf [1, 2]")

    assert [item.value for item in iter_json_records(path)] == [1, 2]


def test_stream_members_errors(tmp_path: Path) -> None:
    path = tmp_path / "coco.json"
    path.write_text('{"images": [{"id": 1}, {"id": 2]}')

    with pytest.raises(DataFormatError) as caught:
        list(iter_json_members(path, ["images"]))

    assert '"images"[1], line 1, column 32, byte offset 31: invalid JSON' in str(caught.value)


def test_stream_members_rejects_array(tmp_path: Path) -> None:
    path = tmp_path / "coco.json"
    path.write_text("\n  [1]")

    with pytest.raises(DataFormatError, match="line 2, column 3, byte offset 3: expected '{'"):
        list(iter_json_members(path, ["images"]))


def test_stream_members_trailing_data(tmp_path: Path) -> None:
    path = tmp_path / "coco.json"
    path.write_text('{"images": []} {"images": []}')

    with pytest.raises(DataFormatError, match="extra data after the top-level value"):
        list(iter_json_members(path, ["images"]))


def test_stream_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'["ok", "\xff"]')

    with pytest.raises(DataFormatError, match="byte offset 8: invalid UTF-8"):
        list(iter_json_records(path))


# ----------------------------------------------------------------------------- IoU, words for detections


def test_box_iou_hand_computed() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 5], [0, 0, 10, 10], [20, 20, 30, 30], [3, 3, 3, 3]])

    iou = box_iou(a, b)

    # intersections 50, 50, 100, 0, 0; unions 150, 100, 100, 200, 100
    np.testing.assert_allclose(iou, [[1 / 3, 0.5, 1.0, 0.0, 0.0]])


def test_assign_words_to_detections_hand_computed() -> None:
    vg_boxes = [
        ((0, 0, 10, 10), ["dog", "brown"]),  # IoU 1/3 with det 0, 1.0 with det 1
        ((100, 100, 10, 10), ["ball"]),  # overlaps nothing
        ((0, 0, 10, 5), ["dog", "head"]),  # IoU 1/6 with det 0, 0.5 with det 1
    ]
    detected = np.array([[5, 0, 15, 10], [0, 0, 10, 10]], dtype=np.float32)

    result = assign_words_to_detections(vg_boxes, detected, iou_threshold=0.5)

    assert result.words == [[], ["dog", "brown", "head"]]
    assert result.matched_annotations == 4
    assert result.total_annotations == 5
    assert result.matched_share == pytest.approx(0.8)


def test_assign_words_lower_threshold() -> None:
    vg_boxes = [((0, 0, 10, 10), ["dog"])]
    detected = np.array([[5, 0, 15, 10]])

    assert assign_words_to_detections(vg_boxes, detected, iou_threshold=0.3).words == [["dog"]]
    assert assign_words_to_detections(vg_boxes, detected, iou_threshold=0.34).words == [[]]


def test_assign_words_no_detections() -> None:
    result = assign_words_to_detections([((0, 0, 1, 1), ["a"])], np.zeros((0, 4)))

    assert result.words == []
    assert result.matched_share == 0.0


def test_assign_words_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        assign_words_to_detections([], np.array([[0, 0, np.nan, 1]]))
