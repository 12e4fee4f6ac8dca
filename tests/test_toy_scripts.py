"""The paper-companion scripts in toy/ run end to end (--quick) and their math is exact.

Golden values are hand computations: the Euler sum of a time-only velocity, the largest-remainder
split of 96 rows, and mode statistics of hand-placed points. Time convention: see
twinflow_min/transport.py.
"""

import importlib.util
import json
import math
import re
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


def assert_docstring_lists_outputs(module, out, placeholders):
    """Every file a script wrote at the top of `out` is named in its docstring, with its toy /
    method replaced by the docstring's placeholder (the run folders are listed as such)."""
    for path in out.iterdir():
        if path.is_file():
            name = path.name
            for word, placeholder in placeholders.items():
                name = name.replace(word, placeholder)
            assert name in module.__doc__, f"{path.name} is not listed in the docstring"


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
    assert "note" not in capsys.readouterr().err  # this run trained its fake branch
    # runs that never trained the fake branch get a one-line note, and the figures still come
    # (only L_adv trains F(x, -t, -t): the consistency-only row has an untrained one too)
    for method, runs, why in [
            ("flow-matching", results, "twinflow_enabled false"),
            ("rcgm", results, "twinflow_adversarial_enabled false"),
            ("rcgm+realvel+consistency", split, "twinflow_adversarial_weight 0")]:
        untrained = tmp_path / f"paths-{method}"
        trajectories.main([runs[method][0]["run_dir"], "--num", "20", "--out", str(untrained)])
        assert capsys.readouterr().err.splitlines() == [
            f"toy/trajectories.py: note: this run never trained the fake branch ({why}); its fake "
            f"paths show an untrained F(x, -t, -t)"]
        assert (untrained / "trajectories_paths.png").exists()
    # the --quick table states a wall time of seconds, not "0.0 min"
    assert re.search(r"Wall time \d+ s in all", (out / "compare_moons.md").read_text())


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
    # an --extra flag for a key the script leaves alone reaches every run
    results = shares.main(["--quick", "--out", str(out), "--extra", "--batch-size=48"])
    assert list(results) == [0.0, 1 / 3]
    assert {run_config(runs[0])["train_batch_size"] for runs in results.values()} == {48}
    assert "batch 48 per run" in (out / "twin_shares_moons.md").read_text()
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
    assert_docstring_lists_outputs(shares, out, {"moons": "<toy>"})


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
    assert_docstring_lists_outputs(nfe, out, {"moons": "<toy>", "twinflow-tutorial": "<method>",
                                              "rcgm": "<method>"})


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
    assert_docstring_lists_outputs(coverage, out, {"8gaussians": "<toy>", "grid25": "<toy>"})


