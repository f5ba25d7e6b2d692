"""Tests of mack.figures: what each plot draws, read back from the matplotlib artists."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mack import figures


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=60)
    return buffer.getvalue()


def text_extents(ax) -> list:
    renderer = FigureCanvasAgg(ax.get_figure()).get_renderer()
    return [text.get_window_extent(renderer) for text in ax.texts]


# ----------------------------------------------------------------------------- Figure 3


def test_figure3_draws_sorted_counts_and_line() -> None:
    counts = np.array([3, 50, 1, 19, 20, 7, 400, 2, 5, 11])

    figure = figures.figure3_region_counts(counts)
    ax = figure.axes[0]

    assert ax.get_yscale() == "log"
    steps = [line for line in ax.lines if len(line.get_xdata()) == counts.size]
    np.testing.assert_array_equal(steps[0].get_ydata(), np.sort(counts)[::-1])
    threshold_lines = [line for line in ax.lines if list(line.get_ydata()) == [20, 20]]
    assert len(threshold_lines) == 1
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[1] == "20 regions: 70 % of words have fewer"  # 3, 1, 19, 7, 2, 5, 11
    assert ax.get_xlabel() == "word index (sorted by region count)"
    assert ax.get_ylabel() == "number of regions (log scale)"
    assert png_bytes(figure).startswith(b"\x89PNG")


@pytest.mark.parametrize("counts", [[], [3, 0, 2], [[1, 2], [3, 4]]])
def test_figure3_rejects_bad_counts(counts) -> None:
    with pytest.raises(ValueError, match="positive region counts"):
        figures.figure3_region_counts(np.array(counts))


# ----------------------------------------------------------------------------- qualitative example


def test_qualitative_example_boxes_and_legend() -> None:
    image = np.full((60, 80, 3), 200, dtype=np.uint8)
    boxes = np.array([[0, 0, 80, 60], [10, 5, 30, 25], [40, 30, 70, 55]], dtype=float)
    matches = pd.DataFrame(
        {"unit": ["red car", "dog", "tree"], "region": [1, 2, 1], "cosine": [0.8, 0.6, 0.55]}
    )

    figure = figures.qualitative_example(image, boxes, matches, "A red car, a dog and a tree.")
    ax = figure.axes[0]

    rectangles = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
    drawn = sorted((r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rectangles)
    assert drawn == [(10, 5, 20, 20), (40, 30, 30, 25)]  # one box per matched region
    assert sorted(text.get_text() for text in ax.texts) == ["1, 3", "2"]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [
        "1. red car -> region 1 (cosine 0.80)",
        "2. dog -> region 2 (cosine 0.60)",
        "3. tree -> region 1 (cosine 0.55)",
    ]
    assert "A red car" in ax.get_title()
    assert png_bytes(figure).startswith(b"\x89PNG")


# ----------------------------------------------------------------------------- Figure 4


def test_tsne_pair_groups_and_labels_do_not_overlap() -> None:
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(60)]
    groups = ["animals", "colours", "other"] * 20
    before, after = rng.normal(size=(60, 2)), rng.normal(size=(60, 2))

    figure = figures.tsne_pair(before, after, words, groups)

    assert len(figure.axes) == 2
    for ax, points in zip(figure.axes, (before, after), strict=True):
        assert len(ax.collections) == 3  # one scatter per group
        offsets = np.concatenate([c.get_offsets() for c in ax.collections])
        assert sorted(map(tuple, offsets)) == sorted(map(tuple, points))
        labels = [text.get_text() for text in ax.texts]
        assert labels and set(labels) <= set(words)
        for first, second in itertools.combinations(text_extents(ax), 2):
            assert not first.overlaps(second)
    legend = figure.legends[0]
    assert sorted(text.get_text() for text in legend.get_texts()) == ["animals", "colours", "other"]
    assert png_bytes(figure).startswith(b"\x89PNG")


def test_tsne_pair_labels_only_the_first_words() -> None:
    points = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)

    figure = figures.tsne_pair(points, points, ["a", "b", "c", "d"], ["g"] * 4, label_words=2)

    for ax in figure.axes:
        assert sorted(text.get_text() for text in ax.texts) == ["a", "b"]


def test_tsne_pair_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="n = 3 words"):
        figures.tsne_pair(np.zeros((3, 2)), np.zeros((2, 2)), ["a", "b", "c"], ["g"] * 3)


def test_label_points_skips_crowded_labels() -> None:
    figure = Figure(figsize=(2, 2))
    ax = figure.add_subplot()
    points = np.zeros((5, 2))  # five points on one spot: one label fits in each of 4 positions
    ax.scatter(points[:, 0], points[:, 1], s=22)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)

    placed = figures.label_points(ax, points, ["one", "two", "three", "four", "five"], ["k"] * 5)

    assert placed == len(ax.texts) == 4
    assert [text.get_text() for text in ax.texts] == ["one", "two", "three", "four"]
    for first, second in itertools.combinations(text_extents(ax), 2):
        assert not first.overlaps(second)
