"""DiT / SiT backbone with TwinFlow's time conditioning: F(x_t, t, t_tgt, y).

Paper: TwinFlow (arXiv:2512.05150), Sec. 3 (any-step model F(x_t, t, t_tgt) and the negative-time twin branch);
backbone: DiT (Peebles & Xie 2023) as in `facebookresearch/DiT models.py::DiT` and `willisma/SiT models.py::SiT`,
with the same state-dict keys so released DiT/SiT/REPA files load with strict key checks.
TwinFlow additions mirror the official SD3.5 wrapper (`transformer_sd_3.py`:
`temb += time_embed_2(t_tgt) * (t - t_tgt)`, second embedder N(0, 0.02)) and SimpleTuner's zero-initialised
`nn.Embedding(2, D)` time-sign embedding (reference §1.3; the official code has no sign input).

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake (twin) branch.
`forward` is always called in this convention; `time_convention="sit"` and `prediction_type` translate internally.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from twinflow_min.transport import check_time, expand_time

FREQUENCY_EMBEDDING_SIZE = 256  # DiT TimestepEmbedder(frequency_embedding_size=256)
MAX_PERIOD = 10000  # DiT timestep_embedding(max_period=10000), GLIDE's value
POS_EMBED_BASE = 10000.0  # MAE get_1d_sincos_pos_embed_from_grid: omega = 1 / 10000 ** (2i / D)
LAYER_NORM_EPS = 1e-6  # DiT norm1 / norm2 / norm_final
EMBED_INIT_STD = 0.02  # DiT initialize_weights: y table and t-MLP ~ N(0, 0.02); TwinFlow SD3 second embedder
METADATA_KEY = "twinflow_min.model_config"
TIME_CONVENTIONS = ("ours", "sit")
PREDICTION_TYPES = ("flow", "epsilon", "v_prediction")


# ------------------------------------------------------------------------------------------- config
@dataclass
class DiTConfig:
    """Architecture + time handling. Defaults: DiT-S/2 on ImageNet-256 latents (DiT `DiT_S_2`)."""
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # 0 = unconditional (no y_embedder); otherwise the table has a null row at id num_classes
    learn_sigma: bool = False  # DiT/SiT files: 2C output channels, the first C are kept
    data_dim: int = 0  # > 0: vector data (B, data_dim), one token; patch fields are ignored
    time_scale: float = 1.0  # network time = |t| * time_scale (1.0 SiT/REPA, 1000.0 DiT)
    use_target_time: bool = True  # TwinFlow t_tgt_embedder
    use_time_sign: bool = True  # TwinFlow t_sign_embedder
    time_convention: str = "ours"  # "ours" (REPA, TwinFlow) | "sit" (willisma/SiT: x_t = t x + (1 - t) eps)
    prediction_type: str = "flow"  # "flow" | "epsilon" | "v_prediction" (diffusion DiT files, via diff2flow)
    gradient_checkpointing: bool = False

    def __post_init__(self):
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads",
                     "num_classes", "data_dim"):
            value, minimum = getattr(self, name), 0 if name in ("num_classes", "data_dim") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"DiTConfig.{name} must be an int >= {minimum}, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by 4 (2-D sin-cos position embedding)")
        if self.data_dim == 0 and self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} must be divisible by patch_size {self.patch_size}")
        if not self.mlp_ratio > 0 or not self.time_scale > 0:
            raise ValueError(f"mlp_ratio and time_scale must be > 0, got {self.mlp_ratio}, {self.time_scale}")
        for name, allowed in (("time_convention", TIME_CONVENTIONS), ("prediction_type", PREDICTION_TYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.prediction_type != "flow" and self.time_convention != "ours":
            raise ValueError("time_convention 'sit' applies to flow models only; diffusion files "
                             f"(prediction_type={self.prediction_type!r}) use time_convention='ours'")


# ------------------------------------------------------------------------------------------- embeddings
def sinusoid_frequencies(half: int, dtype: torch.dtype, device=None) -> Tensor:
    """GLIDE/DiT frequencies exp(-ln(10000) * i / half), i < half (DiT `timestep_embedding`)."""
    return torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=dtype, device=device) / half)  # (half,)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sin-cos embedding (G*G, D) in float64 (MAE/DiT `get_2d_sincos_pos_embed`): the first half of the
    channels encodes the column (DiT's grid[0] of meshgrid(w, h)), the second the row; each half is [sin, cos]."""
    cpu = torch.device("cpu")  # also under a meta-device context: a few KB, copied into the parameter
    omega = 1.0 / POS_EMBED_BASE ** (torch.arange(embed_dim // 4, dtype=torch.float64, device=cpu) / (embed_dim / 4))
    coords = torch.arange(grid_size, dtype=torch.float64, device=cpu)
    row, column = torch.meshgrid(coords, coords, indexing="ij")  # (G, G) each; token index = row * G + column
    halves = []
    for position in (column.reshape(-1), row.reshape(-1)):
        angles = position[:, None] * omega[None]  # (G*G, D/4)
        halves.append(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1))  # (G*G, D/2)
    return torch.cat(halves, dim=1)  # (G*G, D)


class TimestepEmbedder(nn.Module):
    """Scalar network time -> (B, D): sinusoid [cos, sin] of dim 256 then Linear-SiLU-Linear (DiT TimestepEmbedder)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        # Frequencies computed once per (device, dtype). Not a buffer: a buffer would be cast by model.to(bf16)
        # and left uninitialised by meta-device builds + to_empty() + load_state_dict (it is not in the file).
        self._frequency_cache: dict[tuple, Tensor] = {}

    def forward(self, time: Tensor) -> Tensor:
        dtype = torch.promote_types(time.dtype, torch.float32)  # DiT computes the sinusoid in >= float32
        freqs = self._frequency_cache.get((time.device, dtype))  # (128,)
        if freqs is None:
            freqs = sinusoid_frequencies(FREQUENCY_EMBEDDING_SIZE // 2, dtype, time.device)
            self._frequency_cache[(time.device, dtype)] = freqs
        angles = time.to(dtype)[:, None] * freqs[None]  # (B, 128)
        t_freq = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, 256)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (B, D)


class PatchEmbed(nn.Module):
    """Images (B, C, H, W) -> (B, T, D) by a stride-p convolution (timm PatchEmbed as used by DiT);
    vector data (B, data_dim) -> (B, 1, D) by a linear map under the same key name `proj`."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, data_dim: int = 0):
        super().__init__()
        self.proj = (nn.Linear(data_dim, hidden_size) if data_dim else
                     nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return self.proj(x).unsqueeze(1)  # (B, 1, D)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T, D)


# ------------------------------------------------------------------------------------------- transformer
def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift  (DiT `modulate`)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # (B, T, D)


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv (timm Attention, qkv_bias=True) via scaled_dot_product_attention."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        if T == 1:  # one token (vector data): softmax over a single key is 1, attention returns v exactly
            v = functional.linear(x, self.qkv.weight[2 * D:], self.qkv.bias[2 * D:])  # (B, 1, D), q and k unused
            return self.proj(v)  # (B, 1, D)
        qkv = self.qkv(x)  # (B, T, 3D)
        q, k, v = qkv.reshape(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = functional.scaled_dot_product_attention(q, k, v)  # (B, heads, T, D / heads)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT `DiTBlock`)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        mlp_hidden = int(hidden_size * mlp_ratio)  # timm Mlp with DiT's approx_gelu: fc1 -> GELU(tanh) -> fc2
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(hidden_size, mlp_hidden), act=nn.GELU(approximate="tanh"),
                                             fc2=nn.Linear(mlp_hidden, hidden_size)))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, T, D)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, T, D)


