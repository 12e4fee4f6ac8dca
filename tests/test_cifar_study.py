"""tools/cifar_study.py: the equal-compute CIFAR study driver (issue 19).

The measures are checked against closed forms; one --quick run of the whole driver on a tiny
synthetic class-folder dataset (made here, so the real CIFAR-10 archives are not needed) checks
that every arm trains and stops on its CPU budget, that arms C and D switch TwinFlow on at the K
the driver chose, and that the driver's Fréchet numbers are the ones sample.py --proxy-metrics
prints for the same checkpoint and seed.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL_PATH = REPO_ROOT / "tools" / "cifar_study.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("cifar_study", TOOL_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cifar_study"] = module  # its dataclass looks its module up while being built
    spec.loader.exec_module(module)
    return module


study = _load_tool()


def test_roughness_of_a_checkerboard_and_a_ramp():
    checker = (torch.arange(6).view(6, 1) + torch.arange(5).view(1, 5)) % 2 * 2.0 - 1  # +-1
    images = checker.expand(2, 3, 6, 5)
    assert study.neighbour_roughness(images) == pytest.approx(4.0, abs=1e-12)  # |2|^2 both ways
    ramp = (0.1 * torch.arange(7, dtype=torch.float64)).expand(1, 3, 4, 7)
    assert study.neighbour_roughness(ramp) == pytest.approx((0.01 + 0.0) / 2, abs=1e-12)


def test_roughness_of_uint8_images_uses_the_minus_one_to_one_scale():
    stripes = np.zeros((1, 3, 4, 4), dtype=np.uint8)
    stripes[..., 1::2] = 255  # columns -1, 1, -1, 1: horizontal (2)^2 = 4, vertical 0
    assert study.neighbour_roughness(stripes) == pytest.approx(2.0, abs=1e-12)
    with pytest.raises(ValueError, match="H, W >= 2"):
        study.neighbour_roughness(np.zeros((1, 3, 1, 4), dtype=np.uint8))


def test_step_at_cpu_interpolates_and_extends_the_mean_rate():
    trace = [(0.0, 0), (1.0, 10), (3.0, 20)]
    assert study.step_at_cpu(trace, 2.0) == 15  # halfway between (1, 10) and (3, 20)
    assert study.step_at_cpu(trace, 0.55) == 5  # 5.5 floored
    assert study.step_at_cpu(trace, 6.0) == 40  # mean rate 20 / 3 steps per s: 20 + 3 * 20 / 3
    with pytest.raises(ValueError):
        study.step_at_cpu([(0.0, 0)], 1.0)


def _class_folders(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in ("cat", "dog"):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def _metric_rows(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines)}


def test_refusals_are_one_line(tmp_path, capsys):
    data = _class_folders(tmp_path / "data", 2, 0)
    base = ["--train-data", str(data), "--test-data", str(data)]
    cases = [
        (["--out", str(tmp_path)], "exists"),
        (["--out", str(tmp_path / "s"), "--arms", "B,C"], "--arms must list A"),
        (["--out", str(tmp_path / "s"), "--fm-share", "1.5"], "--fm-share"),
        (["--out", str(tmp_path / "s"), "--budget", "0"], "--budget"),
        (["--out", str(tmp_path / "s"), "--num-samples", "1"], "--num-samples"),
    ]
    for extra, words in cases:
        with pytest.raises(SystemExit) as stop:
            study.main(base + extra)
        message = capsys.readouterr().err
        assert stop.value.code == 2
        assert message.startswith("cifar_study.py: error:") and words in message
        assert message.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_quick_study_end_to_end(tmp_path):
    train = _class_folders(tmp_path / "train", 6, 0)
    test = _class_folders(tmp_path / "test", 4, 1)
    out, docs = tmp_path / "study", tmp_path / "docs"
    command = [
        sys.executable,
        str(TOOL_PATH),
        "--quick",
        "--parallel",
        "4",
        "--train-data",
        str(train),
        "--test-data",
        str(test),
        "--out",
        str(out),
        "--docs",
        str(docs),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())

    start_step = results["twinflow_start_step"]
    assert set(results["arms"]) == {"A", "B", "C", "D"}
    for arm, info in results["arms"].items():
        assert info["steps"] >= 1 and info["exit_code"] in (0, 143)  # 143: stopped by SIGTERM
        assert info["train_cpu_s"] >= results["budget_cpu_s"]  # stopped only once it was spent
        config = json.loads((out / "configs" / f"arm_{arm}.json").read_text())
        assert config.get("twinflow_enabled", False) == (arm != "A")
        assert config.get("twinflow_start_step", 0) == (start_step if arm in "CD" else 0)
    # K: arm A's step after 2/3 of the budget, extrapolated from its first CPU second(s)
    calibration = results["traces"]["A"][: results["k_from_trace_points"]]
    assert calibration[-1][0] >= 1.0  # --quick calibrates on 1 CPU second
    expected = max(1, study.step_at_cpu(calibration, results["budget_cpu_s"] * 2 / 3))
    assert start_step == expected
    logged = {arm: _metric_rows(out / "runs" / arm) for arm in "ACD"}
    for arm in "CD":  # steps 1..K (0-based indices below K) are arm A's flow matching, bit for bit
        assert results["arms"][arm]["steps"] > start_step
        for step in range(1, start_step + 1):
            assert logged[arm][step]["loss_fm"] == logged["A"][step]["loss_fm"]
        assert "loss_fm" not in logged[arm][start_step + 1]  # TwinFlow terms from index K on
        assert "loss_rectify" in logged[arm][start_step + 1]

    rows = {row["label"]: row for row in results["rows"]}
    snapshot_steps = [int(p.stem[5:]) for p in (out / "snapshots" / "A").glob("step_*")]
    for arm in "BCD":  # arm A measured at the snapshot nearest to the other arm's steps
        nearest = min(abs(step - results["arms"][arm]["steps"]) for step in snapshot_steps)
        assert abs(rows[f"A @ {arm}'s steps"]["steps"] - results["arms"][arm]["steps"]) == nearest

    # the driver's numbers are sample.py --proxy-metrics' numbers for the same checkpoint and seed
    checkpoint = str(out / "runs" / "A" / "checkpoint.safetensors")
    for flags, name in ((["--ode"], "ode50"), (["--nfe", "1"], "nfe1")):
        argv = [checkpoint, "--proxy-metrics", "--fid-data", str(test)]
        printed = sample.main(argv + ["--num", str(results["num_samples"]), *flags])
        expected = printed["fd_random_features"]
        assert rows["A"]["metrics"][name]["fd_random_features"] == pytest.approx(expected, rel=1e-6)
    gap = rows["A"]["metrics"]["gap_1nfe_vs_50step_mse"]  # the last call: 1 NFE vs the ODE
    assert gap == pytest.approx(printed["gap_1nfe_vs_50step_mse"], rel=1e-6)

    for arm in "ABCD":  # four rows (1, 2, 4 NFE, ODE) of 64-pixel tiles with 2-pixel padding
        with Image.open(docs / f"cifar_study_{arm}.png") as grid:
            assert grid.height == 2 + 4 * (2 * 32 + 2)
    assert "| A @ B's steps |" in (out / "results.md").read_text()
