"""Tests for twinflow_min/plots.py: PNG size/mode, pixel placement through the documented axis
transform, exact image-grid tiling, branch colours of the (t, t_tgt) map, NaN handling and clear
input errors.

Every expected pixel position is computed here from the formula in the plots.py module docstring
    px = round(left + (x - x_lo) / (x_hi - x_lo) * (width - 1)),
    py = round(top + (y_hi - y) / (y_hi - y_lo) * (height - 1))
and the documented layout constants (never by calling the module's own transform).
"""

import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from twinflow_min import plots

WHITE = (255, 255, 255)


def pixel(path, x, y):
    with Image.open(path) as image:
        return image.convert("RGB").getpixel((x, y))


def to_pixel(x, y, left, top, width, height, x_lim, y_lim):
    """The module docstring's axis transform, written out independently."""
    px = left + (x - x_lim[0]) / (x_lim[1] - x_lim[0]) * (width - 1)
    py = top + (y_lim[1] - y) / (y_lim[1] - y_lim[0]) * (height - 1)
    return round(px), round(py)


# ---------- scatter ----------


def test_scatter_size_mode_and_parent_dirs(tmp_path):
    panels = [
        ("1 NFE", {"data": torch.randn(50, 2), "samples": np.zeros((50, 2))}),
        ("2 NFE", {"data": torch.randn(50, 2), "samples": torch.randn(50, 2, dtype=torch.float64)}),
    ]
    out = plots.scatter_png(tmp_path / "a" / "b" / "s.png", panels, title="t", size=300)
    assert out == tmp_path / "a" / "b" / "s.png"
    with Image.open(out) as image:
        # width = panels * size; height = FIGURE_TITLE_HEIGHT 30 + PANEL_TITLE_HEIGHT 24 + side (300
        # - 44 - 14) + PANEL_BOTTOM 44 (the legend fits on one line)
        assert image.mode == "RGB" and image.size == (600, 30 + 24 + 242 + 44)


def test_a_long_legend_wraps_inside_its_panel(tmp_path):
    long_names = {"data": torch.zeros(5, 2), "one-step samples z - F(z, 1, 0)": torch.zeros(5, 2),
                  "fake ODE ends after fifty Euler steps": torch.full((5, 2), 9.0)}
    out = plots.scatter_png(tmp_path / "s.png", [("a", long_names), ("b", long_names)], size=300)
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    one_line_height = 24 + 242 + 44
    extra = pixels.shape[0] - one_line_height
    assert extra > 0 and extra % plots.LEGEND_ROW == 0  # whole legend rows were added below
    legend_area = pixels[24 + 242 + 20:]  # below the x tick labels
    for right_edge in (300, 600):  # each panel's legend ends before the panel's right edge
        assert (legend_area[:, right_edge - 3:right_edge] == 255).all()


def test_scatter_point_lands_on_documented_pixel(tmp_path):
    # one sample at (1.3, -1.4) and one data point at (-1.3, 1.7), limits (-3, 3), size 360, no
    # figure title: plot square at (PANEL_LEFT 44, PANEL_TITLE_HEIGHT 24), side 360 - 44 - 14 = 302
    square = dict(left=44, top=24, width=302, height=302, x_lim=(-3, 3), y_lim=(-3, 3))
    sample_xy, data_xy = to_pixel(1.3, -1.4, **square), to_pixel(-1.3, 1.7, **square)
    assert sample_xy == (260, 245)  # 44 + 4.3/6 * 301 = 259.72; 24 + 4.4/6 * 301 = 244.73
    empty = plots.scatter_png(tmp_path / "empty.png", [("p", {"samples": np.zeros((0, 2))})])
    # background there before
    assert pixel(empty, *sample_xy) == WHITE and pixel(empty, *data_xy) == WHITE
    path = plots.scatter_png(
        tmp_path / "s.png",
        [("p", {"samples": torch.tensor([[1.3, -1.4]]), "data": np.array([[-1.3, 1.7]])})],
    )
    assert pixel(path, *sample_xy) == plots.PALETTE[0] != WHITE  # samples: first strong colour
    assert pixel(path, *data_xy) == plots.DATA_COLOUR  # data: light grey
    # a 3x3 dot (point_size 1): the neighbour one pixel away is coloured too, two pixels away is not
    assert pixel(path, sample_xy[0] + 1, sample_xy[1] + 1) == plots.PALETTE[0]
    assert pixel(path, sample_xy[0] + 2, sample_xy[1]) == WHITE


