"""Bottom-up TSV, SCAN precomp and similarity matrix readers/writers, on good and broken files."""

from __future__ import annotations

import base64
import csv
import struct
from pathlib import Path

import numpy as np
import pytest

from mack import config
from mack.data import DataFormatError
from mack.data.bottomup import BottomUpRow, iter_bottomup_tsv, write_bottomup_tsv
from mack.data.precomp import load_precomp, read_captions, write_precomp
from mack.data.similarity import load_similarity, save_similarity

from helpers import needs_real_data


def make_rows(dim: int = 6, seed: int = 0) -> list[BottomUpRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for image_id, num_boxes in ((101, 3), (102, 0), (103, 2)):
        xy = rng.uniform(0, 50, (num_boxes, 2)).astype(np.float32)
        boxes = np.concatenate(
            [xy, xy + rng.uniform(1, 20, (num_boxes, 2)).astype(np.float32)], axis=1
        )
        features = rng.standard_normal((num_boxes, dim)).astype(np.float32)
        rows.append(BottomUpRow(image_id, 640, 480, boxes, features))
    return rows


def b64_floats(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


# ----------------------------------------------------------------------------- bottom-up TSV


def test_bottomup_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "features.tsv"
    rows = make_rows()

    assert write_bottomup_tsv(path, rows) == 3
    read = list(iter_bottomup_tsv(path, progress=False))

    assert [row.image_id for row in read] == [101, 102, 103]
    assert [row.line for row in read] == [1, 2, 3]
    for original, loaded in zip(rows, read, strict=True):
        np.testing.assert_array_equal(loaded.boxes, original.boxes)
        np.testing.assert_array_equal(loaded.features.reshape(-1), original.features.reshape(-1))
        assert loaded.features.dtype == np.float32
    assert read[1].features.shape == (0, 6)
    assert read[0].offset == 0
    assert read[1].offset == read[0].next_offset
    assert read[2].next_offset == path.stat().st_size


def test_bottomup_line_layout(tmp_path: Path) -> None:
    """The written bytes match a line built by hand with struct and base64."""
    path = tmp_path / "one.tsv"
    boxes = np.array([[1, 2, 3, 4]], dtype=np.float32)
    features = np.array([[0.5, -1.0]], dtype=np.float32)

    write_bottomup_tsv(
        path, [{"image_id": 9, "image_w": 10, "image_h": 20, "boxes": boxes, "features": features}]
    )

    expected = f"9\t10\t20\t1\t{b64_floats(1, 2, 3, 4)}\t{b64_floats(0.5, -1.0)}\n"
    assert path.read_text() == expected


def test_bottomup_reads_csv_writer_output(tmp_path: Path) -> None:
    """Rows written the way the original extraction script writes them: csv.DictWriter, "\\r\\n"."""
    path = tmp_path / "csv.tsv"
    fieldnames = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, delimiter="\t", fieldnames=fieldnames)
        writer.writerow(
            {"image_id": 5, "image_w": 8, "image_h": 6, "num_boxes": 2,
             "boxes": b64_floats(0, 0, 4, 4, 1, 1, 2, 3), "features": b64_floats(1, 2, 3, 4, 5, 6)}
        )  # fmt: skip
        writer.writerow(
            {"image_id": 6, "image_w": 8, "image_h": 6, "num_boxes": 1,
             "boxes": b64_floats(0, 0, 1, 1), "features": b64_floats(7, 8, 9)}
        )  # fmt: skip

    rows = list(iter_bottomup_tsv(path, progress=False))

    assert path.read_bytes().count(b"\r\n") == 2
    assert [row.image_id for row in rows] == [5, 6]
    np.testing.assert_array_equal(rows[0].boxes, [[0, 0, 4, 4], [1, 1, 2, 3]])
    np.testing.assert_array_equal(rows[0].features, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(rows[1].features, [[7, 8, 9]])


def test_bottomup_resume_from_offset(tmp_path: Path) -> None:
    path = tmp_path / "features.tsv"
    write_bottomup_tsv(path, make_rows())
    first = next(iter(iter_bottomup_tsv(path, progress=False)))

    resumed = list(
        iter_bottomup_tsv(path, offset=first.next_offset, line=first.line + 1, progress=False)
    )

    assert [row.image_id for row in resumed] == [102, 103]
    assert [row.line for row in resumed] == [2, 3]
    with pytest.raises(ValueError, match="not the start of a line"):
        next(iter_bottomup_tsv(path, offset=first.next_offset - 3, progress=False))


def test_bottomup_skips_header_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "features.tsv"
    write_bottomup_tsv(path, make_rows())
    path.write_bytes(
        b"image_id\timage_w\timage_h\tnum_boxes\tboxes\tfeatures\n" + path.read_bytes() + b"\n\n"
    )

    rows = list(iter_bottomup_tsv(path, progress=False))

    assert [row.line for row in rows] == [2, 3, 4]


def test_bottomup_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "features.tsv"
    write_bottomup_tsv(path, make_rows())
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # cut inside the features of image 103

    rows = iter_bottomup_tsv(path, progress=False)
    assert [next(rows).image_id, next(rows).image_id] == [101, 102]
    with pytest.raises(DataFormatError) as caught:
        next(rows)

    message = str(caught.value)
    assert str(path) in message
    assert "line 3, image_id 103" in message
    assert 'field "features"' in message


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"1\t10\t10\t1\t{b64_floats(0, 0, 1, 1)}", "found 5 tab-separated fields, expected 6"),
        (
            f"x1\t10\t10\t1\t{b64_floats(0, 0, 1, 1)}\t{b64_floats(1)}",
            "field \"image_id\": b'x1' is not",
        ),
        (
            f"1\t0\t10\t1\t{b64_floats(0, 0, 1, 1)}\t{b64_floats(1)}",
            'field "image_w": 0 is below 1',
        ),
        (
            f"1\t10\t10\t2\t{b64_floats(0, 0, 1, 1)}\t{b64_floats(1, 2)}",
            'field "boxes": 4 values, expected',
        ),
        (
            f"1\t10\t10\t2\t{b64_floats(0, 0, 1, 1, 0, 0, 1, 1)}\t{b64_floats(1, 2, 3)}",
            "do not split into",
        ),
        (f"1\t10\t10\t1\t{b64_floats(0, 0, 1, 1)}\tAB!=", 'field "features": invalid base64'),
        (f"1\t10\t10\t1\t{b64_floats(0, 0, 1, 1)}\tAAAAAAA=", "not a whole number of float32"),
        (
            f"1\t10\t10\t1\t{b64_floats(0, 0, 1, 1)}\t{b64_floats(float('nan'))}",
            "region 0 contains NaN",
        ),
        (f"1\t10\t10\t1\t{b64_floats(5, 0, 1, 1)}\t{b64_floats(1)}", "x2 < x1"),
        (f"1\t10\t10\t1\t{b64_floats(0, 0, 1, 1)}\t", 'field "features": 0 values'),
    ],
)
def test_bottomup_malformed_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.tsv"
    good = f"7\t10\t10\t1\t{b64_floats(0, 0, 1, 1)}\t{b64_floats(1)}"
    path.write_text(f"{good}\r\n{line}\r\n")

    rows = iter_bottomup_tsv(path, progress=False)
    next(rows)
    with pytest.raises(DataFormatError) as caught:
        next(rows)

    assert str(path) in str(caught.value)
    assert "line 2" in str(caught.value)
    assert problem in str(caught.value)


