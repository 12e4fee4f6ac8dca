"""`model_type: lora` through train.py's and sample.py's main() (issue 14, part 2).

A tiny SiT in the released key layout (float32, so merged files are exact) is converted with
tools/convert_checkpoint.py and fine-tuned image-free with LoRA. Expected values are independent of
the code under test: the base file loaded afresh by load_pretrained, hashlib's sha256 of the file's
bytes, the EMA recurrence with the official warm-up written out in float64
(docs/math.md#ema-teacher), and an uninterrupted run for resume. Time convention: see
twinflow_min/transport.py.
"""

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sample
import train
from test_checkpoint import HEADS, TOOL_PATH, tiny_state
from test_config_doors import GUIDE_CONFIG
from test_train import interrupt_at_call
from tests.conftest import REPO_ROOT
from twinflow_min.checkpoint import LORA_METADATA_KEY, load_pretrained
from twinflow_min.lora import LoRATeacher, load_adapter, trainable_names
from twinflow_min.train_state import read_checkpoint

TWINFLOW_KEYS = ("t_tgt_embedder.", "t_sign_embedder.")
FAST = ["--image-free", "--model_type", "lora", "--batch-size", "4", "--validation_every", "0"]
# the default targets on a depth-2 SiT: qkv, proj, fc1, fc2, adaLN of both blocks + the final adaLN
DEFAULT_LAYERS = [f"blocks.{i}.{name}" for i in range(2) for name in
                  ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")]
DEFAULT_LAYERS.append("final_layer.adaLN_modulation.1")


def convert(folder: Path, seed: int = 1) -> Path:
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL_PATH)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    source, out = folder / "sit.pt", folder / "sit.safetensors"
    torch.save({"ema": tiny_state(learn_sigma=True, seed=seed, dtype=torch.float32)}, source)
    assert tool.main([str(source), str(out), "--convention", "sit", "--num-heads", str(HEADS),
                      "--dtype", "fp32"]) == 0
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A converted tiny SiT (learned sigma, 4x8x8 latents, 10 classes), float32."""
    return convert(tmp_path_factory.mktemp("base"))


def lora_run(base: Path, out: Path, *extra: str, name: str = "run", steps: int = 3) -> dict:
    return train.main(["--pretrained", str(base), *FAST, "--max_train_steps", str(steps),
                       "--output_dir", str(out), "--run_name", name, *extra])


def capture_model(patch) -> dict:
    """Record the model train.py builds (the object that then gets its adapters and trains)."""
    seen = {}
    original = train.build_data_and_model

    def build(*args, **kwargs):
        data, model = original(*args, **kwargs)
        seen["model"] = model
        return data, model

    patch.setattr(train, "build_data_and_model", build)
    return seen


def refused(capsys, argv) -> str:
    """train.main(argv) must exit 2 with one error line on stderr (after any notes); returns it."""
    with pytest.raises(SystemExit) as stopped:
        train.main(argv)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("train.py: note: ") for line in lines[:-1]), lines
    assert lines[-1].startswith("train.py: error: "), lines
    return lines[-1]


def file_tensors(path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


# ---------------------------------------------------------------- the issue's command, end to end
@pytest.fixture(scope="module")
def issue_run(base, tmp_path_factory):
    """`train.py --pretrained FILE --image-free --model_type lora` (every LoRA default), 3 steps."""
    out = tmp_path_factory.mktemp("issue")
    with pytest.MonkeyPatch.context() as patch:
        seen = capture_model(patch)
        summary = lora_run(base, out)
    return summary, seen["model"]


def test_only_adapters_and_twinflow_embedders_change(base, issue_run):
    summary, model = issue_run
    assert model.lora_settings.layers == DEFAULT_LAYERS
    fresh = load_pretrained(base)[0].state_dict()
    trained = model.state_dict()
    for key, value in fresh.items():  # every tensor of the base, compared exactly
        if not key.startswith(TWINFLOW_KEYS):
            assert torch.equal(trained[key], value), f"base tensor {key} changed"
    changed = {key for key, value in fresh.items() if not torch.equal(trained[key], value)}
    assert any(key.startswith("t_tgt_embedder.") for key in changed)
    assert any(key.startswith("t_sign_embedder.") for key in changed)  # the sign table trains
    for name in DEFAULT_LAYERS:
        assert trained[f"{name}.lora_B"].abs().sum() > 0, name


def test_the_checkpoint_holds_no_base_tensor(base, issue_run):
    summary, model = issue_run
    tensors, metadata = file_tensors(summary["checkpoint"])
    names = set(trainable_names(model))
    assert {k[len("model."):] for k in tensors if k.startswith("model.")} == names
    assert {k[len("ema.teacher."):] for k in tensors if k.startswith("ema.teacher.")} == names
    base_keys = set(load_file(str(base)))
    stored = {key.split(".", 1)[1] for key in tensors if key.startswith(("model.", "ema."))}
    assert not stored & base_keys
    assert all(k.startswith(("model.", "ema.teacher.", "optimizer.", "rng.")) for k in tensors)
    optimizer_slots = {k.split(".")[1] for k in tensors if k.startswith("optimizer.")}
    assert len(optimizer_slots) == len(names)
    groups = json.loads(metadata["twinflow_min.train_state"])["optimizer"]["param_groups"]
    assert sum(len(group["params"]) for group in groups) == len(names)  # AdamW sees only them
    description = json.loads(metadata[LORA_METADATA_KEY])
    assert description["base_sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert description["base_path"] == str(base.resolve())
    assert (description["rank"], description["alpha"]) == (16, 16.0)
    assert description["layers"] == DEFAULT_LAYERS


def test_sample_py_samples_the_run_and_the_merged_file_alike(base, issue_run, tmp_path):
    run_dir = issue_run[0]["run_dir"]
    first, second, merged_out = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "m.npy"
    sample.main([run_dir, "--nfe", "2", "--num", "3", "--out", str(first)])
    sample.main([run_dir, "--nfe", "2", "--num", "3", "--out", str(second), "--base", str(base)])
    assert np.load(first).shape == (3, 4, 8, 8) and np.isfinite(np.load(first)).all()
    assert np.array_equal(np.load(first), np.load(second))
    merged = tmp_path / "merged.safetensors"
    tool = importlib.util.spec_from_file_location("merge_lora", REPO_ROOT / "tools/merge_lora.py")
    module = importlib.util.module_from_spec(tool)
    tool.loader.exec_module(module)
    assert module.main([str(Path(run_dir) / "checkpoint.safetensors"), str(merged)]) == 0
    model, info = load_pretrained(merged)
    assert info.missing == [] and not any("lora" in key for key in model.state_dict())
    sample.main([str(merged), "--nfe", "2", "--num", "3", "--out", str(merged_out)])
    # float32 base: merging in memory and through the file give the same weights
    assert np.array_equal(np.load(first), np.load(merged_out))
    student = tmp_path / "student.npy"
    sample.main([run_dir, "--nfe", "2", "--num", "3", "--out", str(student), "--weights", "model"])
    assert not np.array_equal(np.load(first), np.load(student))  # EMA and student differ


def test_sample_py_base_flag_errors_are_one_line(base, issue_run, tmp_path, capsys):
    run_dir = issue_run[0]["run_dir"]
    out = str(tmp_path / "x.npy")

    def refused(argv, pattern):
        """sample.main(argv) exits with 2 after one stderr line that matches `pattern`."""
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            sample.main(argv)
        error = capsys.readouterr().err
        assert stop.value.code == 2 and error.count("\n") == 1 and re.search(pattern, error), error

    refused([str(base), "--num", "2", "--out", out, "--base", str(base)],
            "is a whole model, not a LoRA checkpoint.*drop --base")
    refused([run_dir, "--num", "2", "--out", out, "--base", "nowhere.safetensors"],
            "--base nowhere.safetensors: no such file")
    other = convert(tmp_path, seed=5)
    refused([run_dir, "--num", "2", "--out", out, "--base", str(other)],
            r"has sha256 .* pass that file with --base FILE")
    moved = tmp_path / "moved.safetensors"
    shutil.copy(base, moved)
    hidden = base.with_suffix(".hidden")
    base.rename(hidden)
    try:  # the recorded base is gone: say where to point
        refused([run_dir, "--num", "2", "--out", out],
                "is not there: give its place with --base FILE")
    finally:
        hidden.rename(base)
    sample.main([run_dir, "--num", "2", "--out", out, "--base", str(moved)])
    assert np.load(out).shape == (2, 4, 8, 8)


# ---------------------------------------------------------------- resume
def test_resume_of_a_lora_run_is_bit_identical(base, tmp_path):
    common = ["--lora_rank", "4", "--lr_schedule", "cosine"]
    straight = lora_run(base, tmp_path, *common, name="straight", steps=5)
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at_call(patch, 2)
        with pytest.raises(SystemExit) as stopped:
            lora_run(base, tmp_path, *common, name="part", steps=5)
    assert stopped.value.code == 130
    part = tmp_path / "part"
    assert read_checkpoint(part)["info"]["step"] == 2
    resumed = train.main(["--resume", str(part)])
    assert resumed["step"] == 5
    a, _ = file_tensors(straight["checkpoint"])
    b, _ = file_tensors(resumed["checkpoint"])
    assert a.keys() == b.keys()
    for key in a:
        if not key.startswith("rng."):
            assert torch.equal(a[key], b[key]), key


def test_resume_refuses_a_changed_base_and_a_switched_model_type(base, tmp_path, capsys):
    own = tmp_path / "own.safetensors"
    shutil.copy(base, own)
    lora_run(own, tmp_path, "--lora_rank", "4", steps=1)
    run_dir = str(tmp_path / "run")
    capsys.readouterr()
    line = refused(capsys, ["--resume", run_dir, "--model_type", "full", "--max_train_steps", "2"])
    assert "this is a LoRA run's checkpoint" in line and "model_type lora" in line
    tensors, metadata = file_tensors(own)
    tensors["blocks.0.attn.qkv.weight"] = tensors["blocks.0.attn.qkv.weight"] + 1e-3
    save_file(tensors, str(own), metadata=metadata)
    line = refused(capsys, ["--resume", run_dir, "--max_train_steps", "2"])
    assert f"base file {str(own)!r} has sha256" in line
    assert hashlib.sha256(own.read_bytes()).hexdigest()[:16] in line
    assert "pass that file with --pretrained FILE" in line
    assert read_checkpoint(run_dir)["info"]["step"] == 1  # nothing was trained or written


# ---------------------------------------------------------------- the three teacher modes
def ema_by_hand(states: list[dict], decay: float) -> dict:
    """theta_ema <- d theta_ema + (1 - d) theta over the recorded student states, d warmed up as
    d_0 = 0, d <- d + (1 - d)(decay - d) / 2 (docs/math.md#ema-teacher), in float64."""
    ema, d = {}, 0.0
    for state in states:
        ema = {k: d * ema[k] + (1 - d) * v if ema else v for k, v in state.items()}
        d = d + (1 - d) * (decay - d) / 2
    return ema


@pytest.mark.parametrize("flags, decay", [
    (["--ema_decay", "0.99"], 0.99),
    (["--ema_decay", "1"], 1.0),
    (["--ema_decay", "0"], 0.0),
    (["--use_ema", "false", "--twinflow_allow_no_ema_teacher", "true"], 0.0),
])
def test_teacher_modes(base, tmp_path, flags, decay):
    students, teachers = [], []
    original_update = LoRATeacher.update

    def recording_update(self, model):
        teachers.append(self)
        students.append({name: value.detach().double().clone()
                         for name, value in model.named_parameters() if value.requires_grad})
        original_update(self, model)

    with pytest.MonkeyPatch.context() as patch:
        seen = capture_model(patch)
        patch.setattr(LoRATeacher, "update", recording_update)
        summary = lora_run(base, tmp_path, "--lora_rank", "4", *flags)
    model, teacher = seen["model"], teachers[0]
    assert len(students) == 4 and all(t is teacher for t in teachers)  # one update per step + 1
    tensors, _ = file_tensors(summary["checkpoint"])
    saved = {k[len("ema.teacher."):]: v for k, v in tensors.items() if k.startswith("ema.teacher.")}
    assert read_checkpoint(summary["checkpoint"])["ema"]["decay"] == decay
    if decay == 0.0:  # the student is the teacher: nothing of its own to save
        assert teacher.teacher is model and not saved
        return
    assert saved.keys() == students[0].keys()
    if decay == 1.0:  # the base with the adapters off: B = 0, embedders as initialised
        fresh = load_pretrained(base)[0].state_dict()
        for name, value in saved.items():
            expected = students[0][name] if "lora_" in name else fresh[name].double()
            expected = torch.zeros_like(expected) if name.endswith("lora_B") else expected
            assert torch.equal(value.double(), expected), name
        x_t = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        t, y = torch.tensor([0.9, 0.5, -0.4]), torch.tensor([1, 2, 10])
        adapter, _ = load_adapter(summary["checkpoint"], weights="ema")
        base_model = load_pretrained(base)[0]
        with torch.no_grad():
            assert torch.equal(adapter(x_t, t, t, y), base_model(x_t, t, t, y))
        return
    expected = ema_by_hand(students, decay)
    for name, value in saved.items():
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-6, atol=1e-7)
    assert not torch.equal(saved[DEFAULT_LAYERS[0] + ".lora_B"],
                           tensors[f"model.{DEFAULT_LAYERS[0]}.lora_B"])


