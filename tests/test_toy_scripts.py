"""The paper-companion scripts in toy/ run end to end (--quick) and their math is exact.

Golden values are hand computations: the Euler sum of a time-only velocity, the largest-remainder
split of 96 rows, and mode statistics of hand-placed points. Time convention: see
twinflow_min/transport.py.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

TOY_DIR = Path(__file__).resolve().parent.parent / "toy"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"toy_{name}", TOY_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_cells(path):
    """The cells of every row of the first markdown table in `path` (header included)."""
    lines = path.read_text().split("\n\n")[1].splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines
            if not line.startswith("|---")]


def run_config(summary):
    return json.loads((Path(summary["run_dir"]) / "checkpoint.json").read_text())["train_config"]


class TimeVelocity(torch.nn.Module):
    """F(x, t, t_tgt) = t (every coordinate): the velocity depends only on the signed time."""

    def forward(self, x_t, t, t_tgt, y=None):
        return t[:, None].to(x_t.dtype).expand_as(x_t)


@pytest.mark.parametrize("steps", [1, 4, 50])
def test_trajectory_integrator_matches_the_euler_sum(steps):
    # Euler from t = 1 to 0 on the grid t_k = 1 - k/n with dx = -(t_k - t_k+1) * sign * t_k:
    # x_end = z - sign * sum_k (1/n)(1 - k/n) = z - sign * (n + 1) / (2n)   (closed form of the sum)
    trajectories = load_script("trajectories")
    z = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    shift = (steps + 1) / (2 * steps)
    for sign in (1.0, -1.0):
        path = trajectories.integrate(TimeVelocity(), z, steps, sign)
        assert path.shape == (steps + 1, 2, 2)
        torch.testing.assert_close(path[0], z, rtol=0, atol=0)
        torch.testing.assert_close(path[-1], z - sign * shift, rtol=0, atol=1e-12)


def test_compare_methods_and_trajectories_run_end_to_end(tmp_path, capsys):
    compare = load_script("compare_methods")
    companion = compare.METHODS
    out = tmp_path / "compare"
    results = compare.main(["--quick", "--out", str(out)])
    assert list(results) == ["flow-matching", "rcgm", "rcgm+realvel", "twinflow-tutorial",
                             "twinflow-large"] == list(compare.DEFAULT_METHODS)
    assert list(companion) == [*results, "rcgm+realvel+consistency", "rcgm+realvel+adv+rectify"]
    keys = [key for _, key in compare.COLUMNS]
    for runs in results.values():
        assert len(runs) == 1 and runs[0]["step"] == 3
        assert all(math.isfinite(runs[0][key]) for key in keys)
    cells = table_cells(out / "compare_moons.md")
    assert cells[0] == ["method", "1 NFE", "2 NFE", "4 NFE", "50-step ODE", "s / run"]
    assert [row[:5] for row in cells[1:6]] == [
        [method, *(f"{runs[0][key]:.4f}" for key in keys)] for method, runs in results.items()]
    assert cells[6][0] == "data (2nd draw)"
    assert (out / "compare_moons.png").stat().st_size > 0
    # each row trains what its name says (the flags reached the run's saved config)
    config = {method: run_config(runs[0]) for method, runs in results.items()}
    assert config["flow-matching"]["twinflow_enabled"] is False
    assert config["rcgm"]["twinflow_adversarial_enabled"] is False
    assert config["rcgm"]["twinflow_realvel_weight"] == 0
    assert config["rcgm+realvel"]["twinflow_realvel_weight"] == 1
    assert config["twinflow-tutorial"]["twinflow_recipe"] == "tutorial"
    assert config["twinflow-large"]["twinflow_recipe"] == "large"
    assert len({c["max_train_steps"] for c in config.values()}) == 1
    # the two rows that split the tutorial recipe's twin-branch terms apart
    split = compare.main(["--quick", "--out", str(tmp_path / "terms"), "--methods",
                          "rcgm+realvel+consistency", "rcgm+realvel+adv+rectify"])
    weights = ("twinflow_adversarial_weight", "twinflow_rectify_weight",
               "twinflow_consistency_weight")
    assert {method: tuple(run_config(runs[0])[key] for key in weights)
            for method, runs in split.items()} == {"rcgm+realvel+consistency": (0, 0, 1),
                                                   "rcgm+realvel+adv+rectify": (1, 1, 0)}
    assert all(run_config(runs[0])["twinflow_adversarial_enabled"] for runs in split.values())

    trajectories = load_script("trajectories")
    run_dir = results["twinflow-tutorial"][0]["run_dir"]
    paths = trajectories.main([str(run_dir), "--num", "20", "--steps", "5"])
    assert paths.exists() and (paths.parent / "trajectories_ends.png").exists()
    assert "mean squared distance to the one-step samples" in capsys.readouterr().out
    before = paths.read_bytes()
    with pytest.raises(SystemExit) as stop:  # a second run never overwrites the first's PNGs
        trajectories.main([str(run_dir), "--num", "20", "--steps", "7"])
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert paths.read_bytes() == before
    elsewhere = trajectories.main([str(run_dir), "--num", "20", "--out", str(tmp_path / "paths")])
    assert elsewhere == tmp_path / "paths" / "trajectories_paths.png" and elsewhere.exists()


def test_scripts_refuse_bad_input_in_one_line(tmp_path, capsys):
    compare = load_script("compare_methods")
    used = tmp_path / "used"
    used.mkdir()
    (used / "compare_moons.md").write_text("earlier results\n")
    for argv, words in [(["--out", str(used)], "already exists"),
                        (["--seeds", "0", "0"], "repeats"),
                        (["--steps", "0"], "integer >= 1"),
                        (["--seeds", "-1"], "a seed in")]:
        with pytest.raises(SystemExit) as stop:
            compare.main(["--quick", "--out", str(tmp_path / "new"), *argv])  # the last --out wins
        assert stop.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert words in error
    assert (used / "compare_moons.md").read_text() == "earlier results\n"  # never overwritten
    with pytest.raises(SystemExit):
        load_script("twin_shares").main(["--quick", "--twin-shares", "1"])
    assert "[0, 1)" in capsys.readouterr().err


def test_twin_share_mapping_onto_the_large_recipe_groups():
    shares = load_script("twin_shares")
    assert shares.group_proportions(0.25) == [0.25, 0.25, 0.25, 0.25]  # the recipe's default split
    torch.testing.assert_close(torch.tensor(shares.group_proportions(1 / 3)),
                               torch.tensor([2 / 9, 2 / 9, 2 / 9, 1 / 3]))
    assert "--twinflow_adversarial_enabled" in shares.share_flags(0.0)
    assert "--twinflow_adversarial_enabled" not in shares.share_flags(0.1)
    # batch 96 at share 1/3: quotas 21.33 x 3 and 32 -> floors 21, 21, 21, 32 (95 rows); the last
    # row goes to the largest remainder, a tie between the first three broken towards e2e
    from twinflow_min.twinflow_large import partition_batch
    assert partition_batch(96, shares.group_proportions(1 / 3)) == [22, 21, 21, 32]


def test_twin_shares_runs_end_to_end(tmp_path):
    shares = load_script("twin_shares")
    out = tmp_path / "shares"
    results = shares.main(["--quick", "--out", str(out)])
    assert list(results) == [0.0, 1 / 3]
    off, third = run_config(results[0.0][0]), run_config(results[1 / 3][0])
    assert off["twinflow_group_proportions"] == [1 / 3, 1 / 3, 1 / 3, 0]
    assert off["twinflow_adversarial_enabled"] is False
    assert third["twinflow_adversarial_enabled"] is True and third["twinflow_recipe"] == "large"
    torch.testing.assert_close(torch.tensor(third["twinflow_group_proportions"]),
                               torch.tensor([2 / 9, 2 / 9, 2 / 9, 1 / 3]), rtol=0, atol=1e-6)
    cells = table_cells(out / "twin_shares_moons.md")
    assert [row[0] for row in cells[1:]] == ["0.000", "0.333", "data (2nd draw)"]
    assert cells[2][2] == f"{results[1 / 3][0]['energy_distance_nfe1']:.4f}"
    assert (out / "twin_shares_moons.png").stat().st_size > 0


def test_nfe_vs_steps_runs_end_to_end(tmp_path):
    nfe = load_script("nfe_vs_steps")
    out = tmp_path / "nfe"
    results = nfe.main(["--quick", "--out", str(out), "--methods", "twinflow-tutorial", "rcgm"])
    assert list(results) == [("twinflow-tutorial", 2), ("twinflow-tutorial", 4), ("rcgm", 2),
                             ("rcgm", 4)]
    assert all(runs[0]["step"] == n for (_, n), runs in results.items())
    cells = table_cells(out / "nfe_vs_steps_moons.md")
    assert cells[1][:3] == ["twinflow-tutorial", "2",
                            f"{results['twinflow-tutorial', 2][0]['energy_distance_nfe1']:.4f}"]
    assert (out / "nfe_vs_steps_moons.png").stat().st_size > 0


def test_mode_statistics_on_hand_placed_points():
    coverage = load_script("mode_coverage")
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[0.0, 0.0]] * 6 + [[10.5, 0.0], [5.1, 0.0], [math.nan, 0.0],
                                                [0.0, math.inf]])
    stats = coverage.mode_statistics(samples, centres, (1.0, 1.0))
    # nearest: 6 + 0 at mode 0; 10.5 (0.5 sd) and 5.1 (4.9 sd, off-mode) at mode 1; 2 non-finite
    torch.testing.assert_close(stats["mass"], torch.tensor([0.6, 0.2], dtype=torch.float64))
    assert stats["mass_tv"] == pytest.approx(0.5 * (0.1 + 0.3))
    assert stats["off_mode"] == pytest.approx(0.3)  # 5.1 and the two non-finite samples
    assert stats["hit"] == 2  # the 20% bar is 0.2 * 10 / 2 = 1 sample within 3 sd: mode 1 has one
    fewer = coverage.mode_statistics(samples[[0, 1, 2, 3, 4, 5, 7]], centres, (1.0, 1.0))
    assert fewer["hit"] == 1  # mode 1 keeps only the 4.9-sd sample: not hit
    # per-coordinate sd: (5, 0) is 2.5 sd away with sd_x = 2, (0, 2) is 4 sd away with sd_y = 0.5
    points = torch.tensor([[5.0, 0.0], [0.0, 2.0]])
    scaled = coverage.mode_statistics(points, centres[:1], (2.0, 0.5))
    assert scaled["off_mode"] == pytest.approx(0.5)


@pytest.mark.parametrize("toy", ["8gaussians", "grid25"])
def test_mode_statistics_of_the_data_itself(toy):
    # fresh data covers every mode with about its share; 3 sd keep 1 - exp(-4.5) = 98.9% of a mode
    coverage = load_script("mode_coverage")
    from twinflow_min.data import sample_toy, toy_mode_centres, toy_mode_std
    data = sample_toy(toy, 20000, torch.Generator().manual_seed(3))
    stats = coverage.mode_statistics(data, toy_mode_centres(toy), toy_mode_std(toy))
    assert stats["hit"] == stats["modes"] == {"8gaussians": 8, "grid25": 25}[toy]
    assert stats["mass_tv"] < 0.03
    assert stats["off_mode"] == pytest.approx(math.exp(-4.5), abs=0.004)


def test_mode_coverage_runs_end_to_end(tmp_path):
    coverage = load_script("mode_coverage")
    out = tmp_path / "modes"
    results = coverage.main(["--quick", "--out", str(out), "--methods", "twinflow-tutorial",
                             "flow-matching"])
    assert set(results) == {(toy, method) for toy in ("8gaussians", "grid25")
                            for method in ("twinflow-tutorial", "flow-matching", "data (2nd draw)")}
    for (toy, _), runs in results.items():
        assert runs[0]["modes"] == {"8gaussians": 8, "grid25": 25}[toy]
        assert 0 <= runs[0]["mass_tv"] <= 1 and 0 <= runs[0]["off_mode"] <= 1
    cells = table_cells(out / "mode_coverage.md")
    header = ["toy", "method", "modes hit", "mass error (TV)", "off-mode share", "1-NFE ED"]
    assert cells[0] == header
    assert len(cells) == 1 + 2 * 3
    assert (out / "mode_coverage.png").stat().st_size > 0