class FinalLayer(nn.Module):
    """adaLN then a linear map to patch_size**2 * out_channels per token (DiT `FinalLayer`)."""

    def __init__(self, hidden_size: int, out_features: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.linear = nn.Linear(hidden_size, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, out_features)


# ------------------------------------------------------------------------------------------- model
class DiT(nn.Module):
    """DiT/SiT with TwinFlow conditioning; `model(x_t, t, t_tgt, y)` is the average velocity from t to t_tgt."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        if not isinstance(config, DiTConfig):
            raise TypeError(f"DiT expects a DiTConfig, got {type(config).__name__}; use build_model(name) for presets")
        self.config = config
        D = config.hidden_size
        self.out_channels = (config.data_dim or config.in_channels) * (2 if config.learn_sigma else 1)
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, D, config.data_dim)
        grid_size = 1 if config.data_dim else config.input_size // config.patch_size  # vector data: one token
        patch_area = 1 if config.data_dim else config.patch_size ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size ** 2, D), requires_grad=False)  # fixed sin-cos
        self.t_embedder = TimestepEmbedder(D)
        self.t_tgt_embedder = TimestepEmbedder(D) if config.use_target_time else None
        self.t_sign_embedder = nn.Embedding(2, D) if config.use_time_sign else None
        # DiT LabelEmbedder key `y_embedder.embedding_table`: num_classes + 1 rows, the last = null (CFG) class.
        # No label dropout inside the model: the training loop passes the null id explicitly.
        self.y_embedder = (nn.ModuleDict({"embedding_table": nn.Embedding(config.num_classes + 1, D)})
                           if config.num_classes else None)
        self.blocks = nn.ModuleList(DiTBlock(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.final_layer = FinalLayer(D, patch_area * self.out_channels)
        self.initialize_weights(grid_size)

    def initialize_weights(self, grid_size: int) -> None:
        """DiT `initialize_weights` + TwinFlow: t_tgt MLP ~ N(0, 0.02), sign table zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):  # xavier-uniform linears, zero biases
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.pos_embed.data.copy_(sincos_pos_embed_2d(self.config.hidden_size, grid_size).unsqueeze(0))  # frozen
        weight = self.x_embedder.proj.weight  # patch embed initialised like a linear layer (conv bias: torch default)
        nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=EMBED_INIT_STD)
        for embedder in (self.t_embedder, self.t_tgt_embedder):  # t-MLPs ~ N(0, 0.02), zero biases
            if embedder is not None:
                nn.init.normal_(embedder.mlp[0].weight, std=EMBED_INIT_STD)
                nn.init.normal_(embedder.mlp[2].weight, std=EMBED_INIT_STD)
        if self.t_sign_embedder is not None:
            nn.init.zeros_(self.t_sign_embedder.weight)
        for layer in [block.adaLN_modulation[-1] for block in self.blocks] + [
                self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:  # adaLN-Zero, zero output
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, T, p*p*C) -> (B, C, H, W)  (DiT `unpatchify`)."""
        p, C = self.config.patch_size, self.out_channels
        h = self.config.input_size // p
        x = x.reshape(x.shape[0], h, h, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
        return x.reshape(x.shape[0], C, h * p, h * p)  # (B, C, H, W)

    def forward(self, x_t: Tensor, t: Tensor, t_tgt: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """Average velocity F(x_t, t, t_tgt, y) with the shape of x_t (TwinFlow model contract, reference §1.1).

        t, t_tgt: (B,) signed times in [-1, 1] (negative = fake branch); t_tgt None means t_tgt = t (instantaneous
        velocity). y: (B,) class ids; id num_classes (or y=None) is the null class. An unconditional model takes
        y=None. Without the target-time embedder (use_target_time=False) t_tgt does not reach the network.
        """
        cfg = self.config
        t_tgt = t if t_tgt is None else t_tgt
        y = self._check_inputs(x_t, t, t_tgt, y)
        t_abs, t_tgt_abs = t.abs(), t_tgt.abs()
        model_input = x_t
        if cfg.prediction_type != "flow":  # diffusion DiT file: DDPM timestep and input scale (diff2flow)
            from twinflow_min import diff2flow
            alphas_cumprod = diff2flow.ddpm_alphas_cumprod().to(x_t.device)
            network_t, input_scale = diff2flow.flow_time_to_ddpm(t_abs, alphas_cumprod)  # DDPM units, unscaled
            network_t_tgt = diff2flow.flow_time_to_ddpm(t_tgt_abs, alphas_cumprod)[0]
            model_input = x_t * expand_time(input_scale, x_t)
        elif cfg.time_convention == "sit":  # SiT: x_t = s x + (1 - s) eps with s = 1 - |t|  (checkpoints.md)
            network_t, network_t_tgt = (1 - t_abs) * cfg.time_scale, (1 - t_tgt_abs) * cfg.time_scale
        else:
            network_t, network_t_tgt = t_abs * cfg.time_scale, t_tgt_abs * cfg.time_scale

        # c = t_embedder(|t|) + t_tgt_embedder(|t_tgt|) * (t - t_tgt) + sign(t) + y  (reference §1.3, SD3 variant)
        c = self.t_embedder(network_t)  # (B, D)
        if self.t_tgt_embedder is not None:
            gate = (t - t_tgt).to(c.dtype)[:, None]  # (B, 1), raw units: zero on the diagonal t_tgt = t
            c = c + self.t_tgt_embedder(network_t_tgt) * gate  # (B, D)
        if self.t_sign_embedder is not None:
            c = c + self.t_sign_embedder((t < 0).long())  # (B, D), row 1 = fake branch
        if self.y_embedder is not None:
            c = c + self.y_embedder.embedding_table(y)  # (B, D)

        tokens = self.x_embedder(model_input) + self.pos_embed  # (B, T, D)
        use_checkpointing = cfg.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            tokens = checkpoint(block, tokens, c, use_reentrant=False) if use_checkpointing else block(tokens, c)
        with torch.autocast(x_t.device.type, enabled=False):  # bf16 trunk, float32 head: F leaves in x_t's dtype
            out = self.final_layer(tokens.to(x_t.dtype), c.to(x_t.dtype))  # (B, T, p*p*out_channels)
        out = out[:, 0] if cfg.data_dim else self.unpatchify(out)  # (B, out_channels) | (B, out_channels, H, W)
        if cfg.learn_sigma:
            out = out[:, : self.out_channels // 2]  # keep the mean (first C channels)

        if cfg.prediction_type != "flow":
            return diff2flow.prediction_to_flow_velocity(out, model_input, t_abs, alphas_cumprod, cfg.prediction_type)
        # SiT predicts dx_s/ds = x - eps at s = 1 - |t|, i.e. -(z - x): F(x, t) = -model(x, 1 - t)  (checkpoints.md)
        return -out if cfg.time_convention == "sit" else out

    def _check_inputs(self, x_t: Tensor, t: Tensor, t_tgt: Tensor, y: Tensor | None) -> Tensor | None:
        """Clear errors for foreseeable mistakes; returns y with None replaced by the null class."""
        cfg = self.config
        expected = (cfg.data_dim,) if cfg.data_dim else (cfg.in_channels, cfg.input_size, cfg.input_size)
        if not isinstance(x_t, Tensor) or not x_t.is_floating_point():
            raise TypeError(f"x_t must be a floating-point tensor of shape (B, {', '.join(map(str, expected))})")
        if x_t.dim() != len(expected) + 1 or tuple(x_t.shape[1:]) != expected:
            raise ValueError(f"x_t must have shape (B, {', '.join(map(str, expected))}) for this model, "
                             f"got {tuple(x_t.shape)}")
        weight_dtype = self.final_layer.linear.weight.dtype
        if x_t.dtype != weight_dtype and not torch.is_autocast_enabled(x_t.device.type):
            raise TypeError(f"x_t is {x_t.dtype} but the model weights are {weight_dtype}: cast one of them "
                            f"(model.to(dtype)) or run under torch.autocast")
        for name, value in (("t", t), ("t_tgt", t_tgt)):
            check_time(value, name)
            if value.shape[0] != x_t.shape[0]:
                raise ValueError(f"{name} has {value.shape[0]} entries but x_t has batch size {x_t.shape[0]}")
        if self.y_embedder is None and y is not None:
            raise ValueError("this model is unconditional (num_classes=0): pass y=None")
        if self.y_embedder is None:
            return None
        if y is None:  # conditional model without labels: the null (unconditional) class
            return torch.full((x_t.shape[0],), cfg.num_classes, dtype=torch.long, device=x_t.device)
        if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != (x_t.shape[0],):
            raise ValueError(f"y must be an integer tensor of shape ({x_t.shape[0]},), got "
                             f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > cfg.num_classes):
            raise ValueError(f"class ids must lie in [0, {cfg.num_classes}] (id {cfg.num_classes} = null class), "
                             f"got {int(y.min())}..{int(y.max())}")
        return y


# ------------------------------------------------------------------------------------------- registry
# (hidden_size, depth, num_heads) of DiT Table 1 / SiT; S 33M, B 130M, L 458M, XL 675M parameters at patch 2.
BACKBONE_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
# ImageNet-256 latents; the released DiT/SiT files have learn_sigma=True. Loaders set time_convention /
# prediction_type per file (willisma SiT: "sit"; REPA: "ours", learn_sigma False; DiT: "epsilon").
IMAGENET_LATENT = dict(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
CIFAR10_PIXELS = dict(input_size=32, patch_size=2, in_channels=3, num_classes=10)
MODEL_REGISTRY: dict[str, dict] = {
    **{f"DiT-{size}/{patch}": dict(IMAGENET_LATENT, hidden_size=hidden, depth=depth, num_heads=heads,
                                    patch_size=patch, time_scale=1000.0)
       for size, (hidden, depth, heads) in BACKBONE_SIZES.items() for patch in (2, 4, 8)},
    **{f"SiT-{size}/2": dict(IMAGENET_LATENT, hidden_size=hidden, depth=depth, num_heads=heads,
                             patch_size=2, time_scale=1.0)
       for size, (hidden, depth, heads) in BACKBONE_SIZES.items()},
    "CIFAR-T/2": dict(CIFAR10_PIXELS, hidden_size=64, depth=2, num_heads=2),  # tiny: smoke tests, CPU runs
    "CIFAR-S/2": dict(CIFAR10_PIXELS, hidden_size=256, depth=8, num_heads=4),
    "CIFAR-B/2": dict(CIFAR10_PIXELS, hidden_size=384, depth=12, num_heads=6),
    # 2-D toy: same blocks, one token; sized so `python train.py --toy moons` trains in 1-1.5 minutes on 2 CPU cores
    "toy": dict(data_dim=2, num_classes=0, hidden_size=64, depth=2, num_heads=4, mlp_ratio=2.0),
}


def _make_config(fields: dict, source: str) -> DiTConfig:
    known = {field.name for field in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown DiTConfig field(s) {unknown} in {source}; known fields: {sorted(known)}")
    return DiTConfig(**fields)


def build_model(name: str, **overrides) -> DiT:
    """DiT from a registry preset (`MODEL_REGISTRY`), with DiTConfig fields overridden by keyword."""
    if name not in MODEL_REGISTRY:
        close = difflib.get_close_matches(name, list(MODEL_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(MODEL_REGISTRY)}")
    return DiT(_make_config({**MODEL_REGISTRY[name], **overrides}, f"build_model({name!r}) overrides"))


def config_to_metadata(config: DiTConfig) -> dict[str, str]:
    """{"twinflow_min.model_config": JSON} for safetensors metadata (strings only)."""
    return {METADATA_KEY: json.dumps(dataclasses.asdict(config), sort_keys=True)}


def config_from_metadata(metadata: dict[str, str] | None) -> DiTConfig:
    """Inverse of `config_to_metadata`; fields absent from older files take the DiTConfig defaults."""
    if not metadata or METADATA_KEY not in metadata:
        raise ValueError(f"no {METADATA_KEY!r} entry in the file metadata (keys: {sorted(metadata or {})}); "
                         f"it was not written by twinflow-min: convert it or give the model name explicitly")
    try:
        fields = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        raise ValueError(f"{METADATA_KEY!r} metadata must be a JSON object of DiTConfig fields, got "
                         f"{metadata[METADATA_KEY][:200]!r}")
    return _make_config(fields, "the file metadata")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (including the frozen pos_embed unless trainable_only), as DiT reports them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
