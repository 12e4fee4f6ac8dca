"""Tests for twinflow_min/lora.py and tools/merge_lora.py: LoRA adapters, the shared-base EMA
teacher, adapter files and merging.

Models are tiny DiTs (hidden 64, depth 2, 16 tokens) whose every weight is drawn at random, so no
zero-initialised layer hides a missing term. Time convention: see twinflow_min/transport.py.
Expected values are independent: the untouched base model, an explicit full EMA copy (EMATeacher
over a deep copy), float64 re-computations, hashlib's sha256, and closed-form parameter counts.
"""

import copy
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import REPO_ROOT
from twinflow_min import lora
from twinflow_min.checkpoint import load_pretrained
from twinflow_min.checks import CheckpointError
from twinflow_min.ema import EMATeacher
from twinflow_min.lora import (DEFAULT_TARGETS, LoRALinear, LoRATeacher, apply_lora, load_adapter,
                               merge_lora, read_teacher_state, save_adapter, trainable_names,
                               trainable_parameters)
from twinflow_min.model import DiT, build_model, config_to_metadata
from twinflow_min.transport import interpolate, velocity_target

sys.path.insert(0, str(REPO_ROOT / "tools"))
import merge_lora as merge_tool  # noqa: E402

TWINFLOW_KEYS = ("t_tgt_embedder.", "t_sign_embedder.")
DEPTH = 2
PER_BLOCK = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")


def pretrained_like(seed: int = 0, **overrides) -> DiT:
    """A tiny DiT whose base weights are all random (as after pretraining); the TwinFlow embedders
    keep their initialisation, as load_pretrained leaves them for a file that lacks them."""
    with torch.random.fork_rng(devices=[]):  # seeded embedder initialisation, global RNG kept
        torch.manual_seed(seed)
        model = build_model("CIFAR-T/2", input_size=8, **overrides)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and not name.startswith(TWINFLOW_KEYS):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def inputs(seed: int = 1, batch: int = 4):
    """x_t, t, t_tgt, y with real and fake (negative) times, t != t_tgt, and a null label."""
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 3, 8, 8, generator=generator)
    t = torch.tensor([0.9, -0.6, 0.4, -0.2])[:batch]
    t_tgt = torch.tensor([0.1, -0.3, 0.0, -0.2])[:batch]
    y = torch.tensor([1, 3, 10, 7])[:batch]
    return x_t, t, t_tgt, y


