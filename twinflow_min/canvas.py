"""Pillow drawing primitives for the figures in plots.py: fonts, text, ticks, the axis transform
(`Axes`), dot stamping, rows of square panels and PNG saving. No matplotlib.

Paper: TwinFlow (arXiv:2512.05150); these primitives serve its toy figures and sample grids. The
official code has no plotting module, so nothing here mirrors an official function. Project issues:
#3, #4, #5.

Axis transform (`Axes.to_pixels`, the plots tests rely on it): a plot box with top-left pixel (left,
top) and size (width, height) sends data (x, y) to the pixel
    px = round(left + (x - x_lo) / (x_hi - x_lo) * (width - 1)),
    py = round(top + (y_hi - y) / (y_hi - y_lo) * (height - 1)).
Dots are stamped with numpy into an RGB array (fast for tens of thousands of points); text and lines
use ImageDraw.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Colours (RGB) of the figure furniture.
BACKGROUND, INK, FRAME, GRID = (255, 255, 255), (30, 30, 30), (70, 70, 70), (232, 232, 232)
# Layout in pixels. Square panel k (scatter, trajectories) of a figure is a `size`-wide cell whose
# plot square has its top-left pixel at (k * size + PANEL_LEFT, title + PANEL_TITLE_HEIGHT), title =
# FIGURE_TITLE_HEIGHT if the figure has a title else 0, and side size - PANEL_LEFT - PANEL_RIGHT.
FIGURE_TITLE_HEIGHT, PANEL_TITLE_HEIGHT = 30, 24
PANEL_LEFT, PANEL_RIGHT, PANEL_BOTTOM = 44, 14, 44
FONT_SMALL, FONT_MEDIUM, FONT_LARGE = 12, 13, 15
LEGEND_ROW = FONT_MEDIUM + 6  # height of one line of a "below" legend
PIXEL_CLIP = 20_000  # clip far-away pixel coordinates before handing them to ImageDraw


# ---------- Fonts, text, inputs, ticks, titles, saving ----------


@lru_cache(maxsize=None)
def load_font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at `size` (pillow >= 10.1 with FreeType), else its fixed-size bitmap
    font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def draw_text(
    draw: ImageDraw.ImageDraw, xy, text: str, size: int, align: str = "lt", fill=INK
) -> None:
    """Draw text placed by `align` = horizontal (l/c/r) + vertical (t/c/b); works with bitmap fonts
    too."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=load_font(size))
    x = xy[0] - {"l": 0, "c": (right - left) / 2, "r": right - left}[align[0]] - left
    y = xy[1] - {"t": 0, "c": (bottom - top) / 2, "b": bottom - top}[align[1]] - top
    draw.text((round(x), round(y)), text, font=load_font(size), fill=fill)


def text_width(text: str, size: int) -> int:
    """Width in pixels of `text` in the built-in font at `size`."""
    return math.ceil(load_font(size).getlength(text))


def as_array(values, name: str) -> np.ndarray:
    """Tensor / array / list -> float64 numpy array, with a clear error for anything else."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a numeric tensor or array, got {type(values).__name__}"
        ) from error


def format_tick(value: float) -> str:
    """Short tick label: "0", an integer (multiples of 1000 from 1e4 up as "20k"), else 3
    significant digits."""
    if abs(value) < 1e-12:
        return "0"
    if float(value).is_integer() and abs(value) < 1e6:
        return f"{value / 1000:g}k" if abs(value) >= 1e4 and value % 1000 == 0 else str(int(value))
    return f"{value:.3g}"


def nice_ticks(lo: float, hi: float, count: int) -> list[float]:
    """About `count` round ticks (1, 2 or 5 times a power of ten) inside [lo, hi]."""
    raw = (hi - lo) / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [
        round(k * step, 12)
        for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)
    ]


def data_range(values: np.ndarray, pad: float) -> tuple[float, float]:
    """Finite min/max widened by `pad` of the span (a flat series gets a window around it, none gets
    [0, 1])."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return lo - max(0.5, abs(lo) * 0.1), hi + max(0.5, abs(hi) * 0.1)
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


def draw_title(draw: ImageDraw.ImageDraw, width: int, title: str | None) -> int:
    """Draw a figure title centred on top; return the height it takes."""
    if title:
        draw_text(draw, (width / 2, FIGURE_TITLE_HEIGHT / 2), title, FONT_LARGE, "cc")
    return FIGURE_TITLE_HEIGHT if title else 0


