import json
import os
import stat

import numpy as np
import pytest

from mack.io import atomic_write, save_npz, write_json


def test_atomic_write_replaces_on_success(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with atomic_write(path, "w") as handle:
        handle.write("new")
    assert path.read_text() == "new"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as handle:
        handle.write("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_write_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "out.bin") as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644


def test_write_json_converts_numpy(tmp_path):
    write_json(tmp_path / "a.json", {"x": np.float32(1.5), "v": np.arange(3)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "v": [0, 1, 2]}


def test_save_npz_round_trip(tmp_path):
    save_npz(tmp_path / "a.npz", a=np.arange(4, dtype=np.float32))
    with np.load(tmp_path / "a.npz") as data:
        np.testing.assert_array_equal(data["a"], np.arange(4, dtype=np.float32))


def test_markdown_table_integers_and_significant_digits():
    import pandas as pd

    from mack.report import markdown_table

    table = pd.DataFrame({"count": [395.0, 16203.0], "share": [0.674, 0.7201]}, index=["a", "b"])
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in markdown_table(table).splitlines()
    ]
    assert rows[2] == ["a", "395", "0.674"]
    assert rows[3] == ["b", "16203", "0.7201"]