def train_steps(model, steps: int = 3, teachers=(), lr: float = 1e-2, seed: int = 2):
    """AdamW steps (with weight decay, which would move any frozen tensor it were given) on a flow
    matching loss at real and fake times; each teacher is updated before every step (train.py's
    order) and once after the last."""
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for teacher in teachers:
            teacher.update(model)
        x = torch.randn(4, 3, 8, 8, generator=generator)
        z = torch.randn(4, 3, 8, 8, generator=generator)
        t = torch.tensor([0.8, -0.5, 0.3, -0.9])
        prediction = model(interpolate(x, z, t), t, t - 0.2 * t, torch.tensor([0, 1, 2, 10]))
        loss = (prediction - velocity_target(x, z)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for teacher in teachers:
        teacher.update(model)


def write_base_file(model: DiT, path: Path, dtype=torch.float32) -> Path:
    """A pretrained-style file: every tensor but the TwinFlow embedders; config in metadata."""
    tensors = {key: value.detach().to(dtype).contiguous()
               for key, value in model.state_dict().items() if not key.startswith(TWINFLOW_KEYS)}
    save_file(tensors, str(path), metadata=config_to_metadata(model.config))
    return path


# ----------------------------------------------------------------------------------------- layers
def test_fresh_adapter_changes_no_output_bit_for_bit():
    model = pretrained_like()
    x_t, t, t_tgt, y = inputs()
    expected = model(x_t, t, t_tgt, y)
    apply_lora(model, rank=4, alpha=8.0)
    assert torch.equal(model(x_t, t, t_tgt, y), expected)


def test_keys_shapes_and_initialisation():
    model = pretrained_like()
    base_keys = set(model.state_dict())
    rng_before = torch.get_rng_state()
    layers = apply_lora(model, rank=4)
    assert torch.equal(torch.get_rng_state(), rng_before)  # A comes from its own generator
    adapter_keys = {f"{name}.{leaf}" for name in layers for leaf in ("lora_A", "lora_B")}
    assert set(model.state_dict()) == base_keys | adapter_keys
    for name in layers:
        layer = model.get_submodule(name)
        assert layer.lora_A.shape == (4, layer.in_features)
        assert layer.lora_B.shape == (layer.out_features, 4)
        assert torch.count_nonzero(layer.lora_B) == 0
        bound = 1 / math.sqrt(layer.in_features)  # kaiming-uniform a = sqrt(5): U(-1/sqrt(in), ..)
        assert layer.lora_A.abs().max() <= bound
        assert layer.lora_A.abs().max() > 0.5 * bound
    same_seed = pretrained_like()
    apply_lora(same_seed, rank=4)
    assert torch.equal(same_seed.blocks[1].mlp.fc2.lora_A, model.blocks[1].mlp.fc2.lora_A)


def test_default_targets_adapt_exactly_the_documented_layers():
    model = pretrained_like()
    layers = apply_lora(model, rank=2)
    expected = [f"blocks.{i}.{name}" for i in range(DEPTH) for name in PER_BLOCK]
    assert layers == expected + ["final_layer.adaLN_modulation.1"]
    assert model.lora_settings.layers == layers
    assert model.lora_settings.target_modules == list(DEFAULT_TARGETS)
    dotted = apply_lora(pretrained_like(), rank=2, target_modules=["attn.proj", "linear"])
    assert dotted == ["blocks.0.attn.proj", "blocks.1.attn.proj", "final_layer.linear"]


def test_pattern_matching_nothing_lists_the_linear_layers():
    model = pretrained_like()
    with pytest.raises(ValueError) as caught:
        apply_lora(model, rank=2, target_modules=["qkv", "attn.qk"])
    message = str(caught.value)
    assert "\n" not in message
    assert "['attn.qk']" in message
    for listed in ("blocks.N.attn.qkv", "blocks.N.adaLN_modulation.1", "final_layer.linear",
                   "t_embedder.mlp.0", "(N = 0..1)"):
        assert listed in message
    assert "t_tgt_embedder" not in message  # trained in full, never adapted
    assert not lora.has_lora(model)


@pytest.mark.parametrize("kwargs, words", [
    (dict(rank=0), "rank"), (dict(rank=2.0), "rank"), (dict(rank=2, alpha=0.0), "alpha"),
    (dict(rank=2, dropout=1.0), "dropout"), (dict(rank=2, target_modules="qkv"), "list"),
    (dict(rank=2, target_modules=[]), "non-empty"), (dict(rank=2, target_modules=["a..b"]), "a..b"),
])
def test_bad_arguments_are_one_line_errors(kwargs, words):
    with pytest.raises(ValueError, match=words) as caught:
        apply_lora(pretrained_like(), **kwargs)
    assert "\n" not in str(caught.value)


def test_twice_is_refused():
    model = pretrained_like()
    apply_lora(model, rank=2)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, rank=2)


def test_one_token_model_refuses_a_qkv_adapter_its_attention_would_skip():
    model = build_model("toy")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="leave 'qkv' out"):
        apply_lora(model, rank=2)
    assert not lora.has_lora(model)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    layers = apply_lora(model, rank=2, target_modules=["proj", "fc1"])
    assert layers[0] == "x_embedder.proj"  # a Linear in vector-data models


# ----------------------------------------------------------------------------------------- training
def test_trainable_tensors_are_the_adapters_and_twinflow_embedders():
    model = pretrained_like()
    layers = apply_lora(model, rank=4)
    names = trainable_names(model)
    grads = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert names == grads
    adapters = {f"{layer}.{leaf}" for layer in layers for leaf in ("lora_A", "lora_B")}
    embedders = {name for name, _ in model.named_parameters() if name.startswith(TWINFLOW_KEYS)}
    assert set(names) == adapters | embedders
    assert "t_sign_embedder.weight" in names
    hidden = 64  # closed form: rank (in + out) per layer; qkv 64->192, proj 64->64, fc1 64->256,
    per_block = 4 * ((hidden + 3 * hidden) + (hidden + hidden) + (hidden + 4 * hidden)
                     + (4 * hidden + hidden) + (hidden + 6 * hidden))  # fc2 256->64, adaLN 64->384
    final = 4 * (hidden + 2 * hidden)
    embedder = (256 * hidden + hidden) + (hidden * hidden + hidden) + 2 * hidden
    total = sum(p.numel() for p in trainable_parameters(model))
    assert total == DEPTH * per_block + final + embedder


def test_after_training_only_adapters_and_embedders_changed():
    model = pretrained_like()
    apply_lora(model, rank=4)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    train_steps(model, steps=3)
    trainable = set(trainable_names(model))
    for key, value in model.state_dict().items():
        if key in trainable:
            assert not torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, before[key]), key
    sign = model.t_sign_embedder.weight
    assert not torch.equal(sign[1], before["t_sign_embedder.weight"][1])  # the fake-branch row