def test_scatter_off_plot_and_non_finite_points_do_not_crash(tmp_path):
    points = np.array([[0.5, 0.5], [100.0, 0.0], [np.nan, 1.0], [np.inf, -np.inf]])
    path = plots.scatter_png(
        tmp_path / "s.png", [("p", {"samples": points})], limits=(-1, 1), point_size=0
    )
    assert path.exists()


def test_scatter_4000_points_is_fast(tmp_path):
    generator = torch.Generator().manual_seed(0)
    panels = [
        (
            "p",
            {
                "data": torch.randn(4000, 2, generator=generator),
                "samples": torch.randn(4000, 2, generator=generator),
            },
        )
    ]
    plots.scatter_png(tmp_path / "warm.png", panels)  # font loading
    start = time.perf_counter()
    plots.scatter_png(tmp_path / "s.png", panels)
    assert time.perf_counter() - start < 1.0  # ~50 ms on a 2-core CPU; loose bound against CI noise


@pytest.mark.parametrize(
    "panels, error",
    [
        ([], ValueError),
        ([("p", {"samples": np.zeros((5, 3))})], ValueError),
        ([("p", np.zeros((5, 2)))], ValueError),
        ([("p", {"samples": "not numbers"})], TypeError),
    ],
)
def test_scatter_bad_input(tmp_path, panels, error):
    with pytest.raises(error, match="panel|numeric"):
        plots.scatter_png(tmp_path / "s.png", panels)


def test_scatter_bad_limits(tmp_path):
    with pytest.raises(ValueError, match="limits"):
        plots.scatter_png(
            tmp_path / "s.png", [("p", {"samples": np.zeros((1, 2))})], limits=(1, -1)
        )


# ---------- lines ----------


