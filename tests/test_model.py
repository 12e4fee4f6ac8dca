"""Tests for twinflow_min/model.py: DiT/SiT layout, TwinFlow time conditioning, config metadata,
input errors.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake
branch. Math-pinning tests run in float64 on tiny models whose weights are randomised from an
explicit generator (a freshly built DiT outputs exactly zero: adaLN-Zero and a zero final layer).
"""

import ast
import inspect
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from twinflow_min import model as module
from twinflow_min.model import (
    MODEL_REGISTRY,
    Attention,
    DiffusionAsFlow,
    DiT,
    DiTConfig,
    SiTTimeFlip,
    build_model,
    config_from_metadata,
    config_to_metadata,
    count_parameters,
    model_from_config,
)

TWINFLOW_KEYS = {
    "t_tgt_embedder.mlp.0.weight",
    "t_tgt_embedder.mlp.0.bias",
    "t_tgt_embedder.mlp.2.weight",
    "t_tgt_embedder.mlp.2.bias",
    "t_sign_embedder.weight",
}
TINY = dict(
    input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, num_classes=10
)


def randomise(
    model: torch.nn.Module, seed: int = 0, std: float = 0.2, skip: tuple = ("pos_embed",)
) -> None:
    """Overwrite every parameter (except the fixed pos_embed) with N(0, std^2) from an explicit
    generator."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith(skip):
                parameter.copy_(
                    torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * std
                )


def tiny_model(seed: int = 0, **overrides) -> DiT:
    model = model_from_config(DiTConfig(**{**TINY, **overrides})).double()
    randomise(model, seed)
    return model.eval()


def tiny_inputs(model: DiT, batch: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    c = model.config
    shape = (
        (batch, c.data_dim) if c.data_dim else (batch, c.in_channels, c.input_size, c.input_size)
    )
    x_t = torch.randn(shape, generator=generator, dtype=torch.float64)
    t = torch.linspace(0.2, 0.9, batch, dtype=torch.float64)
    y = torch.arange(batch) % c.num_classes if c.num_classes else None
    return x_t, t, y


# ---------- layout on meta ----------
# SiT-XL/2 at 256 px (willisma/SiT release) (learn_sigma: final linear 2 * 4 * 2 * 2 = 32 outputs)
XL2_SHAPES = {
    "pos_embed": (1, 256, 1152),
    "x_embedder.proj.weight": (1152, 4, 2, 2),
    "x_embedder.proj.bias": (1152,),
    "t_embedder.mlp.0.weight": (1152, 256),
    "t_embedder.mlp.2.weight": (1152, 1152),
    "y_embedder.embedding_table.weight": (1001, 1152),
    "blocks.27.attn.qkv.weight": (3456, 1152),
    "blocks.0.attn.proj.weight": (1152, 1152),
    "blocks.0.mlp.fc1.weight": (4608, 1152),
    "blocks.0.mlp.fc2.weight": (1152, 4608),
    "blocks.0.adaLN_modulation.1.weight": (6912, 1152),
    "final_layer.adaLN_modulation.1.weight": (2304, 1152),
    "final_layer.linear.weight": (32, 1152),
}
# (plain key count, parameters in millions) from the DiT/SiT releases / DiT Table 1
PLAIN_LAYOUT = {"S": (132, 33), "B": (132, 130), "L": (252, 458), "XL": (292, 675)}


@pytest.mark.parametrize("family", ["DiT", "SiT"])
@pytest.mark.parametrize("size", list(PLAIN_LAYOUT))
def test_registry_layout_on_meta(family, size):
    with torch.device("meta"):
        model = build_model(f"{family}-{size}/2")
    keys = set(model.state_dict())
    # sinusoid cache is not persistent
    assert TWINFLOW_KEYS <= keys and not any("freqs" in key for key in keys)
    expected_keys, expected_millions = PLAIN_LAYOUT[size]
    assert len(keys - TWINFLOW_KEYS) == expected_keys
    twinflow_params = sum(model.state_dict()[key].numel() for key in TWINFLOW_KEYS)
    plain_params = count_parameters(model) - twinflow_params
    assert abs(plain_params / 1e6 - expected_millions) / expected_millions < 0.01
    assert model.config.time_scale == (1000.0 if family == "DiT" else 1.0)
    if size == "XL":
        shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        assert {key: shapes[key] for key in XL2_SHAPES} == XL2_SHAPES
        # DiT's reported DiT-XL/2 size, pos_embed included: 675,129,632 (DiT `train.py` prints it)
        assert plain_params == 675_129_632


def test_every_registry_entry_builds_and_plain_layout_without_twinflow_modules():
    for name in MODEL_REGISTRY:
        with torch.device("meta"):
            model = build_model(name)
        assert isinstance(model, DiT) and model.config == DiTConfig(**MODEL_REGISTRY[name])
    with torch.device("meta"):
        plain = build_model("SiT-S/2", use_target_time=False, use_time_sign=False)
    assert not TWINFLOW_KEYS & set(plain.state_dict()) and len(plain.state_dict()) == 132
    for name, grid in (("DiT-S/4", 8), ("DiT-S/8", 4)):
        with torch.device("meta"):
            assert build_model(name).pos_embed.shape == (1, grid * grid, 384)
    assert MODEL_REGISTRY["toy"]["data_dim"] == 2 and MODEL_REGISTRY["toy"]["num_classes"] == 0
    assert (
        MODEL_REGISTRY["CIFAR-B/2"]["in_channels"] == 3
        and MODEL_REGISTRY["CIFAR-S/2"]["num_classes"] == 10
    )


# ---------- init and embeddings ----------
def test_initialisation_rules():
    torch.manual_seed(0)
    model = DiT(DiTConfig(**{**TINY, "hidden_size": 64}))
    x_t, t, y = tiny_inputs(model)
    assert torch.equal(
        model(x_t.float(), t.float(), t.float() / 2, y), torch.zeros_like(x_t.float())
    )  # adaLN-Zero
    assert torch.count_nonzero(model.t_sign_embedder.weight) == 0
    assert torch.count_nonzero(model.t_tgt_embedder.mlp[0].bias) == 0
    # N(0, 0.02): 16384 draws
    assert 0.015 < model.t_tgt_embedder.mlp[0].weight.std().item() < 0.025
    assert 0.015 < model.y_embedder.embedding_table.weight.std().item() < 0.025
    assert model.y_embedder.embedding_table.weight.shape == (11, 64)  # 10 classes + null row
    assert not model.pos_embed.requires_grad
    # x_embedder as a linear layer: xavier-uniform bound sqrt(6 / (fan_in + fan_out)), fan_in = 3 *
    # 2 * 2
    bound = math.sqrt(6 / (12 + 64))
    assert (
        model.x_embedder.proj.weight.abs().max() <= bound
        and model.x_embedder.proj.weight.abs().max() > 0.9 * bound
    )


def test_pos_embed_matches_mae_formula():
    """Hand-written numpy version of MAE/DiT get_2d_sincos_pos_embed (meshgrid(w, h), first half
    from grid[0])."""
    embed_dim, grid_size = 32, 4
    model = DiT(DiTConfig(**{**TINY, "hidden_size": embed_dim}))

    def one_dim(dim, positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    grid = np.stack(
        np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))
    )
    expected = np.concatenate(
        [one_dim(embed_dim // 2, grid[0]), one_dim(embed_dim // 2, grid[1])], axis=1
    )
    np.testing.assert_allclose(model.pos_embed[0].double().numpy(), expected, atol=1e-6)
    # token 1 sits at row 0, column 1: sin(1 * omega_0) = sin(1) opens the first (column) half
    assert abs(model.pos_embed[0, 1, 0].item() - math.sin(1.0)) < 1e-6


def test_timestep_embedding_sees_abs_time_scaled():
    """The t_embedder input is [cos(|t| s f_i), sin(|t| s f_i)], f_i = exp(-ln(10000) i / 128) (DiT
    formula)."""
    model = tiny_model(time_scale=1000.0)
    captured = []
    model.t_embedder.mlp[0].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    x_t, t, y = tiny_inputs(model)
    model(x_t, -t, -t, y)
    freqs = [math.exp(-math.log(10000) * i / 128) for i in range(128)]
    expected = torch.tensor(
        [
            [math.cos(abs(v) * 1000 * f) for f in freqs]
            + [math.sin(abs(v) * 1000 * f) for f in freqs]
            for v in t.tolist()
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(captured[0], expected, rtol=0, atol=1e-9)


# ---------- forward contract ----------
@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_output_shapes(learn_sigma, num_classes):
    for data_dim in (0, 5):
        model = tiny_model(learn_sigma=learn_sigma, num_classes=num_classes, data_dim=data_dim)
        x_t, t, y = tiny_inputs(model)
        F = model(x_t, t, t / 2, y)
        assert F.shape == x_t.shape and F.dtype == torch.float64 and torch.isfinite(F).all()
        assert ("y_embedder.embedding_table.weight" in model.state_dict()) == bool(num_classes)


def test_learn_sigma_keeps_first_channels_and_unpatchify_matches_dit():
    model = tiny_model(learn_sigma=True)
    x_t, t, y = tiny_inputs(model)
    raw = []
    model.final_layer.register_forward_hook(lambda module, args, out: raw.append(out))
    F = model(x_t, t, t, y)
    # DiT unpatchify: (N, h*w, p*p*C) -> reshape (N, h, w, p, p, C) -> einsum nhwpqc->nchpwq -> (N,
    # C, H, W)
    patches = raw[0].reshape(3, 4, 4, 2, 2, 6)
    images = torch.einsum("nhwpqc->nchpwq", patches).reshape(3, 6, 8, 8)
    torch.testing.assert_close(F, images[:, :3], rtol=0, atol=0)


def test_sign_embedding():
    model = tiny_model()
    x_t, t, y = tiny_inputs(model)
    with torch.no_grad():
        model.t_sign_embedder.weight.zero_()
        base = model(x_t, t, t, y)
        # zero table: sign invisible
        torch.testing.assert_close(model(x_t, -t, -t, y), base, rtol=0, atol=1e-12)
        # row 1 = negative t
        model.t_sign_embedder.weight[1].normal_(generator=torch.Generator().manual_seed(3))
        # the real branch uses row 0
        torch.testing.assert_close(model(x_t, t, t, y), base, rtol=0, atol=0)
        assert (model(x_t, -t, -t, y) - base).abs().max() > 1e-3
        mixed = torch.stack([t[0], -t[1], t[2]])  # per-sample rows
        torch.testing.assert_close(
            model(x_t, mixed, mixed, y)[[0, 2]], base[[0, 2]], rtol=0, atol=1e-12
        )


def test_target_time_gate_is_exactly_zero_on_the_diagonal():
    model = tiny_model()
    plain = tiny_model(use_target_time=False, use_time_sign=False)
    missing = plain.load_state_dict(model.state_dict(), strict=False).unexpected_keys
    assert set(missing) == TWINFLOW_KEYS  # the TwinFlow modules are the only extra keys
    x_t, t, y = tiny_inputs(model)
    with torch.no_grad():
        model.t_sign_embedder.weight.zero_()
        before = model(x_t, t, t, y)
        # == the pretrained model
        torch.testing.assert_close(before, plain(x_t, t, None, y), rtol=0, atol=1e-12)
        randomise(model.t_tgt_embedder, seed=9, std=1.0, skip=())
        torch.testing.assert_close(model(x_t, t, t, y), before, rtol=0, atol=0)
        # t_tgt=None means t_tgt=t
        torch.testing.assert_close(model(x_t, t, None, y), before, rtol=0, atol=0)
        assert (model(x_t, t, t * 0.5, y) - before).abs().max() > 1e-3
        assert (model(x_t, t, t * 0.5, y) - model(x_t, t, t * 0.25, y)).abs().max() > 1e-3


def test_sit_convention_is_negated_output_at_one_minus_t():
    """SiT files: F(x, t, t_tgt) = -net(x, 1 - |t|, 1 - |t_tgt|), gate (t - t_tgt) in our raw
    units."""
    sit = tiny_model(time_convention="sit")
    ours = tiny_model(time_convention="ours")
    ours.load_state_dict(sit.state_dict())
    x_t, t, y = tiny_inputs(sit)
    t_tgt = t * 0.3
    with torch.no_grad():
        torch.testing.assert_close(
            sit(x_t, t, t, y), -ours(x_t, 1 - t, 1 - t, y), rtol=0, atol=1e-12
        )
        # off the diagonal the ours-model gate is (1 - t) - (1 - t_tgt) = -(t - t_tgt): flip its
        # embedder's sign
        ours.t_tgt_embedder.mlp[2].weight.neg_()
        ours.t_tgt_embedder.mlp[2].bias.neg_()
        torch.testing.assert_close(
            sit(x_t, t, t_tgt, y), -ours(x_t, 1 - t, 1 - t_tgt, y), rtol=0, atol=1e-12
        )


def test_null_class_and_unconditional():
    model = tiny_model()
    x_t, t, _ = tiny_inputs(model)
    null = torch.full((3,), 10)
    torch.testing.assert_close(model(x_t, t, t, None), model(x_t, t, t, null), rtol=0, atol=0)
    assert (model(x_t, t, t, None) - model(x_t, t, t, torch.tensor([0, 1, 2]))).abs().max() > 1e-3


def test_single_token_attention_shortcut_equals_softmax_attention():
    attention = Attention(16, 4).double()
    randomise(attention, seed=5, skip=())
    x = torch.randn(5, 1, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    q, k, v = attention.qkv(x).reshape(5, 1, 3, 4, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # scale 1 / sqrt(head dim 4)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(5, 1, 16))
    torch.testing.assert_close(attention(x), expected, rtol=0, atol=1e-12)
    x2 = torch.randn(5, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    q, k, v = attention.qkv(x2).reshape(5, 3, 3, 4, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    torch.testing.assert_close(
        attention(x2), attention.proj((weights @ v).transpose(1, 2).reshape(5, 3, 16))
    )


def test_gradient_checkpointing_same_values_and_gradients():
    model = tiny_model(seed=2).train()
    checkpointed = tiny_model(seed=2, gradient_checkpointing=True).train()
    x_t, t, y = tiny_inputs(model)
    for net in (model, checkpointed):
        net(x_t, t, t / 2, y).square().sum().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), checkpointed.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    "overrides, wrapper",
    [
        (dict(time_convention="sit"), SiTTimeFlip),
        (dict(prediction_type="epsilon", time_scale=1000.0), DiffusionAsFlow),
        (dict(prediction_type="v_prediction"), DiffusionAsFlow),
    ],
)
def test_wrappers_keep_the_plain_keys_and_only_the_plain_dit_is_plain(overrides, wrapper):
    """The SiT flip and the diffusion bridge are subclasses with DiT's exact state-dict keys; the
    plain DiT refuses a config it would not translate, and each wrapper refuses the others'."""
    model = tiny_model(**overrides)
    plain = tiny_model()
    assert type(model) is wrapper and type(plain) is DiT
    assert list(model.state_dict()) == list(plain.state_dict())
    assert type(build_model("SiT-S/2", **overrides)) is wrapper
    with pytest.raises(ValueError, match="model_from_config"):
        DiT(DiTConfig(**{**TINY, **overrides}))
    with pytest.raises(ValueError, match="model_from_config"):
        wrapper(DiTConfig(**TINY))