def test_bottomup_inconsistent_dim(tmp_path: Path) -> None:
    path = tmp_path / "mixed.tsv"
    rows = make_rows(dim=6)
    rows[2].features = rows[2].features[:, :4]
    with pytest.raises(DataFormatError, match="row 2, image_id 103.*F = 4, earlier rows have 6"):
        write_bottomup_tsv(path, rows)
    assert not path.exists()

    lines = [
        f"1\t10\t10\t1\t{b64_floats(0, 0, 1, 1)}\t{b64_floats(1, 2)}",
        f"2\t10\t10\t1\t{b64_floats(0, 0, 1, 1)}\t{b64_floats(1, 2, 3)}",
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match="line 2, image_id 2.*feature size 3.*expected 2"):
        list(iter_bottomup_tsv(path, progress=False))
    with pytest.raises(DataFormatError, match="line 1, image_id 1.*feature size 2.*expected 3"):
        list(iter_bottomup_tsv(path, dim=3, progress=False))


def test_bottomup_writer_rejects_nan(tmp_path: Path) -> None:
    rows = make_rows()
    rows[0].features[1, 2] = np.inf

    with pytest.raises(DataFormatError, match='row 0, image_id 101, field "features": region 1'):
        write_bottomup_tsv(tmp_path / "x.tsv", rows)