def test_merge_matches_unmerged_and_restores_plain_keys():
    model = pretrained_like()
    apply_lora(model, rank=4, alpha=6.0)
    train_steps(model, steps=3, lr=5e-2)
    model64 = copy.deepcopy(model).double()
    x_t, t, t_tgt, y = inputs()
    x64, t64, t_tgt64 = x_t.double(), t.double(), t_tgt.double()
    with torch.no_grad():
        unmerged, unmerged64 = model(x_t, t, t_tgt, y), model64(x64, t64, t_tgt64, y)
        rng_before = torch.get_rng_state()
        merge_lora(model)
        merge_lora(model64)
        assert torch.equal(torch.get_rng_state(), rng_before)
        merged, merged64 = model(x_t, t, t_tgt, y), model64(x64, t64, t_tgt64, y)
    assert not any(isinstance(module, LoRALinear) for module in model.modules())
    assert list(model.state_dict()) == list(DiT(model.config).state_dict())
    assert (unmerged - pretrained_like()(x_t, t, t_tgt, y)).abs().max() > 1e-3  # training moved it
    # the same function: equal in float64, and within float32 rounding (eps 1.2e-7 x a few layers)
    torch.testing.assert_close(merged64, unmerged64, rtol=1e-12, atol=1e-12)
    scale = unmerged64.abs().max().item()
    torch.testing.assert_close(merged.double(), merged64, rtol=0, atol=2e-6 * scale)
    torch.testing.assert_close(unmerged.double(), unmerged64, rtol=0, atol=2e-6 * scale)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(model)