def test_diffusion_wrapper_is_the_ddpm_network_on_the_rescaled_input():
    """F = z_hat - x_hat of an epsilon network fed x_ddpm = x_t / sqrt((1-t)^2 + t^2) at its DDPM
    index, written out here in float64 from the DDPM formulas (docs/math.md#diffusion-bridge)."""
    model = tiny_model(prediction_type="epsilon", time_scale=1000.0)
    net = tiny_model(time_scale=1.0)  # the same network, fed the DDPM index by hand
    net.load_state_dict(model.state_dict())
    x_t, _, y = tiny_inputs(model)
    t = torch.tensor([0.3, -0.6, 0.45], dtype=torch.float64)
    betas = np.linspace(1e-4, 0.02, 1000)
    log_table = -np.log(np.cumprod(1 - betas))
    alpha_bar = (1 - t.abs()) ** 2 / ((1 - t.abs()) ** 2 + t**2)  # (B,)
    index = torch.from_numpy(np.interp(-np.log(alpha_bar.numpy()), log_table, np.arange(1000.0)))
    scale = (alpha_bar.sqrt() + (1 - alpha_bar).sqrt())[:, None, None, None]
    x_ddpm = x_t * scale
    captured = {}
    with torch.no_grad():
        handle = net.t_embedder.register_forward_pre_hook(
            lambda module, args: captured.setdefault("time", args[0])
        )
        net.network_time = lambda time: index  # the DDPM index, computed above
        epsilon = net(x_ddpm, t, None, y)  # signed t: the fake branch keeps its sign row
        handle.remove()
        torch.testing.assert_close(captured["time"], index, rtol=0, atol=0)
        root_a = alpha_bar.sqrt()[:, None, None, None]
        root_b = (1 - alpha_bar).sqrt()[:, None, None, None]
        expected = epsilon - (x_ddpm - root_b * epsilon) / root_a
        torch.testing.assert_close(model(x_t, t, t, y), expected, rtol=1e-9, atol=1e-9)


