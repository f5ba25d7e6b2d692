"""Plots for notebooks 01, 02 and 07: each takes computed data and returns a matplotlib Figure.

- `figure3_region_counts`: Figure 3, regions per word (log scale) over words sorted by count.
- `qualitative_example`: a photo with the regions that a text's units matched, labelled by unit.
- `tsne_pair`: Figure 4, t-SNE of the prototypes before and after fine-tuning, coloured by group.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

FIGURE3_THRESHOLD = 20


def figure3_region_counts(
    counts: np.ndarray, threshold: int = FIGURE3_THRESHOLD, title: str | None = None
) -> Figure:
    """Draw Figure 3: the region count of every word, largest first, on a log axis.

    counts: (K,) regions per word. A dashed line marks `threshold` regions and the legend gives
    the share of words with fewer.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0 or (counts < 1).any():
        raise ValueError(
            f"counts must be a non-empty 1-D array of positive region counts, got {counts!r:.80}"
        )
    ordered = np.sort(counts)[::-1]
    share = float(np.mean(counts < threshold))
    index = np.arange(1, ordered.size + 1)

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = figure.add_subplot()
    ax.fill_between(index, ordered, 1, step="mid", alpha=0.25, color="tab:blue")
    ax.step(index, ordered, where="mid", color="tab:blue", label="regions of each word")
    ax.axhline(threshold, color="tab:red", linestyle="--",
               label=f"{threshold} regions: {100 * share:.0f} % of words have fewer")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlim(1, ordered.size)
    ax.set_ylim(bottom=0.8)
    ax.set_xlabel("word index (sorted by region count)")
    ax.set_ylabel("number of regions (log scale)")
    ax.set_title(title or f"Regions per word, {ordered.size} words")
    ax.legend(loc="upper right")
    ax.grid(True, which="major", alpha=0.3)
    return figure


def qualitative_example(
    image, boxes: np.ndarray, matches: pd.DataFrame, caption: str, title: str | None = None
) -> Figure:
    """Draw a photo with the region matched by each unit of a caption.

    image: a PIL image or (H, W, 3) array; boxes: (n_regions, 4) xyxy pixels of the image's regions;
    matches: `mack.analysis.matched_regions` output (unit, region, cosine). Each matched region gets
    one box tagged with the numbers of its units, and the legend lists "unit -> region (cosine)".
    """
    from matplotlib import colormaps
    from matplotlib.patches import Patch, Rectangle

    boxes = np.asarray(boxes, dtype=np.float64)
    figure = Figure(figsize=(7.0, 6.2), layout="constrained")
    ax = figure.add_subplot()
    ax.imshow(np.asarray(image))
    colours = colormaps["tab10"]
    regions = list(dict.fromkeys(int(region) for region in matches["region"]))
    colour_of = {region: colours(i % 10) for i, region in enumerate(regions)}
    for region in regions:
        numbers = [str(i + 1) for i, r in enumerate(matches["region"]) if int(r) == region]
        x1, y1, x2, y2 = boxes[region]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                               edgecolor=colour_of[region], linewidth=2.5))  # fmt: skip
        ax.text(x1 + 3, y1 + 3, ", ".join(numbers), color="white", fontsize=9, va="top",
                bbox={"facecolor": colour_of[region], "edgecolor": "none", "pad": 1.5})  # fmt: skip

    handles = [
        Patch(facecolor="none", edgecolor=colour_of[int(row.region)], linewidth=2.5,
              label=f"{i + 1}. {row.unit} -> region {int(row.region)} (cosine {row.cosine:.2f})")
        for i, row in enumerate(matches.itertuples(index=False))
    ]  # fmt: skip
    ax.set_axis_off()
    ax.set_title(title or "\n".join(textwrap.wrap(f"“{caption}”", 70)), fontsize=10)
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=8,
                  ncol=1 if len(handles) <= 4 else 2, frameon=False)  # fmt: skip
    return figure