# ----------------------------------------------------------------------------- precomp


@needs_real_data
def test_precomp_with_real_captions(tmp_path: Path) -> None:
    """f30k_test_caps.txt has 5000 captions and no newline after the last one."""
    captions_file = config.data_root() / "captions" / "f30k_test_caps.txt"
    (tmp_path / "test_caps.txt").symlink_to(captions_file)
    features = np.random.default_rng(0).standard_normal((1000, 3, 4)).astype(np.float32)
    np.save(tmp_path / "test_ims.npy", features)

    loaded, captions = load_precomp(tmp_path, "test")

    raw = captions_file.read_bytes()
    assert not raw.endswith(b"\n")
    assert len(captions) == 5000
    assert captions[0] == "The man with pierced ears is wearing glasses and an orange hat ."
    assert captions[-1] == raw[raw.rindex(b"\n") + 1 :].decode().strip()
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, features)


@needs_real_data
def test_precomp_caption_count_mismatch(tmp_path: Path) -> None:
    (tmp_path / "test_caps.txt").symlink_to(config.data_root() / "captions" / "f30k_test_caps.txt")
    np.save(tmp_path / "test_ims.npy", np.zeros((999, 2, 4), dtype=np.float32))

    with pytest.raises(DataFormatError) as caught:
        load_precomp(tmp_path, "test")

    message = str(caught.value)
    assert str(tmp_path / "test_caps.txt") in message
    assert "5000 captions" in message
    assert "999 images" in message
    assert "needs 4995" in message


def test_precomp_round_trip(tmp_path: Path) -> None:
    features = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    captions = [f"caption {i}" for i in range(10)]

    write_precomp(tmp_path, "dev", features, captions)
    loaded, read = load_precomp(tmp_path, "dev")

    np.testing.assert_array_equal(loaded, features)
    assert read == captions
    assert (tmp_path / "dev_caps.txt").read_text().endswith("caption 9\n")


def test_precomp_truncated_npy(tmp_path: Path) -> None:
    write_precomp(tmp_path, "test", np.ones((4, 2, 8), dtype=np.float32), ["a"] * 20)
    path = tmp_path / "test_ims.npy"
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(DataFormatError) as caught:
        load_precomp(tmp_path, "test")

    assert str(path) in str(caught.value)
    assert "truncated" in str(caught.value)


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((4, 8), dtype=np.float32), "expected 3 dimensions"),
        (np.zeros((4, 2, 8), dtype=np.float64), "dtype float64, expected float32"),
    ],
)
def test_precomp_wrong_array(tmp_path: Path, array: np.ndarray, problem: str) -> None:
    np.save(tmp_path / "test_ims.npy", array)
    (tmp_path / "test_caps.txt").write_text("a\n" * 20)

    with pytest.raises(DataFormatError, match=problem):
        load_precomp(tmp_path, "test")