def test_no_import_inside_a_function():
    """Issue 12: imports sit at the top of model.py, none inside a function (forward included)."""
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not nested, f"import inside {node.name}"


# ---------- metadata ----------
def test_metadata_round_trip(tmp_path):
    model = tiny_model(learn_sigma=True, time_scale=1000.0, time_convention="sit")
    path = tmp_path / "tiny.safetensors"
    tensors = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(tensors, str(path), metadata=config_to_metadata(model.config))
    with safe_open(str(path), "pt") as handle:
        config = config_from_metadata(handle.metadata())
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    assert config == model.config
    rebuilt = model_from_config(config).double()
    rebuilt.load_state_dict(state, strict=True)
    x_t, t, y = tiny_inputs(model)
    torch.testing.assert_close(rebuilt(x_t, t, t / 3, y), model(x_t, t, t / 3, y), rtol=0, atol=0)


def test_metadata_errors():
    with pytest.raises(ValueError, match="twinflow_min.model_config"):
        config_from_metadata(None)
    with pytest.raises(ValueError, match="twinflow_min.model_config"):
        config_from_metadata({"format": "pt"})
    with pytest.raises(ValueError, match=r"unknown DiTConfig field\(s\) \['depht'\]"):
        config_from_metadata({"twinflow_min.model_config": '{"depht": 3}'})
    with pytest.raises(ValueError, match="JSON object"):
        config_from_metadata({"twinflow_min.model_config": "[1, 2"})