def test_line_plot_nan_leaves_a_gap(tmp_path):
    xs = np.arange(11.0)
    ys = xs.copy()
    ys[5] = np.nan
    path = plots.line_plot_png(tmp_path / "l.png", {"loss": (xs, ys)}, size=(400, 300))
    with Image.open(path) as image:
        assert image.size == (400, 300) and image.mode == "RGB"
    # no title, no ylabel: plot box at (64, 8), width 400 - 80 = 320, height 300 - 8 - 44 = 248;
    # x range = data (0, 10); y range = finite data (0, 10) widened by 5% -> (-0.5, 10.5)
    box = dict(left=64, top=8, width=320, height=248, x_lim=(0, 10), y_lim=(-0.5, 10.5))
    on_line = to_pixel(2.5, 2.5, **box)  # midway between two finite points
    in_gap = to_pixel(5.0, 5.0, **box)  # the NaN point: both neighbouring segments stop before it

    def around(xy):  # the 3x3 neighbourhood (a width-2 line need not cover the exact rounded pixel)
        return {pixel(path, xy[0] + dx, xy[1] + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}

    assert plots.PALETTE[0] in around(on_line)
    # the nearest drawn points (4, 4) and (6, 6) are ~30 px away
    assert plots.PALETTE[0] not in around(in_gap)


def test_line_plot_all_nan_and_log_with_non_positive(tmp_path):
    xs = np.arange(4)
    series = {
        "nan": (xs, np.full(4, np.nan)),
        "mixed": (torch.arange(4), torch.tensor([1.0, 0.0, -2.0, 0.1])),
    }
    assert plots.line_plot_png(
        tmp_path / "a.png", series, log_y=True, title="t", ylabel="loss"
    ).exists()
    assert plots.line_plot_png(tmp_path / "b.png", {"nan": (xs, np.full(4, np.nan))}).exists()
    assert plots.line_plot_png(tmp_path / "c.png", {"flat": (xs, np.ones(4))}, log_y=True).exists()


def test_line_plot_bad_input(tmp_path):
    with pytest.raises(ValueError, match="equal length"):
        plots.line_plot_png(tmp_path / "l.png", {"a": (np.arange(3), np.arange(4))})
    with pytest.raises(ValueError, match="pair"):
        plots.line_plot_png(tmp_path / "l.png", {"a": np.arange(3)})
    with pytest.raises(ValueError, match="non-empty"):
        plots.line_plot_png(tmp_path / "l.png", {})


def test_loss_curves_grid_size(tmp_path):
    history = [
        {
            "step": s,
            "loss": 1.0 / (s + 1),
            "loss_base": 0.5 / (s + 1),
            "loss_rectify": -0.1 * s,
            "grad_norm": 2.0,
            "note": "text is ignored",
        }
        for s in range(0, 100, 10)
    ]
    history[3]["loss"] = math.nan
    del history[4]["loss_base"]
    path = plots.loss_curves_png(tmp_path / "c.png", history, panel_size=(300, 200))
    with Image.open(path) as image:
        # 4 numeric terms, 3 columns -> 2 rows; height = FIGURE_TITLE_HEIGHT 30 + 2 * 200
        assert image.size == (900, 430) and image.mode == "RGB"


def test_loss_curves_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        plots.loss_curves_png(tmp_path / "c.png", [])
    with pytest.raises(ValueError, match="'step'"):
        plots.loss_curves_png(tmp_path / "c.png", [{"loss": 1.0}])
    with pytest.raises(ValueError, match="no numeric terms"):
        plots.loss_curves_png(tmp_path / "c.png", [{"step": 1, "name": "x"}])


# ---------- image grid ----------


def test_image_grid_places_images_pixel_exactly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 4, 6), generator=generator, dtype=torch.uint8)
    path = plots.image_grid_png(tmp_path / "g.png", images, nrow=3, padding=2)
    grid = np.array(Image.open(path))
    # 2 rows of 3: width 2 + 3 * (6 + 2) = 26, height 2 + 2 * (4 + 2) = 14
    assert grid.shape == (14, 26, 3)
    # image 4 is row 1, column 1: x = 2 + 1 * 8 = 10, y = 2 + 1 * 6 = 8
    np.testing.assert_array_equal(grid[8:12, 10:16], images[4].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(grid[2:6, 2:8], images[0].permute(1, 2, 0).numpy())
    # padding and the empty 6th cell
    assert (grid[0:2] == 255).all() and (grid[8:12, 18:26] == 255).all()


def test_image_grid_float_gray_upscale_and_labels(tmp_path):
    # float -> uint8 as floor((x + 1) * 127.5 + 0.5): -1 -> 0, 0 -> 128 (127.5 + 0.5), 0.5 -> 191
    # (191.25 + 0.5), 1 -> 255, 3 (clipped) -> 255
    image = np.array([[[-1.0, 0.0, 0.5, 1.0, 3.0]]])  # (C=1, H=1, W=5)
    images = np.stack([image, image])  # (2, 1, 1, 5)
    path = plots.image_grid_png(
        tmp_path / "g.png", images, nrow=1, padding=1, upscale=2, labels=["1 NFE", "2 NFE"]
    )
    grid = np.array(Image.open(path))
    # (10,) after upscale 2
    expected_row = np.repeat(np.array([0, 128, 191, 255, 255], dtype=np.uint8), 2)
    # with labels the tiles are right-aligned: x0 = width - padding - nrow * (W * upscale + padding)
    # + padding
    x0 = grid.shape[1] - 1 * (5 * 2 + 1)
    assert x0 > 1  # the label column takes room
    for y in (1, 2):  # first tile: y = padding = 1, two rows after upscale
        for channel in range(3):  # grey replicated to RGB
            np.testing.assert_array_equal(grid[y, x0 : x0 + 10, channel], expected_row)
    assert grid.shape[0] == 1 + 2 * (1 * 2 + 1)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((3, 8, 8)), "shape"),
        (np.zeros((2, 2, 8, 8)), "C = 1 or 3"),
        (np.zeros((0, 3, 8, 8)), "N >= 1"),
        (np.full((1, 3, 2, 2), np.nan), "NaN"),
    ],
)
def test_image_grid_bad_input(tmp_path, images, match):
    with pytest.raises(ValueError, match=match):
        plots.image_grid_png(tmp_path / "g.png", images)


def test_image_grid_wrong_label_count(tmp_path):
    with pytest.raises(ValueError, match="one entry per row"):
        plots.image_grid_png(
            tmp_path / "g.png", np.zeros((4, 3, 2, 2)), nrow=2, labels=["only one"]
        )


# ---------- (t, t_tgt) map ----------

# With a title the map square sits at (MAP_LEFT 56, FIGURE_TITLE_HEIGHT 30 + MAP_TOP 24), side 440,
# axes [-1.05, 1.05]
MAP_BOX = dict(left=56, top=54, width=440, height=440, x_lim=(-1.05, 1.05), y_lim=(-1.05, 1.05))


