"""sample.py at the command line (issues #13, #17): every sampler knob and preset, and one clear
line for every bad input, never an overwritten file, never NaN samples from a broken checkpoint.

Each refusal runs through `sample.main([...])` (the CLI's own entry) and must end in SystemExit(2)
after one line "sample.py: error: ..." on stderr naming the problem. Time convention: see
twinflow_min/transport.py.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sample
import train
from conftest import REPO_ROOT
from test_train import TOY_FAST, image_folder
from twinflow_min.sampler import PRESETS, preset_for_nfe


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    summary = train.main(
        [*TOY_FAST, "--steps", "3", "--output_dir", str(root), "--run_name", "run"]
    )
    return summary


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    data = image_folder(root / "data", per_class=4, size=8)
    return train.main(
        [
            "--dataset",
            "folder",
            "--data",
            str(data),
            "--model",
            "CIFAR-T/2",
            "--max_train_steps",
            "1",
            "--batch-size",
            "4",
            "--validation_every",
            "0",
            "--output_dir",
            str(root),
        ]
    )


def refuse(capsys, argv, message):
    """sample.main(argv) exits with 2 after one stderr line "sample.py: error: ..." with message."""
    capsys.readouterr()  # drop what earlier calls printed
    with pytest.raises(SystemExit) as caught:
        sample.main(argv)
    text = capsys.readouterr().err
    assert caught.value.code == 2
    assert text.startswith("sample.py: error: ") and text.count("\n") == 1, text
    assert message in text, text
    return text


# kind -> (extra arguments, words the one-line message must hold); {tmp} is a fresh folder
CASES = {
    "values": [
        (["--num", "0"], "--num must be an integer in [1,"),
        (["--num", "-5"], "--num must be an integer in [1,"),
        (["--num", "ten"], "--num must be an integer, got 'ten'"),
        (["--num", "2.5"], "--num must be an integer"),
        (["--num", "99999999999999999999"], "--num must be an integer in [1, 9223372036854775807]"),
        (["--seed", "-1"], "--seed must be an integer in [0,"),
        (
            ["--seed", "99999999999999999999"],
            "--seed must be an integer in [0, 9223372036854775807]",
        ),
        (["--batch-size", "0"], "--batch-size must be an integer in [1,"),
        (["--nfe", "0"], "--nfe must be an integer in [1,"),
        (["--nfe", "two"], "--nfe must be an integer"),
        (["--class-label", "-1"], "--class-label must be an integer in [0,"),
    ],
    "sampler knobs": [
        (["--steps", "0"], "--steps must be an integer in [1,"),
        (["--steps", "1000000"], "steps must be an integer in [1, 100000]"),
        (["--order", "3"], "order must be 1"),
        (["--style", "fast"], "unknown style 'fast'"),
        (["--stochastic-ratio", "1.5"], "stochastic_ratio must be a number in [0, 1] or 'SDE'"),
        (["--stochastic-ratio", "sde"], "--stochastic-ratio must be a number, got 'sde'"),
        (["--stochastic-ratio", "nan"], "--stochastic-ratio must be a finite number"),
        (["--extrapolation-ratio", "-0.5"], "extrapolation_ratio must be a number >= 0"),
        (["--kumaraswamy", "1", "0", "1"], "kumaraswamy_abc must be three positive numbers"),
        (["--kumaraswamy", "1", "1"], "expected 3 arguments"),
        (["--boundary-gaps", "0.6", "0.5"], "start + end < 1"),
        (["--boundary-gaps", "-0.1", "0.5"], "boundary_gaps must be two numbers"),
        (["--cfg-scale", "-1"], "cfg_scale must be a number >= 0"),
        (["--cfg-scale", "inf"], "--cfg-scale must be a finite number"),
        (["--cfg-interval", "0.8", "0.2"], "low <= high"),
        (["--cfg-interval", "0", "1.5"], "cfg_interval must be two times (low, high) in [0, 1]"),
        (["--preset", "3nfe"], "argument --preset: invalid choice: '3nfe'"),
        (["--preset", "2nfe", "--nfe", "2"], "--preset and --nfe both choose the sampler"),
        (["--ode", "--nfe", "4"], "--nfe and --ode both choose the sampler"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
    "devices": [
        (["--device", "gpu"], "device 'gpu' is not a device name"),
        (["--device", "cuda:x"], "is not a device name"),
        (
            ["--device", "mps"] if not torch.backends.mps.is_available() else ["--device", "xpu:9"],
            "is not on this machine (it has: cpu",
        ),
        (["--device", "cuda:7"], "is not on this machine (it has: cpu"),
    ],
    "files": [
        (
            ["--vae", "{tmp}/missing-vae.safetensors"],
            "--vae {tmp}/missing-vae.safetensors: no such file",
        ),
        (
            ["--fid", "{tmp}/missing.pth", "--fid-data", "{tmp}"],
            "--fid {tmp}/missing.pth: no such file",
        ),
        (["--proxy-metrics"], "--fid and --proxy-metrics need --fid-data"),
        (
            ["--proxy-metrics", "--fid-data", "{tmp}/nowhere"],
            "--fid-data {tmp}/nowhere: no such file",
        ),
        (["--out", "{tmp}/samples.txt"], "--out must end in .npy or .png"),
        (["--out", "{tmp}"], "is a folder"),
        (["--out", "{tmp}/afile.npy/x.npy"], "is a file, not a folder"),
    ],
}


@pytest.mark.parametrize(
    "kind, extra, message",
    [(kind, extra, message) for kind, cases in CASES.items() for extra, message in cases],
)
def test_refusals_are_one_line(toy_run, tmp_path, kind, extra, message, capsys):
    (tmp_path / "afile.npy").write_bytes(b"x")
    extra = [part.replace("{tmp}", str(tmp_path)) for part in extra]
    message = message.replace("{tmp}", str(tmp_path))
    out = (
        []
        if any(part.startswith("--out") for part in extra)
        else ["--out", str(tmp_path / "s.npy")]
    )
    refuse(capsys, [toy_run["run_dir"], *out, *extra], message)
    assert not (tmp_path / "s.npy").exists()  # refused before any work


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    refuse(capsys, [str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.npy")], "nowhere")


def test_never_overwrites(toy_run, tmp_path, capsys):
    out = tmp_path / "s.npy"
    sample.main([toy_run["run_dir"], "--num", "3", "--out", str(out)])
    first = np.load(out)
    refuse(
        capsys, [toy_run["run_dir"], "--num", "3", "--seed", "1", "--out", str(out)],
        "exists; pass --overwrite",
    )
    np.testing.assert_array_equal(np.load(out), first)
    sample.main([toy_run["run_dir"], "--num", "3", "--seed", "1", "--out", str(out), "--overwrite"])
    assert not np.array_equal(np.load(out), first)


def test_default_output_leaves_training_files_alone(toy_run, capsys):
    run_dir = toy_run["run_dir"]
    training_png = sorted(p.name for p in __import__("pathlib").Path(run_dir).glob("*.png"))
    before = {
        name: (__import__("pathlib").Path(run_dir) / name).read_bytes() for name in training_png
    }
    result = sample.main([run_dir, "--num", "5", "--nfe", "2", "--seed", "7"])
    assert result["out"].endswith("samples/nfe2_seed7.png")
    for name, data in before.items():  # samples_nfe1.png & co. are the training run's, untouched
        assert (__import__("pathlib").Path(run_dir) / name).read_bytes() == data
    refuse(capsys, [run_dir, "--num", "5", "--nfe", "2", "--seed", "7"], "nfe2_seed7.png exists")


def test_nonfinite_checkpoint_is_refused(toy_run, tmp_path, capsys):
    path = tmp_path / "broken.safetensors"
    with safe_open(toy_run["checkpoint"], framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    key = next(
        k for k, v in tensors.items() if v.is_floating_point() and "ema" in k and v.dim() == 2
    )
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = math.nan
    save_file(tensors, str(path), metadata=metadata)
    refuse(capsys, [str(path), "--out", str(tmp_path / "s.npy")], "NaN/inf values")
    assert not (tmp_path / "s.npy").exists()


def test_class_label_and_cfg_need_a_conditional_model(toy_run, conditional_run, tmp_path, capsys):
    refuse(
        capsys, [toy_run["run_dir"], "--class-label", "1", "--out", str(tmp_path / "a.npy")],
        "this model is unconditional",
    )
    refuse(
        capsys, [toy_run["run_dir"], "--cfg-scale", "2", "--out", str(tmp_path / "a.npy")],
        "--cfg-scale needs a class-conditional model",
    )
    refuse(
        capsys,
        [conditional_run["run_dir"], "--class-label", "5", "--out", str(tmp_path / "a.npy")],
        "--class-label must be in [0, 1]",
    )


def test_every_knob_reaches_the_sampler(toy_run, tmp_path, monkeypatch):
    seen = []
    real = sample.ucgm_sample
    monkeypatch.setattr(sample, "ucgm_sample", lambda *a, **k: seen.append(k) or real(*a, **k))
    sample.main(
        [
            toy_run["run_dir"],
            "--num",
            "2",
            "--out",
            str(tmp_path / "a.npy"),
            "--preset",
            "any8",
            "--order",
            "2",
            "--stochastic-ratio",
            "SDE",
            "--extrapolation-ratio",
            "0.5",
            "--kumaraswamy",
            "1.17",
            "0.8",
            "1.1",
            "--boundary-gaps",
            "0.001",
            "0.3",
        ]
    )
    options = {k: v for k, v in seen[-1].items() if k not in ("y", "y_null", "generator")}
    assert options == dict(
        steps=8,
        style="any",
        order=2,
        stochastic_ratio="SDE",
        extrapolation_ratio=0.5,
        kumaraswamy_abc=(1.17, 0.8, 1.1),
        boundary_gaps=(0.001, 0.3),
        cfg_scale=0.0,
        cfg_interval=(0.0, 1.0),
    )
    for name, preset in PRESETS.items():  # a preset alone gives exactly its table row
        sample.main(
            [
                toy_run["run_dir"],
                "--num",
                "1",
                "--out",
                str(tmp_path / f"{name}.npy"),
                "--preset",
                name,
            ]
        )
        assert {k: seen[-1][k] for k in preset} == preset
    sample.main([toy_run["run_dir"], "--num", "1", "--out", str(tmp_path / "n3.npy"), "--nfe", "3"])
    assert {k: seen[-1][k] for k in preset_for_nfe(3)} == preset_for_nfe(3)


def test_cfg_reaches_a_conditional_model(conditional_run, tmp_path, monkeypatch):
    seen = []
    real = sample.ucgm_sample
    monkeypatch.setattr(sample, "ucgm_sample", lambda *a, **k: seen.append(k) or real(*a, **k))
    result = sample.main(
        [
            conditional_run["run_dir"],
            "--num",
            "3",
            "--out",
            str(tmp_path / "a.npy"),
            "--steps",
            "3",
            "--style",
            "mul",
            "--cfg-scale",
            "1.5",
            "--cfg-interval",
            "0",
            "0.7",
        ]
    )
    assert seen[-1]["cfg_scale"] == 1.5 and seen[-1]["cfg_interval"] == (0.0, 0.7)
    assert seen[-1]["y_null"].tolist() == [2, 2, 2]  # the null class id = num_classes
    assert np.isfinite(np.load(result["out"])).all()


def test_help_lists_presets_with_values():
    text = subprocess.run(
        [sys.executable, "sample.py", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in PRESETS:
        assert name in text
    assert "boundary_gaps=(0.001, 0.7)" in text and "kumaraswamy_abc=(1.17, 0.8, 1.1)" in text


def test_cli_error_has_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "sample.py", str(tmp_path), "--num", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "sample.py: error: --num must be an integer in [1, 9223372036854775807], got 0"
    ]


def test_ctrl_c_while_sampling_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "run", interrupted)
    with pytest.raises(SystemExit) as stop:
        sample.main(["anything"])
    assert stop.value.code == 130
    assert capsys.readouterr().err == "sample.py: stopped by Ctrl-C; nothing was written\n"
