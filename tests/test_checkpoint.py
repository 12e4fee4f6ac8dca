"""Tests for twinflow_min/checkpoint.py and tools/convert_checkpoint.py.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake
branch. Tiny SiT / REPA / DiT checkpoints (hidden 32, depth 2, patch 2, 4 channels, 8x8, 10 classes)
are written with the exact released key names as bf16 `.pt` files, converted, loaded, and compared
(at t_tgt = t) against an independent functional SiT forward written here from the DiT/SiT papers'
definitions, in each file's own convention, then mapped: SiT -> F = -out(x, 1 - t); REPA -> F =
out(x, t); DiT-eps -> F = eps - x0 with x0 = (x_ddpm - sqrt(1 - a) eps) / sqrt(a), a = (1 - t)^2 /
((1 - t)^2 + t^2).
"""

import argparse
import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from twinflow_min.checkpoint import (
    CheckpointError,
    expected_shapes,
    infer_config_from_shapes,
    load_pretrained,
    read_header,
)
from twinflow_min.diff2flow import ddpm_alphas_cumprod, flow_time_to_ddpm
from twinflow_min.model import config_to_metadata

TOOL_PATH = Path(__file__).resolve().parent.parent / "tools" / "convert_checkpoint.py"
HIDDEN, DEPTH, PATCH, CHANNELS, SIZE, CLASSES, HEADS = 32, 2, 2, 4, 8, 10, 2
TWINFLOW_KEYS = [
    "t_sign_embedder.weight",
    "t_tgt_embedder.mlp.0.bias",
    "t_tgt_embedder.mlp.0.weight",
    "t_tgt_embedder.mlp.2.bias",
    "t_tgt_embedder.mlp.2.weight",
]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------- fixtures in the released layouts ----------
def sit_shapes(hidden, depth, patch, channels, tokens, classes, learn_sigma):
    """Key -> shape of a DiT/SiT state dict, transcribed from the released DiT/SiT files."""
    shapes = {
        "pos_embed": (1, tokens, hidden),
        "x_embedder.proj.weight": (hidden, channels, patch, patch),
        "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256),
        "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden),
        "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (classes + 1, hidden),
    }
    for i in range(depth):
        for name, rows, cols in (
            ("attn.qkv", 3 * hidden, hidden),
            ("attn.proj", hidden, hidden),
            ("mlp.fc1", 4 * hidden, hidden),
            ("mlp.fc2", hidden, 4 * hidden),
            ("adaLN_modulation.1", 6 * hidden, hidden),
        ):
            shapes[f"blocks.{i}.{name}.weight"], shapes[f"blocks.{i}.{name}.bias"] = (
                (rows, cols),
                (rows,),
            )
    out = patch * patch * channels * (2 if learn_sigma else 1)
    shapes.update(
        {
            "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
            "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
            "final_layer.linear.weight": (out, hidden),
            "final_layer.linear.bias": (out,),
        }
    )
    return shapes