def test_trajectory_map_colours_branches(tmp_path):
    t = torch.tensor([-0.3, 0.7, 0.7, 0.7])
    t_tgt = torch.tensor([-0.6, 0.2, 0.2, 0.2])
    path = plots.trajectory_map_png(tmp_path / "m.png", t, t_tgt, title="map")
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (56 + 440 + 16, 30 + 24 + 440 + 46)
    # negative t -> fake colour
    assert pixel(path, *to_pixel(-0.3, -0.6, **MAP_BOX)) == plots.FAKE_COLOUR
    assert pixel(path, *to_pixel(0.7, 0.2, **MAP_BOX)) == plots.REAL_COLOUR
    # an untrained spot stays background
    assert pixel(path, *to_pixel(-0.7, 0.6, **MAP_BOX)) == WHITE


def test_trajectory_map_density_shading(tmp_path):
    # 10 pairs on one pixel and 1 pair on another, both real: the lone pixel gets opacity
    # MAP_MIN_ALPHA = 0.3, so its colour is 255 * 0.7 + REAL_COLOUR * 0.3: (187.8, 214.2, 232.5) for
    # REAL_COLOUR (31, 119, 180)
    t = np.array([0.3] * 10 + [0.8])
    t_tgt = np.array([0.1] * 10 + [0.35])
    path = plots.trajectory_map_png(tmp_path / "m.png", t, t_tgt, title="map")
    # densest pixel is opaque
    assert pixel(path, *to_pixel(0.3, 0.1, **MAP_BOX)) == plots.REAL_COLOUR
    lone = pixel(path, *to_pixel(0.8, 0.35, **MAP_BOX))
    assert all(abs(a - b) <= 1 for a, b in zip(lone, (187.8, 214.2, 232.5)))


def test_trajectory_map_many_points_and_bad_input(tmp_path):
    generator = torch.Generator().manual_seed(0)
    t = torch.rand(40000, generator=generator) * 2 - 1
    t_tgt = t * torch.rand(40000, generator=generator)
    t[0] = float("nan")
    start = time.perf_counter()
    assert plots.trajectory_map_png(tmp_path / "m.png", t, t_tgt).exists()
    assert time.perf_counter() - start < 2.0  # ~0.2 s on a 2-core CPU
    with pytest.raises(ValueError, match="1-D"):
        plots.trajectory_map_png(tmp_path / "m.png", torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        plots.trajectory_map_png(tmp_path / "m.png", torch.tensor([1.5]), torch.tensor([0.0]))


# ---------- trajectories ----------


def test_trajectories_draw_start_and_end_markers(tmp_path):
    # one straight path from (-1, -1) to (1, 1) in 5 steps; limits (-2, 2); two panels of size 300,
    # no title: panel k square at (k * 300 + 44, 24), side 300 - 58 = 242
    path_points = np.linspace(-1, 1, 5)[:, None, None] * np.ones((1, 1, 2))  # (T=5, N=1, 2)
    out = plots.trajectories_png(
        tmp_path / "t.png",
        [("real", path_points), ("fake", torch.tensor(-path_points))],
        size=300,
        limits=(-2, 2),
    )
    with Image.open(out) as image:
        assert image.size == (600, 24 + 242 + 44) and image.mode == "RGB"
    square = dict(left=44, top=24, width=242, height=242, x_lim=(-2, 2), y_lim=(-2, 2))
    end = pixel(out, *to_pixel(1.0, 1.0, **square))  # end dot: panel colour at opacity 0.9
    start = pixel(out, *to_pixel(-1.0, -1.0, **square))  # start dot: grey at opacity 0.8
    assert all(abs(a - b) <= 30 for a, b in zip(end, plots.PALETTE[0]))
    assert all(abs(a - b) <= 30 for a, b in zip(start, plots.START_COLOUR))
    second = dict(square, left=344)
    assert all(
        abs(a - b) <= 30
        for a, b in zip(pixel(out, *to_pixel(-1.0, -1.0, **second)), plots.PALETTE[1])
    )


def test_trajectories_bad_input_and_non_finite(tmp_path):
    with pytest.raises(ValueError, match=r"\(T, N, 2\)"):
        plots.trajectories_png(tmp_path / "t.png", [("a", np.zeros((4, 2)))])
    with pytest.raises(ValueError, match="non-empty"):
        plots.trajectories_png(tmp_path / "t.png", [])
    paths = np.zeros((3, 2, 2))
    paths[1, 0, 0] = np.nan
    assert plots.trajectories_png(
        tmp_path / "t.png", [("a", paths)], title="nan path skipped"
    ).exists()