def test_precomp_nan_rows(tmp_path: Path) -> None:
    features = np.zeros((100, 2, 3), dtype=np.float32)
    features[99, 1, 2] = np.nan  # the last row is always in the sample
    np.save(tmp_path / "test_ims.npy", features)
    (tmp_path / "test_caps.txt").write_text("a\n" * 500)

    with pytest.raises(DataFormatError, match="image row 99 contains NaN"):
        load_precomp(tmp_path, "test")

    features[99, 1, 2] = 0
    features[50, 0, 0] = np.inf
    np.save(tmp_path / "test_ims.npy", features)
    with pytest.raises(DataFormatError, match="image row 50"):
        load_precomp(tmp_path, "test", check_all_rows=True)


def test_precomp_blank_caption_line(tmp_path: Path) -> None:
    np.save(tmp_path / "test_ims.npy", np.zeros((1, 2, 3), dtype=np.float32))
    (tmp_path / "test_caps.txt").write_text("a\nb\n\nc\nd\ne\n")

    with pytest.raises(DataFormatError, match=r"test_caps.txt, line 3: empty caption"):
        load_precomp(tmp_path, "test")


def test_precomp_rows_per_caption(tmp_path: Path) -> None:
    per_image = np.arange(2 * 1 * 2, dtype=np.float32).reshape(2, 1, 2)
    np.save(tmp_path / "train_ims.npy", np.repeat(per_image, 5, axis=0))
    (tmp_path / "train_caps.txt").write_text("".join(f"c{i}\n" for i in range(10)))

    with pytest.raises(DataFormatError, match="pass rows_per_image=5"):
        load_precomp(tmp_path, "train")
    features, _ = load_precomp(tmp_path, "train", rows_per_image=5)
    np.testing.assert_array_equal(features, per_image)


def test_read_captions_crlf(tmp_path: Path) -> None:
    path = tmp_path / "caps.txt"
    path.write_bytes(b"a dog .\r\nA cat\r\nlast line")

    assert read_captions(path) == ["a dog .", "A cat", "last line"]


# ----------------------------------------------------------------------------- similarity


def test_similarity_round_trip(tmp_path: Path) -> None:
    sims = np.random.default_rng(1).standard_normal((3, 15)).astype(np.float32)
    path = save_similarity(tmp_path / "clip_f30k.npy", sims)

    loaded = load_similarity(path, n_images=3, n_texts=15)

    np.testing.assert_array_equal(loaded, sims)
    assert loaded.dtype == np.float32


def test_similarity_transposed(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.zeros((15, 3)))

    with pytest.raises(DataFormatError, match=r"shape \(15, 3\), expected.*\(3, 15\). Pass sims.T"):
        load_similarity(tmp_path / "s.npy", n_images=3, n_texts=15)


def test_similarity_nan_position(tmp_path: Path) -> None:
    sims = np.zeros((2000, 4))
    sims[1500, 2] = np.nan
    np.save(tmp_path / "s.npy", sims)

    with pytest.raises(DataFormatError, match=r"s.npy: score at image 1500, text 2 is nan"):
        load_similarity(tmp_path / "s.npy")


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((2, 3, 4)), "expected 2 dimensions"),
        (np.zeros((2, 3), dtype=np.int64), "dtype int64"),
    ],
)
def test_similarity_wrong_array(tmp_path: Path, array: np.ndarray, problem: str) -> None:
    np.save(tmp_path / "s.npy", array)

    with pytest.raises(DataFormatError, match=problem):
        load_similarity(tmp_path / "s.npy")


def test_similarity_truncated_and_unsaved(tmp_path: Path) -> None:
    path = save_similarity(tmp_path / "s.npy", np.ones((10, 50), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-7])

    with pytest.raises(DataFormatError, match=r"s.npy: cannot read the .npy file .*truncated"):
        load_similarity(path)
    with pytest.raises(DataFormatError, match="score at image 0, text 1 is inf"):
        save_similarity(tmp_path / "t.npy", np.array([[0.0, np.inf]]))
    assert not (tmp_path / "t.npy").exists()