def tiny_state(learn_sigma, seed=0, projectors=False, dtype=torch.bfloat16):
    generator = torch.Generator().manual_seed(seed)
    shapes = sit_shapes(HIDDEN, DEPTH, PATCH, CHANNELS, (SIZE // PATCH) ** 2, CLASSES, learn_sigma)
    # REPA build_mlp(hidden, projector_dim, z_dim): Linear, SiLU, Linear, SiLU, Linear
    if projectors:
        shapes.update(
            {
                "projectors.0.0.weight": (64, HIDDEN),
                "projectors.0.0.bias": (64,),
                "projectors.0.2.weight": (64, 64),
                "projectors.0.2.bias": (64,),
                "projectors.0.4.weight": (16, 64),
                "projectors.0.4.bias": (16,),
            }
        )
    return {
        key: (0.3 * torch.randn(shape, generator=generator)).to(dtype)
        for key, shape in shapes.items()
    }


def ref_forward(sd, x, t_net, y, learn_sigma):
    """Straightforward SiT/DiT forward on a float64 state dict (DiT models.py semantics)."""
    sd = {k: v.double() for k, v in sd.items()}
    batch = x.shape[0]
    tokens = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=PATCH)
    tokens = tokens.flatten(2).transpose(1, 2) + sd["pos_embed"]
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float64) / 128)
    args = t_net[:, None] * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    t_emb = F.linear(
        F.silu(F.linear(t_freq, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
        sd["t_embedder.mlp.2.weight"],
        sd["t_embedder.mlp.2.bias"],
    )
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]
    head_dim = HIDDEN // HEADS
    for i in range(DEPTH):
        p = f"blocks.{i}."
        mod = F.linear(
            F.silu(c), sd[p + "adaLN_modulation.1.weight"], sd[p + "adaLN_modulation.1.bias"]
        )
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=1)
        h = F.layer_norm(tokens, (HIDDEN,), eps=1e-6) * (1 + scale1[:, None]) + shift1[:, None]
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(batch, -1, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1) @ v
        attn = F.linear(
            attn.transpose(1, 2).reshape(batch, -1, HIDDEN),
            sd[p + "attn.proj.weight"],
            sd[p + "attn.proj.bias"],
        )
        tokens = tokens + gate1[:, None] * attn
        h = F.layer_norm(tokens, (HIDDEN,), eps=1e-6) * (1 + scale2[:, None]) + shift2[:, None]
        h = F.linear(
            F.gelu(
                F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]), approximate="tanh"
            ),
            sd[p + "mlp.fc2.weight"],
            sd[p + "mlp.fc2.bias"],
        )
        tokens = tokens + gate2[:, None] * h
    shift, scale = F.linear(
        F.silu(c),
        sd["final_layer.adaLN_modulation.1.weight"],
        sd["final_layer.adaLN_modulation.1.bias"],
    ).chunk(2, dim=1)
    h = F.layer_norm(tokens, (HIDDEN,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    out = F.linear(h, sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    channels = CHANNELS * (2 if learn_sigma else 1)
    grid = SIZE // PATCH
    out = out.reshape(batch, grid, grid, PATCH, PATCH, channels)
    out = torch.einsum("nhwpqc->nchpwq", out).reshape(batch, channels, SIZE, SIZE)
    return out[:, :CHANNELS]


def inputs(batch=3):
    generator = torch.Generator().manual_seed(7)
    x_t = torch.randn(batch, CHANNELS, SIZE, SIZE, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.15, 0.5, 0.85], dtype=torch.float64)[:batch]
    y = torch.tensor([0, 3, 10])[:batch]  # 10 = the null class
    return x_t, t, y


def expected_velocity(convention, sd, x_t, t, y):
    if convention == "sit":  # F(x, t) = -model(x, 1 - t)
        return -ref_forward(sd, x_t, 1 - t, y, learn_sigma=True)
    if convention == "repa":  # same convention as ours
        return ref_forward(sd, x_t, t, y, learn_sigma=False)
    # pinned in test_diff2flow.py
    timestep, input_scale = flow_time_to_ddpm(t, ddpm_alphas_cumprod())
    x_ddpm = input_scale.view(-1, 1, 1, 1) * x_t
    epsilon = ref_forward(sd, x_ddpm, timestep, y, learn_sigma=True)
    a = ((1 - t) ** 2 / ((1 - t) ** 2 + t**2)).view(-1, 1, 1, 1)
    x0 = (x_ddpm - (1 - a).sqrt() * epsilon) / a.sqrt()
    return epsilon - x0


def write_source(tmp_path, convention):
    """A released-style .pt for each family; returns (path, the weights that must be loaded)."""
    # what SiT/REPA train.py store under "args"
    args = argparse.Namespace(model="SiT-XL/2", global_seed=0)
    if convention == "sit":  # SiT train.py: model + ema + opt + args; EMA must win
        ema = tiny_state(learn_sigma=True, seed=1)
        checkpoint = {
            "model": tiny_state(learn_sigma=True, seed=2),
            "ema": ema,
            "opt": {},
            "args": args,
        }
    elif convention == "repa":  # REPA train.py: + steps, projectors inside the weights
        ema = tiny_state(learn_sigma=False, seed=3, projectors=True)
        checkpoint = {
            "model": tiny_state(learn_sigma=False, seed=4),
            "ema": ema,
            "opt": {},
            "args": args,
            "steps": 4000,
        }
    else:  # DiT-XL-2-256x256.pt: a plain state dict (here also with a DDP "module." prefix)
        ema = tiny_state(learn_sigma=True, seed=5)
        checkpoint = {f"module.{k}": v for k, v in ema.items()}
    path = tmp_path / f"{convention}.pt"
    torch.save(checkpoint, path)
    return path, {k: v for k, v in ema.items() if not k.startswith("projectors.")}


# ---------- convert + load + compare ----------
@pytest.mark.parametrize("convention", ["sit", "repa", "dit"])
def test_convert_load_and_match_reference(tmp_path, tool, convention):
    source, weights = write_source(tmp_path, convention)
    out = tmp_path / f"{convention}.safetensors"
    assert (
        tool.main([str(source), str(out), "--convention", convention, "--num-heads", str(HEADS)])
        == 0
    )

    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
        stored = {key: handle.get_tensor(key) for key in handle.keys()}
    assert set(stored) == set(weights)
    assert (
        stored["pos_embed"].dtype == torch.float32
        and stored["blocks.0.attn.qkv.weight"].dtype == torch.bfloat16
    )
    assert metadata["twinflow_min.source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert metadata["twinflow_min.source_weights"] == (
        "state dict" if convention == "dit" else "ema"
    )
    assert metadata["twinflow_min.num_classes"] == "10"
    assert metadata["twinflow_min.learn_sigma"] == ("false" if convention == "repa" else "true")
    expected_time = {"sit": ("sit", "flow"), "repa": ("ours", "flow"), "dit": ("ours", "epsilon")}[
        convention
    ]
    assert (
        metadata["twinflow_min.time_convention"],
        metadata["twinflow_min.prediction_type"],
    ) == expected_time
    dropped = json.loads(metadata["twinflow_min.dropped_keys"])
    assert dropped == (
        sorted(k for k in tiny_state(False, projectors=True) if k.startswith("projectors."))
        if convention == "repa"
        else []
    )

    model, info = load_pretrained(out, dtype=torch.float64)
    # issue 11 item 2: the file's prediction type is visible after load, for train.py to compare
    assert model.config.prediction_type == info.config.prediction_type == expected_time[1]
    assert model.config.time_convention == expected_time[0]
    assert f"prediction {expected_time[1]}" in str(info)
    assert (
        type(model).__name__
        == {"sit": "SiTTimeFlip", "repa": "DiT", "dit": "DiffusionAsFlow"}[convention]
    )
    assert (
        info.loaded == 12 + 10 * DEPTH
        and info.missing == TWINFLOW_KEYS
        and info.weights == "state dict"
    )
    assert info.config.num_heads == HEADS and info.config.input_size == SIZE
    x_t, t, y = inputs()
    with torch.no_grad():
        got = model.eval()(x_t, t, t, y)
        fake_branch = model(x_t, -t, -t, y)  # new sign table is zero: the twin branch starts equal
    torch.testing.assert_close(
        got, expected_velocity(convention, weights, x_t, t, y), rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(fake_branch, got, rtol=0, atol=0)


def test_bf16_file_loads_as_float32_master_weights(tmp_path, tool):
    source, weights = write_source(tmp_path, "repa")
    out = tmp_path / "repa.safetensors"
    assert tool.main([str(source), str(out), "--convention", "repa", "--num-heads", "2"]) == 0
    model, info = load_pretrained(out)
    assert info.file_dtypes == ["BF16", "F32"] and info.dtype == "float32"
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert torch.equal(model.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"].float())
    assert "TwinFlow tensors at init" in str(info)


def test_fp32_conversion_is_exact_and_legacy_repa_blocks_are_renamed(tmp_path, tool):
    state = tiny_state(learn_sigma=False, seed=9, dtype=torch.float32)
    legacy = {
        (k.replace("blocks.1.", "decoder_blocks.0.") if k.startswith("blocks.1.") else k): v
        # REPA legacy: decoder_blocks.i = blocks.(i + encoder depth)
        for k, v in state.items()
    }
    source = tmp_path / "legacy.pt"
    torch.save({"ema": legacy}, source)
    out = tmp_path / "legacy.safetensors"
    assert (
        tool.main(
            [str(source), str(out), "--convention", "repa", "--dtype", "fp32", "--num-heads", "2"]
        )
        == 0
    )
    model, _ = load_pretrained(out)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])


# ---------- converter errors ----------
class OpaqueObject:
    """A class weights_only loading must refuse to rebuild."""


def test_converter_errors_are_one_line(tmp_path, tool, capsys):
    out = tmp_path / "out.safetensors"

    def fails(source, *extra):
        assert tool.main([str(source), str(out), "--convention", "repa", *extra]) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("convert_checkpoint: error:") and "\n" not in message
        return message

    assert "no file" in fails(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    assert "weights_only" in fails(garbage)
    torch.save({"model": {"x": torch.zeros(1)}, "args": OpaqueObject()}, tmp_path / "object.pt")
    assert "weights_only" in fails(tmp_path / "object.pt")  # arbitrary classes are never unpickled
    torch.save({"step": 3, "lr": 0.1}, tmp_path / "no_weights.pt")
    assert "no state dict found" in fails(tmp_path / "no_weights.pt")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    assert "unknown layout" in fails(tmp_path / "foreign.pt")
    torch.save(tiny_state(False), tmp_path / "tiny.pt")
    assert "num_heads" in fails(tmp_path / "tiny.pt")  # hidden 32 is no preset width
    broken = tiny_state(False)
    broken["blocks.0.mlp.fc1.bias"] = torch.zeros(5)
    torch.save(broken, tmp_path / "broken.pt")
    assert "blocks.0.mlp.fc1.bias: expected (128,), found (5,)" in fails(
        tmp_path / "broken.pt", "--num-heads", "2"
    )
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))  # nothing half-written
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "tiny.pt"), str(out), "--convention", "flux"])