def save_png(image: Image.Image, path) -> Path:
    """Write `image` as PNG to `path`, creating parent folders; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


# ---------- Axes (the transform of the module docstring), dots, square panels ----------


class Axes:
    """A plot box `box` = (left, top, width, height) with data limits; the module docstring's
    transform."""

    def __init__(self, box, xlim, ylim, log_y: bool = False):
        self.left, self.top, self.width, self.height = box
        self.xlim, self.ylim, self.log_y = xlim, ylim, log_y  # ylim is in log10 units when log_y

    def to_pixels(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float pixel coordinates of data points (ys already in log10 units when log_y)."""
        (x_lo, x_hi), (y_lo, y_hi) = self.xlim, self.ylim
        px = self.left + (xs - x_lo) / (x_hi - x_lo) * (self.width - 1)  # (N,)
        py = self.top + (y_hi - ys) / (y_hi - y_lo) * (self.height - 1)  # (N,)
        return px, py

    def ticks(self) -> tuple[list, list]:
        """([(px, label)] along x, [(py, label)] along y); a log axis gets decades (or 1-2-5 inside
        one)."""
        xs = nice_ticks(*self.xlim, count=max(4, self.width // 70))
        if self.log_y and self.ylim[1] - self.ylim[0] >= 1:
            ys = [float(k) for k in range(math.ceil(self.ylim[0]), math.floor(self.ylim[1]) + 1)]
        elif self.log_y:
            ys = [
                math.log10(v)
                for v in nice_ticks(10 ** self.ylim[0], 10 ** self.ylim[1], 4)
                if v > 0
            ]
        else:
            ys = nice_ticks(*self.ylim, count=max(4, self.height // 60))
        px = self.to_pixels(np.array(xs), np.zeros(len(xs)))[0]
        py = self.to_pixels(np.zeros(len(ys)), np.array(ys))[1]
        y_labels = [
            f"1e{round(y)}"
            if self.log_y and y.is_integer() and abs(y) >= 3
            else format_tick(10.0**y if self.log_y else y)
            for y in ys
        ]
        return list(zip(np.rint(px).astype(int).tolist(), map(format_tick, xs))), list(
            zip(np.rint(py).astype(int).tolist(), y_labels)
        )

    def draw_grid(self, draw: ImageDraw.ImageDraw) -> None:
        x_ticks, y_ticks = self.ticks()
        for px, _ in x_ticks:
            draw.line([(px, self.top), (px, self.top + self.height - 1)], fill=GRID)
        for py, _ in y_ticks:
            draw.line([(self.left, py), (self.left + self.width - 1, py)], fill=GRID)

    def draw_frame(
        self, image: Image.Image, xlabel: str | None = None, ylabel: str | None = None
    ) -> None:
        draw, bottom = ImageDraw.Draw(image), self.top + self.height - 1
        draw.rectangle([self.left, self.top, self.left + self.width - 1, bottom], outline=FRAME)
        x_ticks, y_ticks = self.ticks()
        for px, label in x_ticks:
            draw.line([(px, bottom), (px, bottom + 4)], fill=FRAME)
            draw_text(draw, (px, bottom + 6), label, FONT_SMALL, "ct")
        for py, label in y_ticks:
            draw.line([(self.left - 4, py), (self.left, py)], fill=FRAME)
            draw_text(draw, (self.left - 6, py), label, FONT_SMALL, "rc")
        if xlabel:
            draw_text(draw, (self.left + self.width / 2, bottom + 20), xlabel, FONT_MEDIUM, "ct")
        if ylabel:  # written across, just above the top-left corner of the plot
            draw_text(draw, (self.left - 6, self.top - 5), ylabel, FONT_MEDIUM, "lb")

    def legend(
        self, draw: ImageDraw.ImageDraw, entries: list[tuple[str, tuple]], corner: str = "right"
    ) -> None:
        """Swatch + name rows in a white box at the top-right / top-left corner, or one line "below"
        the plot."""
        if corner == "below":  # under the x tick labels, left to right: never hides data
            y = self.top + self.height + 30
            for line in legend_lines(entries, self.width + PANEL_RIGHT):
                x = self.left
                for name, colour in line:
                    draw.rectangle([x, y - 4, x + 10, y + 4], fill=colour)
                    draw_text(draw, (x + 15, y), name, FONT_MEDIUM, "lc")
                    x += text_width(name, FONT_MEDIUM) + 28
                y += LEGEND_ROW
            return
        row, width = FONT_MEDIUM + 6, max(text_width(name, FONT_MEDIUM) for name, _ in entries) + 30
        x0, y0 = (
            (self.left + self.width - width - 6 if corner == "right" else self.left + 6),
            self.top + 6,
        )
        draw.rectangle(
            [x0, y0, x0 + width, y0 + row * len(entries) + 6], fill=BACKGROUND, outline=GRID
        )
        for k, (name, colour) in enumerate(entries):
            y = y0 + 6 + k * row + row / 2 - 3
            draw.rectangle([x0 + 6, y - 4, x0 + 16, y + 4], fill=colour)
            draw_text(draw, (x0 + 22, y), name, FONT_MEDIUM, "lc")

    def polyline(self, draw: ImageDraw.ImageDraw, xs: np.ndarray, ys: np.ndarray, colour) -> int:
        """Draw (xs, ys) as 2-px lines, a gap at each non-finite point (a lone point is a dot);
        return how many points were skipped."""
        px, py = self.to_pixels(xs, ys)  # (N,) each
        valid = np.isfinite(px) & np.isfinite(py)  # (N,)
        # consecutive valid points form one polyline; a non-finite point ends it
        for segment in np.split(
            np.arange(len(xs)), np.flatnonzero(np.diff(valid.astype(np.int8))) + 1
        ):
            if segment.size and valid[segment[0]]:
                coords = np.clip(
                    np.stack([px[segment], py[segment]], 1), -PIXEL_CLIP, PIXEL_CLIP
                ).tolist()
                if len(coords) == 1:
                    draw.ellipse(
                        [coords[0][0] - 2, coords[0][1] - 2, coords[0][0] + 2, coords[0][1] + 2],
                        fill=colour,
                    )
                else:
                    draw.line([tuple(p) for p in coords], fill=colour, width=2)
        return int((~valid).sum())


def stamp(
    canvas: np.ndarray, px: np.ndarray, py: np.ndarray, colour, radius: int, alpha=1.0
) -> None:
    """Blend dots of `radius` pixels (0 = one pixel, 1 = 3x3) of `colour` into canvas (H, W, 3)
    uint8, in place."""
    steps = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(steps, steps)
    keep = dx**2 + dy**2 <= radius**2 + radius  # a round-ish disk
    xs = np.rint(px).astype(np.int64)[:, None] + dx[keep][None, :]  # (N, K)
    ys = np.rint(py).astype(np.int64)[:, None] + dy[keep][None, :]  # (N, K)
    weights = np.broadcast_to(np.asarray(alpha, np.float32).reshape(-1, 1), xs.shape)  # (N, K)
    inside = (xs >= 0) & (xs < canvas.shape[1]) & (ys >= 0) & (ys < canvas.shape[0])
    # (H * W, 3) view, (M,)
    flat, pixels = canvas.reshape(-1, 3), (ys * canvas.shape[1] + xs)[inside]
    if np.all(weights == 1):  # opaque: no blending needed
        flat[pixels] = colour
        return
    weights = weights[inside][:, None]  # (M, 1)
    blended = flat[pixels] * (1 - weights) + np.asarray(colour, np.float32) * weights  # (M, 3)
    flat[pixels] = np.rint(blended).astype(np.uint8)


def legend_lines(entries: list[tuple[str, tuple]], max_width: int) -> list[list]:
    """Entries (name, colour) of a "below" legend split into lines of at most `max_width` pixels
    (an entry wider than that gets a line of its own)."""
    lines, width = [[]], 0
    for name, colour in entries:
        entry_width = text_width(name, FONT_MEDIUM) + 28  # swatch, gap, name, spacing
        if lines[-1] and width + entry_width - 13 > max_width:
            lines.append([])
            width = 0
        lines[-1].append((name, colour))
        width += entry_width
    return lines


def square_panels(
    panel_titles: list, size: int, limits, title: str | None, legend_rows: int = 1
) -> tuple[Image.Image, list]:
    """A row of square panels sharing `limits` on both axes (layout: PANEL_* constants); grids
    drawn. `legend_rows` > 1 adds room below for a "below" legend of that many lines."""
    lo, hi = float(limits[0]), float(limits[1])
    if not hi > lo:
        raise ValueError(f"limits must be (low, high) with low < high, got {limits}")
    if size < PANEL_LEFT + PANEL_RIGHT + 60:
        raise ValueError(
            f"size={size} is too small for a panel; use at least {PANEL_LEFT + PANEL_RIGHT + 60}"
        )
    side, top = (
        size - PANEL_LEFT - PANEL_RIGHT,
        (FIGURE_TITLE_HEIGHT if title else 0) + PANEL_TITLE_HEIGHT,
    )
    bottom = PANEL_BOTTOM + (max(legend_rows, 1) - 1) * LEGEND_ROW
    image = Image.new("RGB", (size * len(panel_titles), top + side + bottom), BACKGROUND)
    draw, axes_list = ImageDraw.Draw(image), []
    draw_title(draw, image.width, title)
    for k, panel_title in enumerate(panel_titles):
        axes_list.append(Axes((k * size + PANEL_LEFT, top, side, side), (lo, hi), (lo, hi)))
        axes_list[-1].draw_grid(draw)
        draw_text(
            draw,
            (k * size + PANEL_LEFT + side / 2, top - PANEL_TITLE_HEIGHT / 2),
            str(panel_title),
            FONT_MEDIUM,
            "cc",
        )
    return image, axes_list