def one_error_line(capsys, script):
    """The stderr of a refused call: exactly one line "toy/<script>.py: error: ...", no usage."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"toy/{script}.py: error: "), lines
    return lines[0].removeprefix(f"toy/{script}.py: error: ")


SHARE_HINT = ("set by this script for the adv share; use --twin-shares (share 0 turns the "
              "adversarial branch off)")


@pytest.mark.parametrize("script, argv, message", [
    ("compare_methods", ["--extra", "--max_train_steps", "5"],
     "--extra --max_train_steps: set by this script; use --steps"),
    ("compare_methods", ["--extra", "--steps=5"],
     "--extra --steps: set by this script; use --steps"),
    ("compare_methods", ["--extra", "--toy", "circles"],
     "--extra --toy: set by this script; use --toy"),
    ("compare_methods", ["--extra", "--dataset=toy:circles"],
     "--extra --dataset: set by this script; use --toy"),
    ("compare_methods", ["--extra", "--seed", "4"],
     "--extra --seed: set by this script; use --seeds"),
    ("compare_methods", ["--extra", "--output_dir", "x"],
     "--extra --output_dir: set by this script; use --out, before --extra"),
    ("compare_methods", ["--extra", "--out", "x"],
     "--extra --out: --extra passes the rest of the line to train.py; put --out before --extra"),
    ("compare_methods", ["--extra", "--run_name", "x"],
     "--extra --run_name: set by this script; the script names each run"),
    ("compare_methods", ["--extra", "--checkpointing_steps", "1"],
     "--extra --checkpointing_steps: set by this script; each run keeps only its final checkpoint"),
    ("compare_methods", ["--methods", "rcgm", "twinflow-large", "--extra", "--twinflow_recipe",
                         "tutorial"],
     "--extra --twinflow_recipe: set by this script for method twinflow-large; choose the methods "
     "with --methods"),
    ("compare_methods", ["--extra", "--batch-size", "8", "--twinflow_enabled=true"],
     "--extra --twinflow_enabled: set by this script for method flow-matching; choose the methods "
     "with --methods"),
    ("nfe_vs_steps", ["--extra", "--max_train_steps", "9"],
     "--extra --max_train_steps: set by this script; use --lengths"),
    ("mode_coverage", ["--extra", "--toy", "moons"],
     "--extra --toy: set by this script; use --toys"),
    ("twin_shares", ["--extra", "--twinflow_recipe", "tutorial"],
     "--extra --twinflow_recipe: " + SHARE_HINT),
    ("twin_shares", ["--extra", "--twinflow_group_proportions=0.25,0.25,0.25,0.25"],
     "--extra --twinflow_group_proportions: " + SHARE_HINT),
    ("twin_shares", ["--twin-shares", "0.5", "--extra", "--twinflow_adversarial_enabled", "true"],
     "--extra --twinflow_adversarial_enabled: " + SHARE_HINT),
    # a key another method sets would turn this row into that method under this row's name
    ("compare_methods", ["--methods", "rcgm", "--extra", "--twinflow_enabled", "false"],
     "--extra --twinflow_enabled: decides which method a row trains; choose the rows with "
     "--methods"),
    ("compare_methods", ["--extra", "--config", "c.json"],
     "--extra --config: a config file could change what this script sets; give train.py flags "
     "instead"),
    ("compare_methods", ["--extra", "--eval_samples=0"],
     "--extra --eval_samples 0: every run is scored; give a count >= 1"),
    ("nfe_vs_steps", ["--extra", "--eval_samples", "0"],
     "--extra --eval_samples 0: every run is scored; give a count >= 1"),
])
def test_extra_flags_that_the_script_sets_are_refused(tmp_path, capsys, script, argv, message):
    # applied after the script's own flags they would win, and the table would say otherwise
    out = tmp_path / "new"
    with pytest.raises(SystemExit) as stop:  # --quick: seconds, were a refusal ever missed
        load_script(script).main(["--quick", "--out", str(out), *argv])
    assert stop.value.code == 2
    assert one_error_line(capsys, script) == message
    assert not out.exists()  # refused before anything is written


def test_extra_flags_the_script_leaves_alone_pass():
    compare = load_script("compare_methods")
    # keys no method and no script setting touches pass through to every run
    args = compare.parse_args(["--methods", "rcgm", "--extra", "--twinflow_delta_t", "0.02",
                               "--batch-size", "32", "--eval_samples", "500"])
    assert args.extra == ["--twinflow_delta_t", "0.02", "--batch-size", "32", "--eval_samples",
                          "500"]
    with pytest.raises(SystemExit):  # a key that tells methods apart never does
        compare.parse_args(["--methods", "flow-matching", "--extra", "--twinflow_realvel_weight",
                            "0.5"])


def test_twin_shares_accept_fractions_and_decimals(capsys):
    shares = load_script("twin_shares")
    args = shares.parse_args(["--twin-shares", "1/3", "0.5", "0", "3/40"])
    assert args.twin_shares == [0.0, 0.075, 1 / 3, 0.5]
    for bad in ["4/3", "1/0", "one", "1", "-0.1", "nan"]:
        with pytest.raises(SystemExit) as stop:
            shares.parse_args(["--twin-shares", bad])
        assert stop.value.code == 2
        assert "[0, 1)" in one_error_line(capsys, "twin_shares")
    with pytest.raises(SystemExit):  # 2/6 is 1/3 again
        shares.parse_args(["--twin-shares", "1/3", "2/6"])
    assert "repeats a value" in one_error_line(capsys, "twin_shares")


@pytest.mark.parametrize("script, argv, words", [
    ("compare_methods", ["--methods", "nope"], "invalid choice: 'nope'"),
    ("compare_methods", ["--steps", "0"], "integer >= 1"),
    ("compare_methods", ["--bogus"], "unrecognized arguments: --bogus"),
    ("compare_methods", ["--seeds", "1", "1"], "repeats a value"),
    ("twin_shares", ["--twin-shares", "0.5", "x"], "must be a number or fraction p/q in [0, 1)"),
    ("twin_shares", ["--seeds", "1", "1"], "repeats a value"),
    ("nfe_vs_steps", ["--lengths", "0"], "integer >= 1"),
    ("nfe_vs_steps", ["--lengths", "2", "2"], "repeats a value"),
    ("mode_coverage", ["--toys", "moons"], "invalid choice: 'moons'"),
    ("mode_coverage", ["--bogus"], "unrecognized arguments"),
    ("trajectories", [], "the following arguments are required: run"),
    ("trajectories", ["run", "--steps", "0"], "integer >= 1"),
    ("trajectories", ["run", "--bogus"], "unrecognized arguments"),
])
def test_argument_errors_are_one_line_naming_the_script(capsys, script, argv, words):
    with pytest.raises(SystemExit) as stop:
        load_script(script).main(argv)
    assert stop.value.code == 2
    assert words in one_error_line(capsys, script)


def test_out_naming_a_file_is_refused_as_a_file(tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("keep me\n")
    with pytest.raises(SystemExit) as stop:
        load_script("compare_methods").main(["--quick", "--out", str(taken)])
    assert stop.value.code == 2
    error = one_error_line(capsys, "compare_methods")
    assert error == f"--out {taken} is a file; choose a new folder"
    assert taken.read_text() == "keep me\n"


def test_wall_time_in_seconds_under_a_minute():
    companion = load_script("companion")
    assert [companion.wall_time(s) for s in (0.2, 6.4, 59.4, 59.6, 90, 264)] == [
        "0 s", "6 s", "59 s", "1.0 min", "1.5 min", "4.4 min"]


def test_help_texts_show_their_examples_as_typed():
    # the compare example continues over two lines: the backslash must reach --help
    compare = load_script("compare_methods")
    assert "rcgm+realvel+consistency \\\n        rcgm+realvel+adv+rectify" in compare.__doc__
    shares = load_script("twin_shares")
    assert "--twin-shares 0.2 1/3 0.4" in shares.__doc__  # an example that now parses
    assert shares.parse_args(["--twin-shares", "0.2", "1/3", "0.4"]).twin_shares[1] == 1 / 3