def test_converter_refusals_at_the_door(tmp_path, tool, capsys):
    """Issue 13: sizes that make no sense, an existing output, a folder as output, an unwritable
    place and a foreign file: one line each, and the existing output is left untouched."""
    source, _ = write_source(tmp_path, "repa")
    out = tmp_path / "out.safetensors"

    def fails(*args):
        assert tool.main([str(source), str(out), "--convention", "repa", *args]) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("convert_checkpoint: error:") and "\n" not in message
        return message

    for heads in ("0", "-2"):
        assert "--num-heads must be a positive integer, got" in fails("--num-heads", heads)
    assert "--num-heads 3 does not divide the hidden size 32" in fails("--num-heads", "3")
    out.write_bytes(b"precious")
    message = fails("--num-heads", "2")
    assert "already exists" in message and "--overwrite" in message
    assert out.read_bytes() == b"precious"
    assert (
        tool.main(
            [str(source), str(out), "--convention", "repa", "--num-heads", "2", "--overwrite"]
        )
        == 0
    )
    assert load_pretrained(out)[1].loaded == 12 + 10 * DEPTH  # replaced by the converted file
    assert not list(tmp_path.glob("*.tmp"))
    folder = tmp_path / "folder"
    folder.mkdir()
    assert tool.main([str(source), str(folder), "--convention", "repa"]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert (
        tool.main(
            [
                str(source),
                str(blocker / "out.safetensors"),
                "--convention",
                "repa",
                "--num-heads",
                "2",
            ]
        )
        == 2
    )
    assert "cannot write" in capsys.readouterr().err
    torch.save(
        {"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(3)}, tmp_path / "other.pt"
    )
    assert (
        tool.main(
            [str(tmp_path / "other.pt"), str(tmp_path / "o.safetensors"), "--convention", "sit"]
        )
        == 2
    )
    assert "is not a DiT/SiT checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_converter_unreadable_input(tmp_path, tool, capsys):
    source, _ = write_source(tmp_path, "repa")
    source.chmod(0)
    assert tool.main([str(source), str(tmp_path / "o.safetensors"), "--convention", "repa"]) == 2
    assert "permission denied" in capsys.readouterr().err


def test_foreign_safetensors_is_named_as_such(tmp_path):
    """Issue 13: a safetensors file from another program is "not a DiT/SiT checkpoint", whether or
    not a time convention is given (never "the file does not say its time convention")."""
    path = tmp_path / "lora.safetensors"
    save_file(
        {"lora_up.weight": torch.zeros(4, 2), "lora_down.weight": torch.zeros(2, 4)},
        str(path),
        metadata={"ss_network_module": "networks.lora"},
    )
    for overrides in ({}, {"time_convention": "sit"}):
        with pytest.raises(CheckpointError, match="is not a DiT/SiT checkpoint") as error:
            load_pretrained(path, **overrides)
        assert "time convention" not in str(error.value) and "\n" not in str(error.value)


# ---------- loader errors and other inputs ----------
def test_loader_errors(tmp_path, tool):
    source, _ = write_source(tmp_path, "repa")
    out = tmp_path / "repa.safetensors"
    assert tool.main([str(source), str(out), "--convention", "repa", "--num-heads", "2"]) == 0

    with pytest.raises(CheckpointError, match="convert_checkpoint"):
        load_pretrained(source)  # the pickled .pt itself
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(out.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(truncated)  # caught from the header alone, before any tensor is read
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(truncated)
    with pytest.raises(CheckpointError, match="no file"):
        load_pretrained(tmp_path / "absent.safetensors")

    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    bad_shape = dict(state, **{"blocks.0.mlp.fc1.weight": torch.zeros(100, HIDDEN)})
    save_file(bad_shape, str(tmp_path / "shape.safetensors"), metadata=metadata)
    with pytest.raises(
        CheckpointError,
        match=r"blocks\.0\.mlp\.fc1\.weight: expected \(128, 32\), found \(100, 32\)",
    ):
        load_pretrained(tmp_path / "shape.safetensors")
    missing = {k: v for k, v in state.items() if k != "final_layer.linear.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="missing keys: \\['final_layer.linear.bias'\\]"):
        load_pretrained(tmp_path / "missing.safetensors")
    save_file(tiny_state(False, projectors=True), str(tmp_path / "raw_repa.safetensors"))
    with pytest.raises(CheckpointError, match="projectors"):
        load_pretrained(tmp_path / "raw_repa.safetensors", time_convention="ours", num_heads=2)
    with pytest.raises(CheckpointError, match="time convention"):
        load_pretrained(tmp_path / "raw_repa.safetensors")
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="unknown layout"):
        load_pretrained(tmp_path / "foreign.safetensors", time_convention="ours")
    with pytest.raises(CheckpointError, match="unknown DiTConfig field"):
        load_pretrained(out, num_head=2)
    with pytest.raises(CheckpointError, match="floating torch.dtype"):
        load_pretrained(out, dtype="bf16")
    with pytest.raises(CheckpointError, match="training checkpoints only"):
        load_pretrained(out, weights="ema")


def test_plain_state_dict_with_explicit_convention(tmp_path):
    # a SiT state dict saved as safetensors by hand, no metadata: the caller names the convention
    weights = tiny_state(learn_sigma=True, seed=11)
    path = tmp_path / "plain.safetensors"
    save_file(weights, str(path))
    model, info = load_pretrained(path, dtype=torch.float64, time_convention="sit", num_heads=HEADS)
    assert info.source == "inferred from shapes" and info.inferred["learn_sigma"] is True
    x_t, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x_t, t, t, y), expected_velocity("sit", weights, x_t, t, y), rtol=1e-9, atol=1e-9
        )


def test_own_model_and_training_checkpoints(tmp_path):
    from twinflow_min.model import build_model
    from twinflow_min.train_state import save_checkpoint

    def tiny_model(seed):
        model = build_model("CIFAR-S/2", hidden_size=32, depth=1, num_heads=2, input_size=8)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
        return model.eval()

    model, ema_model = tiny_model(0), tiny_model(1)
    save_file(
        model.state_dict(),
        str(tmp_path / "own.safetensors"),
        metadata=config_to_metadata(model.config),
    )
    loaded, info = load_pretrained(tmp_path / "own.safetensors")
    assert info.missing == [] and info.source == "twinflow-min config"
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    t, t_tgt, y = torch.tensor([0.9, -0.4]), torch.tensor([0.2, -0.1]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, t, t_tgt, y), model(x, t, t_tgt, y))

    class EMAStub:  # a teacher whose state_dict nests the averaged weights, as train_state expects
        def state_dict(self):
            return {"shadow": ema_model.state_dict(), "decay": 0.999}

    save_checkpoint(tmp_path / "run", model=model, ema=EMAStub(), step=5, train_config={})
    from_ema, info_ema = load_pretrained(tmp_path / "run" / "checkpoint.safetensors")
    from_model, info_model = load_pretrained(
        tmp_path / "run" / "checkpoint.safetensors", weights="model"
    )
    assert (info_ema.weights, info_model.weights) == ("ema", "model")
    with torch.no_grad():
        assert torch.equal(from_ema.eval()(x, t, t_tgt, y), ema_model(x, t, t_tgt, y))
        assert torch.equal(from_model.eval()(x, t, t_tgt, y), model(x, t, t_tgt, y))


