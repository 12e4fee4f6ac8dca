"""sample.py at the command line (issues #13, #17): every sampler knob and preset, and one clear
line for every bad input, never an overwritten file, never NaN samples from a broken checkpoint.

Each refusal runs through `sample.main([...])` (the CLI's own entry) and must end in SystemExit(2)
after one line "sample.py: error: ..." on stderr naming the problem. Time convention: see
twinflow_min/transport.py.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import sample
import train
from conftest import REPO_ROOT
from test_train import TOY_FAST, image_folder
from twinflow_min.sampler import PRESETS, inert_knobs, preset_for_nfe, ucgm_sample


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
        (["--nfe", "1000000"], "--nfe must be an integer in [1, 100000], got 1000000"),
        (["--class-label", "-1"], "--class-label must be an integer in [0,"),
    ],
    "sampler knobs": [
        (["--steps", "0"], "--steps must be an integer in [1, 100000], got 0"),
        (["--steps", "1000000"], "--steps must be an integer in [1, 100000], got 1000000"),
        (["--order", "3"], "--order must be 1 or 2, got '3'"),
        (["--order", "0"], "--order must be 1 or 2, got '0'"),
        (["--order", "two"], "--order must be 1 or 2, got 'two'"),
        (["--style", "fast"], "unknown style 'fast'"),
        (["--stochastic-ratio", "1.5"], "stochastic_ratio must be a number in [0, 1] or 'SDE'"),
        (["--stochastic-ratio", "sdf"], "--stochastic-ratio must be a number, got 'sdf'"),
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
        (["--cfg-interval", "0", "0.7"], "--cfg-interval only applies with --cfg-scale > 0"),
        (
            ["--cfg-scale", "0", "--cfg-interval", "0", "0.7"],
            "--cfg-interval only applies with --cfg-scale > 0",
        ),
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


def test_standard_output_is_the_results_json(toy_run, tmp_path, capsys):
    capsys.readouterr()
    result = sample.main([toy_run["run_dir"], "--num", "3", "--out", str(tmp_path / "s.npy")])
    printed = json.loads(capsys.readouterr().out)  # nothing but the JSON: pipes into jq work
    assert printed["out"] == str(tmp_path / "s.npy") == result["out"]
    assert printed["model"].startswith("SiT") and "ema" in printed["model"]


def test_never_overwrites(toy_run, tmp_path, capsys):
    out = tmp_path / "s.npy"
    sample.main([toy_run["run_dir"], "--num", "3", "--out", str(out)])
    first = np.load(out)
    refuse(
        capsys,
        [toy_run["run_dir"], "--num", "3", "--seed", "1", "--out", str(out)],
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
    assert result["out"].endswith("samples/2nfe_seed7.png")
    for name, data in before.items():  # samples_nfe1.png & co. are the training run's, untouched
        assert (__import__("pathlib").Path(run_dir) / name).read_bytes() == data
    refuse(capsys, [run_dir, "--num", "5", "--nfe", "2", "--seed", "7"], "2nfe_seed7.png exists")


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
        capsys,
        [toy_run["run_dir"], "--class-label", "1", "--out", str(tmp_path / "a.npy")],
        "this model is unconditional",
    )
    refuse(
        capsys,
        [toy_run["run_dir"], "--cfg-scale", "2", "--out", str(tmp_path / "a.npy")],
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


# ---------- Issue 17 follow-up: flags that were ignored, unclear or colliding ----------


def run_noting(capsys, argv) -> tuple[dict, list[str]]:
    """sample.main(argv) and the "sample.py: note: ..." lines it printed on stderr."""
    capsys.readouterr()
    result = sample.main(argv)
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if line.startswith("sample.py: note: ")]
    assert len(notes) == len(err), err  # notes are the only stderr lines of a run that goes on
    return result, notes


def test_cfg_interval_without_guidance_is_refused_on_a_conditional_model(
    conditional_run, tmp_path, capsys
):
    for extra in (["--cfg-interval", "0", "0.7"], ["--cfg-scale", "0", "--cfg-interval", "0", "1"]):
        refuse(
            capsys,
            [conditional_run["run_dir"], "--out", str(tmp_path / "a.npy"), *extra],
            "--cfg-interval only applies with --cfg-scale > 0",
        )
    assert not (tmp_path / "a.npy").exists()


def test_guidance_on_a_twinflow_model_is_applied_with_a_note(conditional_run, tmp_path, capsys):
    run_dir = __import__("pathlib").Path(conditional_run["run_dir"])
    argv = ["--num", "2", "--steps", "2", "--cfg-scale", "1.5"]
    result, notes = run_noting(capsys, [str(run_dir), *argv, "--out", str(tmp_path / "a.npy")])
    assert notes == [
        "sample.py: note: this model was trained with TwinFlow, which samples at guidance 0 "
        "(paper); --cfg-scale 1.5 is applied anyway"
    ]
    assert result["sampler"]["cfg_scale"] == 1.5
    plain = tmp_path / "plain"  # the same weights, trained (says checkpoint.json) without TwinFlow
    plain.mkdir()
    summary = __import__("json").loads((run_dir / "checkpoint.json").read_text())
    assert summary["train_config"]["twinflow_enabled"] is True
    summary["train_config"]["twinflow_enabled"] = False
    (plain / "checkpoint.json").write_text(__import__("json").dumps(summary))
    (plain / "checkpoint.safetensors").write_bytes(
        (run_dir / "checkpoint.safetensors").read_bytes()
    )
    _, notes = run_noting(capsys, [str(plain), *argv, "--out", str(tmp_path / "b.npy")])
    assert notes == []
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_nfe_is_a_preset_that_steps_overrides_with_a_note(toy_run, tmp_path, capsys):
    text = " ".join(sample.build_parser().format_help().split())  # argparse wraps lines
    assert "--nfe N = the official N-NFE preset" in text
    assert "knob flags such as --steps override it, as they override --preset" in text
    out = ["--num", "2", "--out", str(tmp_path / "a.npy"), "--overwrite"]
    result, notes = run_noting(capsys, [toy_run["run_dir"], *out, "--nfe", "4", "--steps", "2"])
    assert notes == ["sample.py: note: --steps 2 overrides the 4-step preset of --nfe 4"]
    assert result["sampler"] == {**dict(PRESETS["4nfe"]), **KNOB_DEFAULTS_OFF, "steps": 2}
    for same in (["--nfe", "4", "--steps", "4"], ["--preset", "4nfe", "--steps", "2"]):
        assert run_noting(capsys, [toy_run["run_dir"], *out, *same])[1] == []


KNOB_DEFAULTS_OFF = dict(order=1, extrapolation_ratio=0.0, cfg_scale=0.0, cfg_interval=(0.0, 1.0))


def _wavy_model(x, t, t_tgt, y):
    """A smooth model whose output depends on x, t and t_tgt, so every acting knob shows."""
    return torch.sin(1.3 * x + 2.0 * t[:, None] - 0.7 * t_tgt[:, None]) + 0.1 * x


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("order", [1, 2])
def test_inert_knobs_are_exactly_those_that_change_nothing(steps, order):
    """sampler.inert_knobs names a knob iff switching it on leaves the samples bit-identical."""
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def draw(**knobs):
        options = dict(steps=steps, order=order, style="any", boundary_gaps=(0.001, 0.3))
        options.update(knobs)
        generator = torch.Generator().manual_seed(0)
        return ucgm_sample(_wavy_model, z, generator=generator, **options)

    off = dict(stochastic_ratio=0.0, extrapolation_ratio=0.0)
    switched_on = {
        "stochastic_ratio": [dict(stochastic_ratio=1.0), dict(stochastic_ratio="SDE")],
        "extrapolation_ratio": [dict(extrapolation_ratio=0.5)],
    }
    for knob, settings in switched_on.items():
        for on in settings:
            inert = knob in inert_knobs(steps=steps, order=order, **{**off, **on})
            assert torch.equal(draw(**{**off, **on}), draw(**off)) == inert, (knob, on)
    if order == 2:  # order itself: 2 against 1 at the same steps
        one = ucgm_sample(_wavy_model, z, steps=steps, style="any", boundary_gaps=(0.001, 0.3))
        inert = "order" in inert_knobs(steps=steps, order=2, **off)
        assert torch.equal(draw(**off), one) == inert
    assert inert_knobs(steps=steps, order=1, **off) == []  # knobs that are off are never named


def test_inert_knobs_at_one_step_get_one_note_and_change_nothing(toy_run, tmp_path, capsys):
    base = [toy_run["run_dir"], "--num", "6", "--seed", "2"]
    run_noting(capsys, [*base, "--preset", "1nfe", "--out", str(tmp_path / "plain.npy")])
    knobs = ["--order", "2", "--stochastic-ratio", "1", "--extrapolation-ratio", "0.5"]
    for chooser in (["--preset", "1nfe"], ["--steps", "1"]):
        out = tmp_path / f"knobs{len(chooser[0])}.npy"
        _, notes = run_noting(capsys, [*base, *chooser, *knobs, "--out", str(out)])
        assert notes == [
            "sample.py: note: --order 2, --stochastic-ratio 1 and --extrapolation-ratio 0.5 "
            "have no effect with 1 step"
        ]
        np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "plain.npy"))
    _, notes = run_noting(  # 3 steps: only the extrapolation (from 4 steps on) is inert
        capsys,
        [*base, "--nfe", "3", "--extrapolation-ratio", "0.5", "--out", str(tmp_path / "e.npy")],
    )
    assert notes == [
        "sample.py: note: --extrapolation-ratio 0.5 has no effect with 3 steps; extrapolation "
        "acts from 4 steps on"
    ]
    _, notes = run_noting(
        capsys, [*base, "--nfe", "4", "--order", "2", "--out", str(tmp_path / "o.npy")]
    )
    assert notes == []  # order 2 on 4 steps acts (2 grid steps and a corrector)


def test_default_names_follow_the_full_settings(toy_run, tmp_path, capsys):
    root = tmp_path / "run"
    root.mkdir()
    for name in ("checkpoint.safetensors", "checkpoint.json"):
        (root / name).write_bytes(
            (__import__("pathlib").Path(toy_run["run_dir"]) / name).read_bytes()
        )

    def name_of(*flags):
        result = sample.main([str(root), "--num", "2", "--seed", "3", "--overwrite", *flags])
        assert (
            result["sampler_name"] + "_seed3.png" == __import__("pathlib").Path(result["out"]).name
        )
        return result["sampler_name"], result["sampler"]

    for flags in (["--nfe", "1"], ["--preset", "1nfe"], ["--steps", "1"], []):
        assert name_of(*flags)[0] == "1nfe"
    assert name_of("--nfe", "2")[0] == "2nfe"
    assert name_of("--preset", "4nfe", "--stochastic-ratio", "1")[0] == "4nfe"  # the same settings
    assert name_of("--ode")[0] == "ode50"
    assert (
        name_of(
            "--nfe",
            "4",
            "--steps",
            "30",
            "--style",
            "mul",
            "--stochastic-ratio",
            "0",
            "--kumaraswamy",
            "1.17",
            "0.8",
            "1.1",
            "--boundary-gaps",
            "0.001",
            "0",
        )[0]
        == "mul30"
    )
    five, settings = name_of("--steps", "5")
    assert settings == {**KNOB_DEFAULTS_OFF, **PRESETS["1nfe"], "steps": 5}  # the JSON lists them
    # the rule by hand: sha256 of the sorted settings, numbers as floats, first 8 hex digits
    text = (
        '{"boundary_gaps": [0.0, 0.0], "cfg_interval": [0.0, 1.0], "cfg_scale": 0.0, '
        '"extrapolation_ratio": 0.0, "kumaraswamy_abc": [1.0, 1.0, 1.0], "order": 1.0, '
        '"steps": 5.0, "stochastic_ratio": 0.0, "style": "few"}'
    )
    assert five == "custom-" + __import__("hashlib").sha256(text.encode()).hexdigest()[:8]
    assert name_of("--steps", "5", "--style", "any")[0] not in (five, "1nfe")
    assert name_of("--nfe", "3")[0] != name_of("--nfe", "3", "--order", "2")[0]
    assert (
        name_of("--steps", "2", "--kumaraswamy", "1", "1", "2")[0]
        == name_of("--steps", "2", "--kumaraswamy", "1.0", "1.00", "2e0")[0]
    )
    # the student's weights are other samples than the default EMA ones: a file of their own
    ema = sample.main([str(root), "--num", "2", "--seed", "3", "--overwrite"])["out"]
    student = sample.main([str(root), "--num", "2", "--seed", "3", "--weights", "model"])["out"]
    assert __import__("pathlib").Path(student).name == "1nfe-student_seed3.png"
    assert student != ema and not np.array_equal(np.asarray(Image.open(student)),
                                                 np.asarray(Image.open(ema)))


def test_stochastic_ratio_sde_in_any_case(toy_run, tmp_path, monkeypatch):
    seen = []
    real = sample.ucgm_sample
    monkeypatch.setattr(sample, "ucgm_sample", lambda *a, **k: seen.append(k) or real(*a, **k))
    for spelling in ("sde", "Sde", "SDE"):
        out = str(tmp_path / f"{spelling}.npy")
        sample.main(
            [
                toy_run["run_dir"],
                "--num",
                "2",
                "--nfe",
                "2",
                "--stochastic-ratio",
                spelling,
                "--out",
                out,
            ]
        )
        assert seen[-1]["stochastic_ratio"] == "SDE"


def test_extrapolation_above_the_recommended_range_gets_a_note(toy_run, tmp_path, capsys):
    base = [
        toy_run["run_dir"],
        "--num",
        "2",
        "--nfe",
        "4",
        "--out",
        str(tmp_path / "a.npy"),
        "--overwrite",
    ]
    _, notes = run_noting(capsys, [*base, "--extrapolation-ratio", "100"])
    assert notes == [
        "sample.py: note: --extrapolation-ratio 100 is above [0.2, 0.6], the range UCGM "
        "recommends for multi-step models (no official limit; applied)"
    ]
    assert run_noting(capsys, [*base, "--extrapolation-ratio", "0.6"])[1] == []