def test_merge_formula_on_one_layer_in_float64():
    layer = torch.nn.Linear(5, 3).double()
    adapted = LoRALinear(layer, rank=2, alpha=3.0, dropout=0.0,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted.lora_B.copy_(torch.arange(6, dtype=torch.float64).reshape(3, 2))
    x = torch.randn(7, 5, dtype=torch.float64)
    expected = x @ layer.weight.T + layer.bias + 1.5 * (x @ adapted.lora_A.T) @ adapted.lora_B.T
    torch.testing.assert_close(adapted(x), expected, rtol=1e-12, atol=1e-12)
    merged_weight = layer.weight + 1.5 * adapted.lora_B @ adapted.lora_A
    torch.testing.assert_close(adapted.merged_weight(), merged_weight, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------- teacher
def test_teacher_equals_an_explicit_full_ema_copy():
    model = pretrained_like()
    apply_lora(model, rank=4)
    full = EMATeacher(copy.deepcopy(model), decay=0.9, warmup=True)  # averages every tensor
    shared = LoRATeacher(model, decay=0.9, warmup=True)
    train_steps(model, steps=4, teachers=(full, shared), lr=5e-2)
    assert shared.num_updates == full.num_updates == 5
    assert shared.decay_used == full.decay_used
    x_t, t, t_tgt, y = inputs()
    with torch.no_grad():
        expected = full.teacher(x_t, t, t_tgt, y)
        got = shared.teacher(x_t, t, t_tgt, y)
        student = model(x_t, t, t_tgt, y)
    assert (expected - student).abs().max() > 1e-4  # the EMA lags the student
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    teacher_values = shared.state_dict()["teacher"]
    assert list(teacher_values) == trainable_names(model)  # no base tensor in the EMA
    full_values = full.state_dict()["teacher"]
    for name, value in teacher_values.items():
        torch.testing.assert_close(value, full_values[name], rtol=1e-6, atol=1e-7)


def test_decay_one_is_the_base_with_adapters_off_and_decay_zero_the_student():
    base = pretrained_like()
    model = copy.deepcopy(base)
    apply_lora(model, rank=4)
    frozen, live = LoRATeacher(model, decay=1.0), LoRATeacher(model, decay=0.0)
    train_steps(model, steps=3, teachers=(frozen, live), lr=5e-2)
    x_t, t, t_tgt, y = inputs()
    with torch.no_grad():
        assert torch.equal(frozen.teacher(x_t, t, t_tgt, y), base(x_t, t, t_tgt, y))
        assert live.teacher is model
        assert "teacher" not in live.state_dict()
        assert not torch.equal(model(x_t, t, t_tgt, y), base(x_t, t, t_tgt, y))


def test_teacher_state_round_trip_and_mode():
    model = pretrained_like()
    apply_lora(model, rank=4, dropout=0.5)
    teacher = LoRATeacher(model, decay=0.8)
    train_steps(model, steps=2, teachers=(teacher,), lr=5e-2)
    restored = LoRATeacher(model, decay=0.8)
    restored.load_state_dict(teacher.state_dict())
    assert restored.decay_used == teacher.decay_used
    x_t, t, t_tgt, y = inputs()
    teacher.teacher.eval()
    restored.teacher.eval()
    with torch.no_grad():
        first = teacher.teacher(x_t, t, t_tgt, y)
        assert model.training  # the student keeps its own mode
        assert torch.equal(restored.teacher(x_t, t, t_tgt, y), first)
        assert torch.equal(teacher.teacher(x_t, t, t_tgt, y), first)  # eval: no dropout draws
    assert teacher.teacher.config is model.config
    with pytest.raises(ValueError, match="apply_lora first"):
        LoRATeacher(pretrained_like())


# ----------------------------------------------------------------------------------------- files
@pytest.fixture
def trained_run(tmp_path):
    """(base file, adapter file, model, teacher) after a few training steps."""
    base_model = pretrained_like()
    base_path = write_base_file(base_model, tmp_path / "base.safetensors")
    model, _ = load_pretrained(base_path)
    apply_lora(model, rank=4, alpha=8.0)
    teacher = LoRATeacher(model, decay=0.9)
    train_steps(model, steps=3, teachers=(teacher,), lr=5e-2)
    adapter_path = save_adapter(tmp_path / "adapter.safetensors", model, base_path, teacher=teacher)
    return base_path, adapter_path, model, teacher


def test_adapter_file_holds_no_base_tensor(trained_run):
    base_path, adapter_path, model, _ = trained_run
    names = trainable_names(model)
    with safe_open(str(adapter_path), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    expected = [f"model.{n}" for n in names] + [f"ema.teacher.{n}" for n in names]
    assert sorted(keys) == sorted(expected)
    base_keys = set(model.state_dict()) - set(names)
    assert not base_keys & {key.split(".", 1)[1] for key in keys}
    assert not base_keys & {key.split(".", 2)[2] for key in keys if key.startswith("ema.")}
    described = json.loads(metadata[lora.LORA_METADATA_KEY])
    assert described["base_sha256"] == hashlib.sha256(Path(base_path).read_bytes()).hexdigest()
    assert described["base_path"] == str(Path(base_path).resolve())
    assert (described["rank"], described["alpha"]) == (4, 8.0)
    assert described["layers"] == model.lora_settings.layers
    assert json.loads(metadata[lora.EMA_METADATA_KEY])["num_updates"] == 4
    assert adapter_path.stat().st_size < Path(base_path).stat().st_size


def test_load_pretrained_names_an_adapter_file_as_such(trained_run):
    _, adapter_path, _, _ = trained_run
    with pytest.raises(CheckpointError, match="is a LoRA adapter") as caught:
        load_pretrained(adapter_path)
    assert "merge_lora.py" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_load_adapter_restores_student_and_teacher(trained_run):
    base_path, adapter_path, model, teacher = trained_run
    x_t, t, t_tgt, y = inputs()
    with torch.no_grad():
        loaded, info = load_adapter(adapter_path, weights="model")
        assert torch.equal(loaded(x_t, t, t_tgt, y), model(x_t, t, t_tgt, y))
        assert info.used == "model"
        assert info.weights == ["model", "ema"]
        loaded, info = load_adapter(adapter_path, gradient_checkpointing=True)  # auto: ema
        assert info.used == "ema"
        assert torch.equal(loaded(x_t, t, t_tgt, y), teacher.teacher(x_t, t, t_tgt, y))


def test_load_adapter_refuses_a_different_or_missing_base(trained_run, tmp_path):
    base_path, adapter_path, model, _ = trained_run
    other = pretrained_like(seed=5)
    other_path = write_base_file(other, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="sha256") as caught:
        load_adapter(adapter_path, other_path)
    assert "\n" not in str(caught.value)
    Path(base_path).rename(tmp_path / "moved.safetensors")
    with pytest.raises(CheckpointError, match="--base FILE"):
        load_adapter(adapter_path)
    loaded, info = load_adapter(adapter_path, tmp_path / "moved.safetensors", weights="model")
    assert info.base_path == str(tmp_path / "moved.safetensors")
    with pytest.raises(CheckpointError, match="not a LoRA adapter"):
        load_adapter(other_path)


def test_resume_from_an_adapter_file_is_bit_identical(tmp_path):
    base_path = write_base_file(pretrained_like(), tmp_path / "base.safetensors")

    def run(model, teacher, optimizer, generator, steps):
        for _ in range(steps):
            teacher.update(model)
            x = torch.randn(4, 3, 8, 8, generator=generator)
            z = torch.randn(4, 3, 8, 8, generator=generator)
            t = torch.rand(4, generator=generator) * 2 - 1  # real and fake times
            prediction = model(interpolate(x, z, t), t, 0.5 * t, torch.tensor([0, 1, 2, 10]))
            loss = (prediction - velocity_target(x, z)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def start(model):
        apply_lora(model, rank=4, dropout=0.0)
        optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
        return LoRATeacher(model, decay=0.9), optimizer

    straight, _ = load_pretrained(base_path)
    teacher, optimizer = start(straight)
    run(straight, teacher, optimizer, torch.Generator().manual_seed(3), 4)

    first, _ = load_pretrained(base_path)
    first_teacher, first_optimizer = start(first)
    generator = torch.Generator().manual_seed(3)
    run(first, first_teacher, first_optimizer, generator, 2)
    adapter = save_adapter(tmp_path / "a.safetensors", first, base_path, teacher=first_teacher)
    resumed, _ = load_adapter(adapter, weights="model")
    resumed_teacher = LoRATeacher(resumed, decay=0.9)
    resumed_teacher.load_state_dict(read_teacher_state(adapter))
    resumed_optimizer = torch.optim.AdamW(trainable_parameters(resumed), lr=1e-2)
    resumed_optimizer.load_state_dict(first_optimizer.state_dict())  # train_state's part
    run(resumed, resumed_teacher, resumed_optimizer, generator, 2)
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, straight.state_dict()[name]), name
    assert resumed_teacher.decay_used == teacher.decay_used
    for name, value in resumed_teacher.state_dict()["teacher"].items():
        assert torch.equal(value, teacher.state_dict()["teacher"][name]), name


def test_gradient_checkpointing_gives_the_same_adapter_gradients():
    grads = []
    for checkpointing in (False, True):
        model = pretrained_like(gradient_checkpointing=checkpointing)
        apply_lora(model, rank=4)
        with torch.no_grad():
            for parameter in trainable_parameters(model):
                parameter.add_(0.01)  # non-zero B, so A gets gradients too
        x_t, t, t_tgt, y = inputs()
        model(x_t, t, t_tgt, y).square().mean().backward()
        grads.append([parameter.grad for parameter in trainable_parameters(model)])
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------- merge tool
def test_merge_tool_writes_a_plain_model_file(trained_run, tmp_path, capsys):
    base_path, adapter_path, _, teacher = trained_run
    out = tmp_path / "merged.safetensors"
    assert merge_tool.main([str(adapter_path), str(out)]) == 0
    merged, info = load_pretrained(out)
    assert info.missing == []  # the trained TwinFlow embedders are in the file
    x_t, t, t_tgt, y = inputs()
    with torch.no_grad():
        expected = teacher.teacher(x_t, t, t_tgt, y)
        scale = expected.abs().max().item()  # float32 rounding of a merged vs unmerged network
        torch.testing.assert_close(merged(x_t, t, t_tgt, y), expected, rtol=0, atol=2e-6 * scale)
    capsys.readouterr()
    assert merge_tool.main([str(adapter_path), str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "--overwrite" in error
    assert merge_tool.main([str(adapter_path), str(base_path), "--overwrite"]) == 2
    assert "base file" in capsys.readouterr().err
    assert merge_tool.main([str(adapter_path), str(out), "--overwrite", "--weights", "model"]) == 0


def test_merge_tool_keeps_the_base_dtypes(tmp_path):
    base_path = write_base_file(pretrained_like(), tmp_path / "base.safetensors", torch.bfloat16)
    model, _ = load_pretrained(base_path)
    apply_lora(model, rank=2)
    train_steps(model, steps=1)
    adapter_path = save_adapter(tmp_path / "adapter.safetensors", model, base_path)
    out = tmp_path / "merged.safetensors"
    assert merge_tool.main([str(adapter_path), str(out), "--base", str(base_path)]) == 0
    with safe_open(str(out), framework="pt") as handle:
        dtypes = {handle.get_slice(key).get_dtype() for key in handle.keys()}
        metadata = handle.metadata()
    assert dtypes == {"BF16"}
    assert json.loads(metadata["twinflow_min.merged_lora"])["weights"] == "model"


def test_merge_tool_command_line_error_is_one_line(tmp_path):
    out = tmp_path / "merged.safetensors"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "merge_lora.py"),
                             str(tmp_path / "missing.safetensors"), str(out)],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert result.stderr.startswith("merge_lora: error: ")
    assert result.stderr.count("\n") == 1
    assert not out.exists()