# ---------- full-size layouts on meta ----------
@pytest.mark.parametrize(
    "size,hidden,depth,heads,keys",
    [
        ("S", 384, 12, 6, 132),
        ("B", 768, 12, 12, 132),
        ("L", 1024, 24, 16, 252),
        ("XL", 1152, 28, 16, 292),
    ],
)
def test_full_size_layouts(size, hidden, depth, heads, keys):
    for learn_sigma in (True, False):  # SiT / DiT release (32 output rows) and REPA (16)
        shapes = sit_shapes(hidden, depth, 2, 4, 256, 1000, learn_sigma)
        assert len(shapes) == keys  # key counts of the released files
        config, inferred = infer_config_from_shapes(shapes, time_convention="ours")
        assert (
            config.hidden_size,
            config.depth,
            config.num_heads,
            config.patch_size,
            config.input_size,
            config.num_classes,
            config.learn_sigma,
            config.mlp_ratio,
        ) == (hidden, depth, heads, 2, 32, 1000, learn_sigma, 4.0)
        ours = expected_shapes(config)
        assert sorted(set(ours) - set(shapes)) == TWINFLOW_KEYS
        assert {k: v for k, v in ours.items() if k in shapes} == shapes
    if size == "XL":  # DiT Table 1: DiT-XL/2 has 675M parameters
        assert (
            675e6
            < sum(math.prod(s) for s in sit_shapes(1152, 28, 2, 4, 256, 1000, True).values())
            < 676e6
        )


def test_converter_cleaning_on_a_full_size_repa_layout(tool):
    shapes = sit_shapes(1152, 28, 2, 4, 256, 1000, False)
    shapes.update({"projectors.0.0.weight": (2048, 1152), "projectors.0.4.weight": (768, 2048)})
    state = {f"module.{k}": torch.empty(s, device="meta") for k, s in shapes.items()}
    cleaned, dropped, renamed = tool.clean_state_dict(state)
    assert dropped == ["projectors.0.0.weight", "projectors.0.4.weight"] and renamed == []
    assert len(cleaned) == 292 and "blocks.27.attn.qkv.weight" in cleaned
