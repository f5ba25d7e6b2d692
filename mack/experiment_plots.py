"""Plots for notebooks 03-06: each takes computed results and returns a matplotlib Figure.

Table and figure numbers are those of the MACK paper (Huang, Wang, Zeng and Wang, "MACK:
Multimodal Aligned Conceptual Knowledge for Unpaired Image-text Matching").

- `training_curves`: the fine-tuning losses of each Table 1 variant, one panel per variant.
- `lifted_queries_photos`: Figure 2's view with photos, the top-3 images before and after
  re-ranking for a few captions, the true image framed.
- `lifted_queries_table`: the same view as a table of image indices and scores, for tiers
  without photos.
- `hyperparameter_heatmap`: re-ranked rsum over k and lambda (Table 5's finer grid).
- `region_cap_curve`: Table 4, rsum against the share p of annotations that the region cap keeps.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mack.finetune import TrainingLog, plot_training_curve

TRUE_COLOUR = "tab:green"
THUMBNAIL_PIXELS = 320


def training_curves(logs: Mapping[str, TrainingLog], title: str | None = None) -> Figure:
    """Draw L_w, L_r and their sum over epochs for each variant, one panel each."""
    if not logs:
        raise ValueError("no training log to draw: pass at least one variant's TrainingLog")
    figure = Figure(figsize=(4.6 * len(logs), 3.6), layout="constrained")
    axes = figure.subplots(1, len(logs), squeeze=False)[0]
    for ax, (variant, log) in zip(axes, logs.items(), strict=True):
        plot_training_curve(log, ax=ax)
        ax.set_title(variant)
        ax.legend(fontsize="small")
    figure.suptitle(title or "Fine-tuning loss per epoch")
    return figure


def _caption_title(lifted_row: pd.Series, caption: str, width: int) -> str:
    wrapped = textwrap.fill(f"“{caption}”", width)
    return (
        f"{wrapped}\ntrue image {lifted_row['true'][0]}: rank {lifted_row['rank_before']} "
        f"→ {lifted_row['rank_after']}"
    )


def _score_text(base: float, mack: float | None) -> str:
    mack_text = "n/a" if mack is None else f"{mack:.3f}"
    return f"base {base:.3f}\nMACK {mack_text}"


def _thumbnail(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as photo:
        photo = photo.convert("RGB")
        photo.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        return np.asarray(photo)


def _frame_true(ax) -> None:
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(TRUE_COLOUR)
        spine.set_linewidth(5)


def lifted_queries_photos(
    lifted: pd.DataFrame,
    image_paths: Sequence[str | Path],
    captions: Sequence[str],
    title: str | None = None,
) -> Figure:
    """Draw, for each text query, its top-3 photos before and after re-ranking (Figure 2's view).

    lifted: `mack.experiments.lifted_queries` output for direction text_to_image.
    image_paths: the photo of each test image in order. The true image has a green frame.
    """
    if lifted.empty:
        raise ValueError("no lifted query to draw: the re-ranking moved no true match up")
    top = len(lifted.iloc[0]["top_before"])
    figure = Figure(figsize=(2.3 * 2 * top + 0.8, 3.4 * len(lifted)), layout="constrained")
    rows = figure.subfigures(len(lifted), 1, squeeze=False)[:, 0]
    for subfigure, (_, row) in zip(rows, lifted.iterrows(), strict=True):
        subfigure.suptitle(
            _caption_title(row, captions[row["query"]], 110), fontsize="medium", ha="left", x=0.01
        )
        halves = subfigure.subfigures(1, 2, wspace=0.04)
        for half, when, heading in zip(
            halves, ("before", "after"), ("base model", "after MACK re-ranking"), strict=True
        ):
            half.supxlabel(heading, fontsize="medium", fontweight="bold")
            for place, ax in enumerate(half.subplots(1, top)):
                _draw_candidate(ax, row, when, place, image_paths)
    figure.suptitle(title or "Captions whose true image MACK re-ranking lifts (green frame)")
    return figure


def _draw_candidate(ax, row: pd.Series, when: str, place: int, image_paths) -> None:
    """Draw one ranked photo with its rank, scores and, for the true image, a green frame."""
    image = row[f"top_{when}"][place]
    ax.imshow(_thumbnail(Path(image_paths[image])))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    label = "true image" if image in row["true"] else f"image {image}"
    ax.set_title(f"#{place + 1}: {label}", fontsize="small")
    ax.set_xlabel(
        _score_text(row[f"base_{when}"][place], row[f"mack_{when}"][place]), fontsize="small"
    )
    if image in row["true"]:
        _frame_true(ax)


def lifted_queries_table(
    lifted: pd.DataFrame, captions: Sequence[str], title: str | None = None
) -> Figure:
    """Draw Figure 2's view as tables: per caption, the top images before and after re-ranking.

    Each table lists rank, image index, base score and MACK score before and after; the true
    image's cells are green. lifted: `mack.experiments.lifted_queries` for text_to_image.
    """
    if lifted.empty:
        raise ValueError("no lifted query to draw: the re-ranking moved no true match up")
    top = len(lifted.iloc[0]["top_before"])
    figure = Figure(figsize=(9.0, (1.05 + 0.3 * top) * len(lifted) + 0.4), layout="constrained")
    axes = figure.subplots(len(lifted), 1, squeeze=False)[:, 0]
    header = ["rank", "before: image", "base", "MACK", "after: image", "base", "MACK"]
    for ax, (_, row) in zip(axes, lifted.iterrows(), strict=True):
        ax.axis("off")
        ax.set_title(_caption_title(row, captions[row["query"]], 95), fontsize="small", loc="left")
        cells, colours = _lifted_cells(row, top)
        table = ax.table(
            cellText=cells, cellColours=colours, colLabels=header, loc="center", cellLoc="center"
        )
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.scale(1.0, 1.25)
    figure.suptitle(
        title or "Before (left) and after (right) MACK re-ranking; true image in green",
        fontsize="medium",
    )
    return figure


def _lifted_cells(row: pd.Series, top: int) -> tuple[list[list[str]], list[list[str]]]:
    """Return the table text and cell colours of one lifted query."""
    cells, colours = [], []
    for place in range(top):
        line, shades = [f"#{place + 1}"], ["white"]
        for when in ("before", "after"):
            image = row[f"top_{when}"][place]
            mack = row[f"mack_{when}"][place]
            line += [str(image), f"{row[f'base_{when}'][place]:.3f}",
                     "n/a" if mack is None else f"{mack:.3f}"]  # fmt: skip
            shade = "#b7e4b0" if image in row["true"] else "white"
            shades += [shade] * 3
        cells.append(line)
        colours.append(shades)
    return cells, colours


def hyperparameter_heatmap(
    grid: pd.DataFrame,
    base_rsum: float | None = None,
    defaults: tuple[int, float] | None = (15, 0.1),
    title: str | None = None,
) -> Figure:
    """Draw re-ranked rsum over k (rows) and lambda (columns) with each cell's value written in.

    grid: `mack.experiments.hyperparameter_grid` output. defaults: the (k, lambda) cell to
    outline, by default the MACK paper's k = 15 and lambda = 0.1. base_rsum: the base model
    alone, given in the title.
    """
    values = grid.to_numpy(dtype=float)
    figure = Figure(figsize=(1.0 * values.shape[1] + 2.8, 0.55 * values.shape[0] + 1.8),
                    layout="constrained")  # fmt: skip
    ax = figure.add_subplot()
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [f"{lam:g}" for lam in grid.columns])
    ax.set_yticks(range(values.shape[0]), [str(k) for k in grid.index])
    ax.set_xlabel("λ (weight of the MACK score)")
    ax.set_ylabel("k (candidates re-ranked per query)")
    middle = (np.nanmin(values) + np.nanmax(values)) / 2
    for (i, j), value in np.ndenumerate(values):
        colour = "black" if value > middle else "white"
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=colour, fontsize="small")
    if defaults is not None and defaults[0] in grid.index and defaults[1] in grid.columns:
        i, j = grid.index.get_loc(defaults[0]), grid.columns.get_loc(defaults[1])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    figure.colorbar(image, ax=ax, label="rsum, base + MACK")
    base_text = "" if base_rsum is None else f" (base alone: {base_rsum:.1f})"
    ax.set_title(title or f"Re-ranked rsum over k and λ{base_text}; red: paper default")
    return figure


def region_cap_curve(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Draw Table 4: rsum against p, the share of annotations kept, one line per dataset.

    table: `mack.experiments.region_cap_table` output. Left: base + MACK (Table 4's metric);
    right: MACK alone. Each point is labelled with its cap f.
    """
    datasets = [name[: -len("_mack_rsum")] for name in table.columns if name.endswith("_mack_rsum")]
    figure = Figure(figsize=(9.5, 3.8), layout="constrained")
    axes = figure.subplots(1, 2)
    panels = (("_rsum", "rsum, base + MACK"), ("_mack_rsum", "rsum, MACK alone"))
    for ax, (suffix, label) in zip(axes, panels, strict=True):
        for dataset in datasets:
            ax.plot(table["p_percent"], table[f"{dataset}{suffix}"], marker="o", label=dataset)
            points = zip(table.index, table["p_percent"], table[f"{dataset}{suffix}"], strict=True)
            for number, (cap, p, rsum) in enumerate(points):
                # Alternate above and below, so that labels of close caps do not overlap.
                offset = (4, 6) if number % 2 == 0 else (4, -12)
                ax.annotate(f"f={cap}", (p, rsum), textcoords="offset points", xytext=offset,
                            fontsize="x-small")  # fmt: skip
        ax.set_xlim(0, 112)
        ax.margins(y=0.15)
        ax.set_xlabel("p, share of word-region annotations kept (%)")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
    figure.suptitle(title or "Region cap f: rsum against the share of annotations kept")
    return figure