def tsne_pair(
    before: np.ndarray,
    after: np.ndarray,
    words: Sequence[str],
    groups: Sequence[str],
    *,
    titles: tuple[str, str] = (
        "pretrained prototypes $v_k$",
        "fine-tuned prototypes $u_k = W v_k$",
    ),
    label_words: int = 100,
) -> Figure:
    """Draw Figure 4: two t-SNE maps of the same words side by side, coloured by semantic group.

    before, after: (n, 2) embeddings; words, groups: n names and group labels. The first
    `label_words` words (pass them most frequent first) are written next to their points.
    """
    before, after = np.asarray(before), np.asarray(after)
    if (
        before.shape != (len(words), 2)
        or after.shape != (len(words), 2)
        or len(groups) != len(words)
    ):
        raise ValueError(
            f"need (n, 2) embeddings and n groups for n = {len(words)} words, got "
            f"{before.shape}, {after.shape} and {len(groups)} groups"
        )
    names = sorted(set(groups))
    colours = _group_colours(names)
    labels = np.asarray(groups)

    figure = Figure(figsize=(13.0, 6.4), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, points, title in zip(axes, (before, after), titles, strict=True):
        for name in names:
            mask = labels == name
            ax.scatter(points[mask, 0], points[mask, 1], s=22, color=colours[name], label=name)
        ax.set_title(title)
        ax.set_xlabel("t-SNE dimension 1")
        ax.set_ylabel("t-SNE dimension 2")
        ax.set_xticks([])
        ax.set_yticks([])
    handles, legend_labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, legend_labels, loc="outside right center", title="semantic group",
                  fontsize=8, title_fontsize=9)  # fmt: skip
    for ax, points in zip(axes, (before, after), strict=True):
        label_points(ax, points, words[:label_words], [_darker(colours[name]) for name in groups])
    return figure


def label_points(ax, points: np.ndarray, words: Sequence[str], colours: Sequence) -> int:
    """Write words[i] beside points[i] where it overlaps no point and no earlier label; return how
    many labels fit.

    points: (n, 2) data coordinates of every point drawn. Each label tries four positions around its
    point, and a label that fits nowhere is left out, so earlier (more important) words win. The figure is drawn once
    and its layout engine is then switched off, so the checked label extents stay valid.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    figure = ax.get_figure()
    if not hasattr(figure.canvas, "get_renderer"):
        FigureCanvasAgg(figure)
    figure.canvas.draw()
    figure.set_layout_engine("none")
    renderer = figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    radius = 2.5 * figure.dpi / 72  # the markers' radius (s=22 points^2) in pixels
    pad = 1.0 * figure.dpi / 72  # free space kept around each label, in pixels
    pixels = ax.transData.transform(points)
    markers = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius) for x, y in pixels]
    labels: list = []
    offsets = ((4, 2, "left", "bottom"), (-4, 2, "right", "bottom"), (4, -2, "left", "top"),
               (-4, -2, "right", "top"))  # fmt: skip
    for i, word in enumerate(words):
        obstacles = labels + markers[:i] + markers[i + 1 :]
        for dx, dy, ha, va in offsets:
            text = ax.annotate(word, points[i], xytext=(dx, dy), textcoords="offset points",
                               ha=ha, va=va, fontsize=7, color=colours[i])  # fmt: skip
            box = text.get_window_extent(renderer)
            box = Bbox.from_extents(box.x0 - pad, box.y0 - pad, box.x1 + pad, box.y1 + pad)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1
            inside = inside and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in obstacles):
                labels.append(box)
                break
            text.remove()
    return len(labels)


def _group_colours(names: Sequence[str]) -> dict[str, tuple]:
    """Give each group a distinct colour (tab20, then tab20b); "other" is grey."""
    from matplotlib import colormaps

    palette = [colormaps["tab20"](i) for i in range(20)] + [
        colormaps["tab20b"](i) for i in range(20)
    ]
    named = [name for name in names if name != "other"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(named)}
    colours["other"] = (0.6, 0.6, 0.6, 1.0)
    return colours


def _darker(colour: tuple, factor: float = 0.65) -> tuple:
    """Scale an RGBA colour's RGB towards black, so that light group colours stay legible as text."""
    red, green, blue, alpha = colour
    return (red * factor, green * factor, blue * factor, alpha)
