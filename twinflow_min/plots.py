"""PNG figures drawn with pillow only (no matplotlib): scatter panels, line / loss curves, image
grids, the map of trained (t, t_tgt) pairs and toy trajectories.

Paper: TwinFlow (arXiv:2512.05150), the toy figures (real and fake trajectories, 1-NFE vs multi-step
samples) and the sample grids. The official code has no plotting module; `image_grid_png` follows
DiT `sample.py` -> `torchvision.utils.save_image(..., normalize=True, value_range=(-1, 1))`. Project
issues: #3 (per-term loss curves), #4 (where the training (t, t_tgt) pairs fall), #5 (sample
figures).

Time convention (for `trajectory_map_png`): x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is
data, negative t is the fake (twin) branch.

Axis transform of every plot (the tests rely on it): a plot box with top-left pixel (left, top) and
size (width, height) sends data (x, y) to the pixel
    px = round(left + (x - x_lo) / (x_hi - x_lo) * (width - 1)),
    py = round(top + (y_hi - y) / (y_hi - y_lo) * (height - 1)).
The drawing primitives (fonts, text, ticks, the `Axes` transform, dot stamping, square panels) live
in `twinflow_min/canvas.py`; this module holds the public figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

# Layout and colour constants of the figure furniture are defined in canvas.py and re-exported here.
from twinflow_min.canvas import (  # noqa: F401
    BACKGROUND,
    FIGURE_TITLE_HEIGHT,
    FONT_LARGE,
    FONT_MEDIUM,
    FONT_SMALL,
    FRAME,
    GRID,
    INK,
    LEGEND_ROW,
    PANEL_BOTTOM,
    PANEL_LEFT,
    PANEL_RIGHT,
    PANEL_TITLE_HEIGHT,
    PIXEL_CLIP,
    Axes,
    as_array,
    data_range,
    draw_text,
    legend_lines,
    draw_title,
    save_png,
    square_panels,
    stamp,
    text_width,
)

# Series colours. Series named "data"/"reference" are light grey; the others take PALETTE in order
# (tab10 hues).
START_COLOUR = (120, 120, 120)  # trajectory start dots
DATA_COLOUR = (190, 190, 190)
PALETTE = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
]
# trajectory map: t >= 0 (real branch), t < 0 (fake branch)
REAL_COLOUR, FAKE_COLOUR = PALETTE[0], PALETTE[1]
DATA_NAMES = ("data", "reference")
# Trajectory map: plot square at (MAP_LEFT, title + MAP_TOP), side MAP_SIDE, both axes [-MAP_LIMIT,
# MAP_LIMIT].
MAP_LEFT, MAP_TOP, MAP_SIDE, MAP_LIMIT = 56, 24, 440, 1.05
MAP_MIN_ALPHA = 0.3  # opacity of a pixel holding one pair when others hold more (density shading)
# Line plot: box at (LINE_LEFT, LINE_TOP) inside its area (LINE_TOP becomes 24 with a ylabel,
# PANEL_TITLE_HEIGHT with a panel title), size (width - LINE_LEFT - LINE_RIGHT, height - top -
# LINE_BOTTOM).
LINE_LEFT, LINE_RIGHT, LINE_TOP, LINE_BOTTOM = 64, 16, 8, 44


# ---------- Public figures ----------


def scatter_png(
    path, panels, *, title: str | None = None, size: int = 360, limits=(-3, 3), point_size: int = 1
) -> Path:
    """Side-by-side square scatter panels, e.g. data (grey) vs 1-NFE samples (colour).

    panels: list of (panel_title, {series_name: (N, 2) array or tensor}). Series named "data" or
    "reference" are light grey and drawn first; the others take a fixed strong palette. `limits`
    bounds both axes; points outside them or non-finite are not drawn and are counted in the legend
    as off-plot.
    point_size: dot radius in pixels (0 = one pixel, 1 = 3x3). Layout: the PANEL_* constants.
    """
    if (
        not isinstance(panels, (list, tuple))
        or not panels
        or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[1], dict) for p in panels
        )
    ):
        raise ValueError(
            "panels must be a non-empty list of (panel_title, {series_name: (N, 2) points})"
        )
    lo, hi = float(limits[0]), float(limits[1])
    drawn = []  # per panel: [(points, shown mask, colour)], legend entries
    for k, (_, series) in enumerate(panels):
        colours, layers, entries = iter(PALETTE * (1 + len(series) // len(PALETTE))), [], []
        for name, values in sorted(
            series.items(), key=lambda item: str(item[0]).lower() not in DATA_NAMES
        ):
            points = as_array(values, f"panel {k} series '{name}'")
            if points.ndim != 2 or points.shape[1] != 2:
                raise ValueError(
                    f"panel {k} series '{name}' must have shape (N, 2) (x, y per row), got "
                    f"{points.shape}"
                )
            colour = DATA_COLOUR if str(name).lower() in DATA_NAMES else next(colours)
            shown = (
                np.isfinite(points).all(axis=1)
                & (points >= lo).all(axis=1)
                & (points <= hi).all(axis=1)
            )
            hidden = int((~shown).sum())
            entries.append(
                (f"{name} ({len(points)}" + (f", {hidden} off-plot)" if hidden else ")"), colour)
            )
            layers.append((points, shown, colour))
        drawn.append((layers, entries))
    legend_width = size - PANEL_LEFT  # the plot square and the right margin
    rows = max(len(legend_lines(entries, legend_width)) for _, entries in drawn)
    image, axes_list = square_panels([p[0] for p in panels], size, limits, title, rows)
    canvas = np.array(image)  # (H, W, 3) uint8
    for (layers, _), axes in zip(drawn, axes_list):
        for points, shown, colour in layers:
            stamp(canvas, *axes.to_pixels(points[shown, 0], points[shown, 1]), colour, point_size)
    image = Image.fromarray(canvas)
    for (_, entries), axes in zip(drawn, axes_list):
        axes.draw_frame(image)
        if entries:
            axes.legend(ImageDraw.Draw(image), entries, corner="below")
    return save_png(image, path)


def _draw_lines(
    image: Image.Image, box, series: dict, *, title, xlabel, ylabel, log_y: bool
) -> None:
    """One line-plot panel inside `box` = (left, top, width, height) of `image`, margins
    included."""
    left, top, width, height = box
    prepared = []
    for name, pair in series.items():
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise ValueError(f"series '{name}' must be a pair (xs, ys), got {type(pair).__name__}")
        xs, ys = as_array(pair[0], f"series '{name}' xs"), as_array(pair[1], f"series '{name}' ys")
        if xs.ndim != 1 or xs.shape != ys.shape:
            raise ValueError(
                f"series '{name}': xs and ys must be 1-D of equal length, got {xs.shape} and "
                f"{ys.shape}"
            )
        if log_y:  # a log axis cannot show values <= 0: they are skipped like NaN
            ys = np.where(ys > 0, np.log10(np.where(ys > 0, ys, 1.0)), np.nan)
        prepared.append((str(name), xs, ys))
    all_y = np.concatenate([ys for _, _, ys in prepared])
    plot_top = top + (PANEL_TITLE_HEIGHT if title else 24 if ylabel else LINE_TOP)
    axes = Axes(
        (
            left + LINE_LEFT,
            plot_top,
            width - LINE_LEFT - LINE_RIGHT,
            top + height - plot_top - LINE_BOTTOM,
        ),
        data_range(np.concatenate([xs for _, xs, _ in prepared]), pad=0.0),
        data_range(all_y, 0.05),
        log_y,
    )
    draw = ImageDraw.Draw(image)
    axes.draw_grid(draw)
    entries = []
    for k, (name, xs, ys) in enumerate(prepared):
        colour = PALETTE[k % len(PALETTE)]
        # NaN / inf (on a log axis also <= 0) points leave gaps
        skipped = axes.polyline(draw, xs, ys, colour)
        entries.append((name + (f" ({skipped} skipped)" if skipped else ""), colour))
    if title:  # a single-series panel names its skipped count in the title instead of a legend
        title += (
            entries[0][0][len(prepared[0][0]) :].replace(" (", ", ").rstrip(")")
            if len(entries) == 1
            else ""
        )
        draw_text(
            draw,
            (axes.left + axes.width / 2, top + PANEL_TITLE_HEIGHT / 2),
            title,
            FONT_MEDIUM,
            "cc",
        )
    axes.draw_frame(image, xlabel, ylabel)
    if len(entries) > 1 or not title:
        axes.legend(draw, entries)


def line_plot_png(
    path,
    series,
    *,
    title: str | None = None,
    xlabel: str = "step",
    ylabel: str | None = None,
    log_y: bool = False,
    size=(720, 420),
) -> Path:
    """Lines for `series` = {name: (xs, ys)} with axes, ticks and a legend.

    NaN/inf points are skipped (the line has a gap there); with log_y, values <= 0 are skipped the
    same way. The legend says how many points of each series were skipped.
    """
    if not isinstance(series, dict) or not series:
        raise ValueError("series must be a non-empty dict {name: (xs, ys)}")
    width, height = int(size[0]), int(size[1])
    if width < 200 or height < 150:
        raise ValueError(f"size must be at least (200, 150) pixels, got {size}")
    image = Image.new("RGB", (width, height), BACKGROUND)
    title_height = draw_title(ImageDraw.Draw(image), width, title)
    _draw_lines(
        image,
        (0, title_height, width, height - title_height),
        series,
        title=None,
        xlabel=xlabel,
        ylabel=ylabel,
        log_y=log_y,
    )
    return save_png(image, path)


def loss_curves_png(
    path, history, *, log_y: bool = True, panel_size=(380, 260), columns: int = 3
) -> Path:
    """One panel per logged numeric term against "step" ("loss" first, then "loss_*", then the
    rest), in a grid.

    history: the training log, a list of dicts each with "step"; a term missing from a row leaves a
    gap. With log_y, a panel whose finite values are not all positive gets a linear axis (its title
    says "linear").
    """
    if not isinstance(history, (list, tuple)) or not history:
        raise ValueError(
            "history must be a non-empty list of logged rows (dicts with 'step' and loss terms)"
        )
    names = []
    for index, row in enumerate(history):
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(
                f"history row {index} must be a dict with a 'step' entry, got {row!r:.80}"
            )
        names += [
            key
            for key, value in row.items()
            if key != "step"
            and key not in names
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ]
    if not names:
        raise ValueError("history has no numeric terms to plot besides 'step'")
    # stable sort keeps log order
    names.sort(key=lambda name: (name != "loss", not name.startswith("loss")))
    steps = np.array([float(row["step"]) for row in history])  # (R,)
    columns = max(1, min(columns, len(names)))
    width, height = panel_size
    image = Image.new(
        "RGB",
        (columns * width, FIGURE_TITLE_HEIGHT + math.ceil(len(names) / columns) * height),
        BACKGROUND,
    )
    draw_title(ImageDraw.Draw(image), image.width, f"training curves ({len(history)} logged rows)")
    for k, name in enumerate(names):
        values = np.array([float(row.get(name, math.nan)) for row in history])  # (R,)
        finite = values[np.isfinite(values)]
        use_log = log_y and finite.size > 0 and bool((finite > 0).all())
        label = f"{name} (last {finite[-1]:.4g})" if finite.size else f"{name} (no finite values)"
        box = ((k % columns) * width, FIGURE_TITLE_HEIGHT + (k // columns) * height, width, height)
        _draw_lines(
            image,
            box,
            {name: (steps, values)},
            title=label + (", linear" if log_y and not use_log else ""),
            xlabel="step",
            ylabel=None,
            log_y=use_log,
        )
    return save_png(image, path)


def image_grid_png(
    path, images, *, nrow: int | None = None, padding: int = 2, upscale: int = 1, labels=None
) -> Path:
    """Images (N, C, H, W), float in [-1, 1] or uint8, C in {1, 3}, tiled `nrow` per row on white.

    Floats become uint8 as floor((x + 1) * 127.5 + 0.5) clipped to [0, 255] (torchvision
    `save_image` with value_range=(-1, 1)). Image i has its top-left pixel at x = label_width +
    padding + (i % nrow) * (W * upscale + padding), y = padding + (i // nrow) * (H * upscale +
    padding); label_width = 0 without labels, else the widest label + 12. `labels`: one string per
    row, drawn left of the row (e.g. "1 NFE", "2 NFE").
    """
    if isinstance(images, torch.Tensor):
        images = (images if images.dtype == torch.uint8 else images.double()).detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"images must have shape (N, C, H, W) with N >= 1 and C = 1 or 3, got {images.shape}"
        )
    if images.dtype != np.uint8:
        images = images.astype(np.float64)
        if not np.isfinite(images).all():
            raise ValueError("images contain NaN or inf; check the sampler output before plotting")
        images = np.clip(np.floor((images + 1) * 127.5 + 0.5), 0, 255).astype(np.uint8)
    if int(upscale) < 1 or int(padding) < 0 or (nrow is not None and int(nrow) < 1):
        raise ValueError(
            f"need upscale >= 1, padding >= 0, nrow >= 1; got {upscale}, {padding}, {nrow}"
        )
    count, channels, height, width = images.shape
    nrow = int(nrow) if nrow else math.ceil(math.sqrt(count))
    rows = math.ceil(count / nrow)
    if labels is not None and len(labels) != rows:
        raise ValueError(
            f"labels needs one entry per row ({rows} rows of {nrow} images), got {len(labels)}"
        )
    # (N, h, w, C)
    tiles = np.repeat(np.repeat(images, upscale, axis=2), upscale, axis=3).transpose(0, 2, 3, 1)
    tiles = np.repeat(tiles, 3, axis=3) if channels == 1 else tiles  # (N, h, w, 3)
    label_width = max(text_width(str(label), FONT_MEDIUM) for label in labels) + 12 if labels else 0
    cell_h, cell_w = height * upscale + padding, width * upscale + padding
    canvas = np.full(
        (padding + rows * cell_h, label_width + padding + nrow * cell_w, 3), 255, np.uint8
    )
    for i in range(count):
        y, x = padding + (i // nrow) * cell_h, label_width + padding + (i % nrow) * cell_w
        canvas[y : y + height * upscale, x : x + width * upscale] = tiles[i]
    image = Image.fromarray(canvas)
    for row, label in enumerate(labels or []):
        draw_text(
            ImageDraw.Draw(image),
            (label_width - 6, padding + row * cell_h + height * upscale / 2),
            str(label),
            FONT_MEDIUM,
            "rc",
        )
    return save_png(image, path)


def trajectory_map_png(path, t, t_tgt, *, title: str | None = None) -> Path:
    """One dot per trained (t, t_tgt) pair over [-1, 1]^2: real branch (t >= 0) blue, fake branch (t
    < 0) red.

    Dots are shaded by how many pairs share the pixel (log scale; a lone pair on an otherwise empty
    map is opaque). The faint diagonal is t_tgt = t; the legend counts each branch. Layout: the
    MAP_* constants.
    """
    t, t_tgt = as_array(t, "t"), as_array(t_tgt, "t_tgt")
    if t.ndim != 1 or t.shape != t_tgt.shape:
        raise ValueError(
            f"t and t_tgt must be 1-D with one entry per pair, got shapes {t.shape} and "
            f"{t_tgt.shape}"
        )
    title_height = FIGURE_TITLE_HEIGHT if title else 0
    image = Image.new(
        "RGB", (MAP_LEFT + MAP_SIDE + 16, title_height + MAP_TOP + MAP_SIDE + 46), BACKGROUND
    )
    draw = ImageDraw.Draw(image)
    draw_title(draw, image.width, title)
    limits = (-MAP_LIMIT, MAP_LIMIT)
    axes = Axes((MAP_LEFT, title_height + MAP_TOP, MAP_SIDE, MAP_SIDE), limits, limits)
    axes.draw_grid(draw)
    ends_x, ends_y = axes.to_pixels(np.array([-1.0, 1.0]), np.array([-1.0, 1.0]))
    # the diagonal t_tgt = t
    draw.line([(ends_x[0], ends_y[0]), (ends_x[1], ends_y[1])], fill=(200, 200, 200))
    finite = np.isfinite(t) & np.isfinite(t_tgt)
    t, t_tgt, canvas = t[finite], t_tgt[finite], np.array(image)  # canvas (H, W, 3) uint8
    if t.size and max(np.abs(t).max(), np.abs(t_tgt).max()) > 1:
        raise ValueError(
            "t and t_tgt must lie in [-1, 1] (t = 1 is noise, negative t is the fake branch); "
            f"got |t| up to {np.abs(t).max():.4g} and |t_tgt| up to {np.abs(t_tgt).max():.4g}"
        )
    px, py = axes.to_pixels(t, t_tgt)  # (N,) each
    height, width = canvas.shape[:2]
    # (N,) flat pixel index
    pixel = np.rint(py).astype(np.int64) * width + np.rint(px).astype(np.int64)
    for branch, colour in ((t >= 0, REAL_COLOUR), (t < 0, FAKE_COLOUR)):
        counts = np.pad(
            np.bincount(pixel[branch], minlength=height * width).reshape(height, width), 1
        )
        counts = np.max(
            [counts[i : i + height, j : j + width] for i in range(3) for j in range(3)], axis=0
        )  # 3x3 dots
        top = counts.max()
        # opacity on a log scale of the pair count: 1 at the densest pixel, MAP_MIN_ALPHA for one
        # pair
        if top > 0:
            alpha = (
                MAP_MIN_ALPHA + (1 - MAP_MIN_ALPHA) * np.log(np.maximum(counts, 1)) / np.log(top)
                if top > 1
                else np.ones(counts.shape)
            )  # a lone pair (or all pixels single) is opaque
            alpha = np.where(counts > 0, alpha, 0.0)[..., None]  # (H, W, 1)
            canvas[:] = np.rint(
                canvas * (1 - alpha) + np.asarray(colour, np.float64) * alpha
            ).astype(np.uint8)
    image = Image.fromarray(canvas)
    axes.draw_frame(image, "t   (t < 0: fake branch)", "t_tgt")
    entries = [
        (f"real branch t >= 0: {int((t >= 0).sum())}", REAL_COLOUR),
        (f"fake branch t < 0: {int((t < 0).sum())}", FAKE_COLOUR),
    ]
    skipped = int((~finite).sum())
    axes.legend(
        ImageDraw.Draw(image),
        entries + ([(f"non-finite (skipped): {skipped}", FRAME)] if skipped else []),
        corner="left",
    )  # t_tgt <= t always, so the top-left corner stays empty
    return save_png(image, path)


def trajectories_png(
    path, trajectories, *, title: str | None = None, size: int = 360, limits=None
) -> Path:
    """Panels of 2-D sampling paths: `trajectories` = [(label, (T, N, 2) array)], step 0 first, one
    panel each.

    Each of the N paths is a thin semi-transparent polyline with a grey start dot and a coloured end
    dot.
    limits: (low, high) for both axes, or None for a symmetric window around every finite point.
    Paths with a non-finite point are skipped and counted in the legend. Layout: the PANEL_*
    constants.
    """
    if (
        not isinstance(trajectories, (list, tuple))
        or not trajectories
        or not all(isinstance(item, (list, tuple)) and len(item) == 2 for item in trajectories)
    ):
        raise ValueError("trajectories must be a non-empty list of (label, (T, N, 2) paths)")
    arrays = [as_array(paths, f"trajectories[{k}]") for k, (_, paths) in enumerate(trajectories)]
    for k, array in enumerate(arrays):
        if array.ndim != 3 or array.shape[2] != 2 or array.shape[0] < 1:
            raise ValueError(
                f"trajectories[{k}] must have shape (T, N, 2) (steps, paths, xy), got {array.shape}"
            )
    if limits is None:
        finite = np.concatenate([array[np.isfinite(array)] for array in arrays])
        extent = max(float(np.abs(finite).max()) * 1.05 if finite.size else 1.0, 1e-6)
        limits = (-extent, extent)
    image, axes_list = square_panels([label for label, _ in trajectories], size, limits, title)
    background = image.copy()
    # RGBA fills blend: overlapping paths darken
    draw, ends, legends = ImageDraw.Draw(image, "RGBA"), [], []
    for k, (array, axes) in enumerate(zip(arrays, axes_list)):
        colour, good = PALETTE[k % len(PALETTE)], np.isfinite(array).all(axis=(0, 2))  # good: (N,)
        px, py = axes.to_pixels(array[:, good, 0], array[:, good, 1])  # (T, n) each
        coords = np.clip(np.stack([px, py], axis=-1), -PIXEL_CLIP, PIXEL_CLIP)  # (T, n, 2)
        # many paths -> fainter
        line_alpha = int(np.clip(600 / math.sqrt(max(coords.shape[1], 1)), 30, 180))
        for path_coords in coords.transpose(1, 0, 2).tolist() if len(coords) > 1 else []:
            draw.line([tuple(p) for p in path_coords], fill=(*colour, line_alpha), width=1)
        ends.append((coords[0], coords[-1], colour))
        legends.append(
            [("start", START_COLOUR), (f"end ({int(good.sum())} paths)", colour)]
            + ([(f"non-finite: {int((~good).sum())}", FRAME)] if (~good).any() else [])
        )
    # clip: lines that leave a plot box are cut at its edge (everything outside the boxes is
    # restored)
    inside_boxes = Image.new("L", image.size, 0)
    for axes in axes_list:
        ImageDraw.Draw(inside_boxes).rectangle(
            [axes.left, axes.top, axes.left + axes.width - 1, axes.top + axes.height - 1], fill=255
        )
    image = Image.composite(image, background, inside_boxes)
    canvas = np.array(image)  # (H, W, 3) uint8
    for (start, end, colour), axes in zip(ends, axes_list):
        for points, dot_colour, alpha in ((start, START_COLOUR, 0.8), (end, colour, 0.9)):
            inside = (
                (points[:, 0] >= axes.left)
                & (points[:, 0] <= axes.left + axes.width - 1)
                & (points[:, 1] >= axes.top)
                & (points[:, 1] <= axes.top + axes.height - 1)
            )
            stamp(canvas, points[inside, 0], points[inside, 1], dot_colour, 1, alpha)
    image = Image.fromarray(canvas)
    for axes, entries in zip(axes_list, legends):
        axes.draw_frame(image)
        axes.legend(ImageDraw.Draw(image), entries, corner="below")
    return save_png(image, path)