# ---------- bad inputs ----------
def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    x_t, t, y = tiny_inputs(model)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 3, 8, 8\)"):
        model(x_t[:, :2], t, t, y)  # wrong channel count
    with pytest.raises(ValueError, match=r"x_t must have shape"):
        model(x_t[..., :4], t, t, y)  # wrong spatial size
    with pytest.raises(ValueError, match="t has 2 entries but x_t has batch size 3"):
        model(x_t, t[:2], None, y)
    with pytest.raises(ValueError, match="t_tgt has 4 entries"):
        model(x_t, t, torch.zeros(4, dtype=torch.float64), y)
    with pytest.raises(ValueError, match="1-D tensor"):
        model(x_t, t[:, None], None, y)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model(x_t, t * 2, None, y)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 10\]"):
        model(x_t, t, t, torch.tensor([0, 11, 1]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(x_t, t, t, y.double())
    with pytest.raises(TypeError, match="model weights are torch.float64"):
        model(x_t.float(), t, t, y)
    vector = tiny_model(data_dim=2, num_classes=0)
    with pytest.raises(ValueError, match="unconditional"):
        vector(torch.zeros(3, 2, dtype=torch.float64), t, t, y)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        vector(torch.zeros(3, 3, dtype=torch.float64), t, t, None)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiTConfig(hidden_size=100, num_heads=6)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiTConfig(input_size=30, patch_size=4)
    with pytest.raises(ValueError, match="time_convention must be one of"):
        DiTConfig(time_convention="SiT")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        DiTConfig(prediction_type="x0")
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        DiTConfig(depth=0)
    with pytest.raises(ValueError, match="Did you mean 'DiT-XL/2'"):
        build_model("DiT-XL2")
    with pytest.raises(ValueError, match=r"unknown DiTConfig field\(s\) \['hidden'\]"):
        build_model("toy", hidden=3)
    with pytest.raises(TypeError, match="DiTConfig"):
        DiT({"depth": 2})
