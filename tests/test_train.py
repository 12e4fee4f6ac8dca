"""End-to-end tests of train.py and sample.py on CPU with tiny models (issues #3, #4, #5).

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, negative t is the fake branch.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import sample
import train
from twinflow_min import objective, train_state
from twinflow_min.train_state import read_checkpoint

REPO = Path(__file__).resolve().parent.parent
TOY_FAST = ["--toy", "moons", "--batch-size", "32", "--eval_samples", "200", "--log_every", "5"]


def run_toy(tmp_path, *extra, name="run"):
    return train.main([*TOY_FAST, "--output_dir", str(tmp_path), "--run_name", name, *extra])


def image_folder(root: Path, per_class: int = 6, size: int = 8) -> Path:
    """A class-folder dataset of random PNGs: <root>/<class>/<i>.png, two classes."""
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_toy_smoke_run_writes_every_artifact(tmp_path):
    summary = run_toy(tmp_path, "--steps", "30")
    run_dir = Path(summary["run_dir"])
    for name in ("checkpoint.safetensors", "checkpoint.json", "samples_nfe1.png",
                 "samples_nfe2.png",
                 "samples_nfe4.png", "samples_multistep.png", "loss_curves.png",
                 "trajectory_map.png",
                 "metrics.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("energy_distance_nfe1", "energy_distance_nfe2", "energy_distance_nfe4",
                "energy_distance_ode50"):
        assert np.isfinite(metrics[key]) and metrics[key] >= 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [5, 10, 15, 20, 25, 30]
    # the toy preset trains TwinFlow with the adversarial branch: every tutorial term is logged
    assert {"loss_base", "loss_realvel", "loss_adv", "loss_rectify",
            "loss_consistency"} <= set(rows[0])
    with safe_open(str(run_dir / "checkpoint.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        assert json.loads(handle.metadata()["twinflow_min.train_state"])["step"] == 30
    assert any(k.startswith("model.") for k in keys)
    assert any(k.startswith("ema.teacher.") for k in keys)
    assert any(k.startswith("optimizer.") for k in keys)
    assert "rng.train" in keys and "rng.toy_data" in keys


def test_toy_validation_draws_its_own_sampler_noise(tmp_path):
    # the 2- and 4-NFE presets re-noise (stochastic ratio 1): validation must give the sampler a
    # generator of its own, or ucgm_sample refuses to run
    summary = run_toy(tmp_path, "--steps", "4", "--validation_every", "2")
    pictures = sorted(p.name for p in (Path(summary["run_dir"]) / "validation").iterdir())
    assert pictures == ["step_0000002.png", "step_0000004.png"]


def test_a_fresh_run_never_overwrites_an_earlier_one(tmp_path):
    first = run_toy(tmp_path, "--steps", "2")
    second = run_toy(tmp_path, "--steps", "2")
    assert first["run_dir"] != second["run_dir"]
    assert Path(first["run_dir"], "checkpoint.safetensors").is_file()


def _weights(run_dir):
    state = read_checkpoint(run_dir)
    return state["model"], state["ema"]["teacher"], state["optimizer"]


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def interrupt_at_call(monkeypatch, call_index: int):
    """Send Ctrl-C (SIGINT) to ourselves inside the `call_index`-th loss evaluation."""
    original, calls = objective.twinflow_losses, []

    def losses(*args, **kwargs):
        calls.append(1)
        if len(calls) == call_index:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(objective, "twinflow_losses", losses)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_toy_interrupt_and_resume_is_bit_identical(tmp_path, monkeypatch, schedule):
    """N steps straight == Ctrl-C during step k + --resume to N: model, EMA, optimizer."""
    common = ["--lr_schedule", schedule, "--max_train_steps", "8"]
    straight = run_toy(tmp_path, *common, name="straight")
    with monkeypatch.context() as patch:
        interrupt_at_call(patch, 3)
        with pytest.raises(SystemExit) as stopped:
            run_toy(tmp_path, *common, name="part")
    assert stopped.value.code == 130  # 128 + SIGINT: an interrupted run exits non-zero
    part_dir = str(tmp_path / "part")
    assert read_checkpoint(part_dir)["info"]["step"] == 3
    # the run's own config comes back from the checkpoint
    resumed = train.main(["--resume", part_dir])
    assert resumed["step"] == 8 and resumed["run_dir"] == part_dir
    model_a, ema_a, opt_a = _weights(straight["run_dir"])
    model_b, ema_b, opt_b = _weights(resumed["run_dir"])
    _assert_identical(model_a, model_b)
    _assert_identical(ema_a, ema_b)
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for index in opt_a["state"]:
        _assert_identical(opt_a["state"][index], opt_b["state"][index])
    assert resumed["energy_distance_nfe1"] == straight["energy_distance_nfe1"]


def test_images_train_resume_and_validation_grids(tmp_path):
    """A few steps of a tiny class-conditional DiT on 8x8 images (label dropout, accumulation)."""
    data = image_folder(tmp_path / "data")
    args = ["--dataset", "folder", "--data", str(data), "--model", "CIFAR-T/2", "--batch-size", "4",
            "--gradient_accumulation_steps", "2", "--twinflow_enhanced_ratio", "0.5",
            "--validation_every", "2",
            "--checkpointing_steps", "2", "--output_dir", str(tmp_path / "out")]
    straight = train.main([*args, "--max_train_steps", "4", "--run_name", "a"])
    part = train.main([*args, "--max_train_steps", "2", "--run_name", "b"])
    resumed = train.main(["--resume", part["run_dir"], "--max_train_steps", "4"])
    _assert_identical(_weights(straight["run_dir"])[0], _weights(resumed["run_dir"])[0])
    run_dir = Path(straight["run_dir"])
    grids = sorted((run_dir / "validation").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000004.png"]
    assert (run_dir / "samples_grid.png").is_file() and (run_dir / "trajectory_map.png").is_file()
    state = read_checkpoint(run_dir)
    assert state["model_config"].num_classes == 2 and state["model_config"].input_size == 8
    assert state["info"]["data_state"]["position"] >= 0


def test_nan_loss_stops_with_step_terms_and_checkpoint(tmp_path, monkeypatch, capsys):
    original, calls = objective.twinflow_losses, []

    def losses(*args, **kwargs):
        calls.append(1)
        terms = original(*args, **kwargs)
        if len(calls) == 5:
            terms["loss_adv"] = terms["loss_adv"] * float("nan")
            terms["loss"] = terms["loss"] + terms["loss_adv"]
        return terms

    monkeypatch.setattr(objective, "twinflow_losses", losses)
    with pytest.raises(SystemExit) as stopped:
        run_toy(tmp_path, "--steps", "10", "--checkpointing_steps", "2")
    assert stopped.value.code == 3
    message = capsys.readouterr().err
    assert "step 5" in message and "loss_adv=nan" in message and "loss_base=" in message
    assert "checkpoint.safetensors" in message
    # the last good checkpoint is intact
    assert read_checkpoint(tmp_path / "run")["info"]["step"] == 4


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A write that dies half-way leaves the previous checkpoint readable and no temporary file."""
    summary = run_toy(tmp_path, "--steps", "2")
    run_dir = Path(summary["run_dir"])
    before = read_checkpoint(run_dir)["model"]

    def broken_save(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(train_state, "save_file", broken_save)
    from twinflow_min.model import build_model
    with pytest.raises(OSError):
        train_state.save_checkpoint(run_dir, model=build_model("toy"), step=99, train_config={})
    after = read_checkpoint(run_dir)
    assert after["info"]["step"] == 2
    _assert_identical(before, after["model"])
    assert sorted(p.name for p in run_dir.glob("*.tmp")) == []


def test_sample_py_round_trip_and_per_seed_determinism(tmp_path):
    summary = run_toy(tmp_path, "--steps", "5")
    out_a, out_b, png = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "s.png"
    sample.main([summary["run_dir"], "--nfe", "1", "--num", "40", "--out", str(out_a), "--seed",
                 "3",
                 "--batch-size", "16"])
    sample.main([summary["checkpoint"], "--nfe", "1", "--num", "10", "--out", str(out_b), "--seed",
                 "3"])
    a, b = np.load(out_a), np.load(out_b)
    assert a.shape == (40, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    # sample i depends only on (seed, i), not on batching or count: equal up to float32 rounding,
    # since a matmul over 16 rows and one over 10 rows may block the sums differently (6e-8 seen on
    # torch 2.13)
    np.testing.assert_allclose(a[:10], b, rtol=0, atol=1e-6)
    c = tmp_path / "c.npy"
    sample.main([summary["run_dir"], "--nfe", "2", "--num", "10", "--out", str(c), "--seed", "4"])
    assert not np.array_equal(np.load(c), b)
    sample.main([summary["run_dir"], "--nfe", "4", "--num", "100", "--out", str(png)])
    assert Image.open(png).size[0] > 100


# Every refusal of issue #4, each as a JSON file: {key the one-line message must name: file
# contents}.
CONFIG_ERRORS = {
    "prediction_type": {"twinflow_enabled": True, "prediction_type": "epsilon"},
    "use_ema": {"twinflow_enabled": True, "use_ema": False, "twinflow_enhanced_ratio": 0.0},
    "distillation_method": {"twinflow_enabled": True, "distillation_method": "dmd"},
    # unknown key (the message suggests the right one)
    "twinflow_estimate_ordr": {"twinflow_estimate_ordr": 2},
    "learning_rate": {"learning_rate": "fast"},  # wrong type
    "twinflow_estimate_order": {"twinflow_enabled": True, "twinflow_estimate_order": 0},
    "twinflow_target_step_count": {"twinflow_enabled": True, "twinflow_target_step_count": 9},
    "twinflow_delta_t": {"twinflow_enabled": True, "twinflow_delta_t": 0.7},
    "twinflow_rectify_weight": {"twinflow_enabled": True, "twinflow_rectify_weight": -1.0},
    "ema_decay": {"ema_decay": 1.5},
    "gradient_accumulation_steps": {"gradient_accumulation_steps": 0},
    "model_type": {"model_type": "lora"},
}
NEGATIVE_LEARNING_RATE = {"learning_rate": -1e-4}  # same key as the wrong type: checked on its own


def write_error_configs(folder: Path) -> list[tuple[str, Path]]:
    cases = list(CONFIG_ERRORS.items()) + [("learning_rate", NEGATIVE_LEARNING_RATE)]
    paths = []
    for index, (key, values) in enumerate(cases):
        path = folder / f"bad-{index}-{key}.json"
        path.write_text(json.dumps(values))
        paths.append((key, path))
    return paths


def test_config_errors_through_main_are_one_line(tmp_path, capsys):
    for key, path in write_error_configs(tmp_path):
        with pytest.raises(SystemExit) as stopped:
            train.main(["--config", str(path), "--output_dir", str(tmp_path / "runs")])
        assert stopped.value.code == 2, key
        err = capsys.readouterr().err.strip()
        assert key in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()  # refused before any work started


def test_config_errors_through_the_cli(tmp_path):
    """The refusals as a person sees them: `python train.py --config bad.json`, exit 2, one line."""
    processes = {}
    for key, path in write_error_configs(tmp_path):
        processes[path] = key, subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), "--config", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    for path, (key, process) in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 2, (path.name, out, err)
        assert key in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "outputs").exists()