# ---------------------------------------------------------------- refusals through main()
def test_lora_without_a_pretrained_file(capsys, tmp_path):
    line = refused(capsys, ["--model_type", "lora", "--output_dir", str(tmp_path)])
    assert "model_type = 'lora' adapts a pretrained model" in line


def test_a_pattern_matching_nothing_lists_the_linear_layers(base, tmp_path, capsys):
    line = refused(capsys, ["--pretrained", str(base), *FAST, "--max_train_steps", "1",
                            "--lora_target_modules", "qkv,attn.out", "--output_dir",
                            str(tmp_path / "out")])
    assert "['attn.out'] match no linear layer" in line
    for name in ("blocks.N.attn.qkv", "blocks.N.attn.proj", "blocks.N.mlp.fc1",
                 "blocks.N.adaLN_modulation.1", "final_layer.linear", "(N = 0..1)"):
        assert name in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_guides_config_through_main(base, tmp_path, capsys):
    path = tmp_path / "guide.json"
    path.write_text(json.dumps(GUIDE_CONFIG))
    line = refused(capsys, ["--config", str(path)])
    assert "this project trains class-conditional DiT/SiT models" in line
    path.write_text(json.dumps({**GUIDE_CONFIG, "model_family": "sit"}))
    line = refused(capsys, ["--config", str(path)])
    assert "looks like a hub name" in line and "tools/convert_checkpoint.py" in line
    local = {**GUIDE_CONFIG, "model_family": "sit", "pretrained_model_name_or_path": str(base),
             "max_train_steps": 1, "train_batch_size": 4, "validation_every": 0,
             "output_dir": str(tmp_path / "out")}
    path.write_text(json.dumps(local))
    summary = train.main(["--config", str(path)])
    assert summary["step"] == 1
    _, metadata = file_tensors(summary["checkpoint"])
    assert json.loads(metadata[LORA_METADATA_KEY])["rank"] == 16
