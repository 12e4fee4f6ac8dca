"""DiT / SiT backbone with TwinFlow's time conditioning: F(x_t, t, t_tgt, y).

Paper: TwinFlow (arXiv:2512.05150), Sec. 3 (the any-step model F(x_t, t, t_tgt) and the
negative-time twin branch); backbone: DiT (Peebles & Xie 2023) as in `facebookresearch/DiT
models.py::DiT` and `willisma/SiT models.py::SiT`, with the same state-dict keys so released
DiT/SiT/REPA files load with strict key checks. The TwinFlow additions mirror the official
SD3.5 wrapper (`transformer_sd_3.py`: `temb += time_embed_2(t_tgt) * (t - t_tgt)`, second
embedder N(0, 0.02)) and SimpleTuner's zero-initialised `nn.Embedding(2, D)` time-sign embedding
(the official code has no sign input); see docs/math.md#model-inputs.

Time convention: see twinflow_min/transport.py. `DiT` knows only that convention. Pretrained
files in another one run through thin subclasses that translate at the door, chosen by
`model_from_config`: `SiTTimeFlip` (willisma/SiT, `time_convention="sit"`) and
`DiffusionAsFlow` (DDPM epsilon / v-prediction DiT files, docs/math.md#diffusion-bridge). Their
state-dict keys are those of `DiT`.
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

from twinflow_min import diff2flow
from twinflow_min.checks import is_int, is_real
from twinflow_min.transport import check_time, expand_time

FREQUENCY_EMBEDDING_SIZE = 256  # DiT TimestepEmbedder(frequency_embedding_size=256)
MAX_PERIOD = 10000  # DiT timestep_embedding(max_period=10000), GLIDE's value
POS_EMBED_BASE = 10000.0  # MAE get_1d_sincos_pos_embed_from_grid: omega = 1 / 10000 ** (2i / D)
LAYER_NORM_EPS = 1e-6  # DiT norm1 / norm2 / norm_final
EMBED_INIT_STD = 0.02  # DiT initialize_weights: y table, t-MLP ~ N(0, 0.02); TwinFlow SD3 t_tgt MLP
METADATA_KEY = "twinflow_min.model_config"
TIME_CONVENTIONS = ("ours", "sit")
PREDICTION_TYPES = ("flow", "epsilon", "v_prediction")
SIZE_FIELDS = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads")
COUNT_FIELDS = ("num_classes", "data_dim")  # 0 allowed: unconditional / image data


# ---------- config ----------
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
    num_classes: int = 1000  # 0 = unconditional; else the table has a null row at id num_classes
    learn_sigma: bool = False  # DiT/SiT files: 2C output channels, the first C are kept
    data_dim: int = 0  # > 0: vector data (B, data_dim), one token; patch fields are ignored
    time_scale: float = 1.0  # network time = |t| * time_scale (1.0 SiT/REPA, 1000.0 DiT)
    use_target_time: bool = True  # TwinFlow t_tgt_embedder
    use_time_sign: bool = True  # TwinFlow t_sign_embedder
    time_convention: str = "ours"  # "ours" (REPA, TwinFlow) | "sit" (willisma/SiT, `SiTTimeFlip`)
    prediction_type: str = "flow"  # "flow" | "epsilon" | "v_prediction" (`DiffusionAsFlow`)
    gradient_checkpointing: bool = False

    def __post_init__(self):
        for name in SIZE_FIELDS + COUNT_FIELDS:
            value = getattr(self, name)
            minimum = 0 if name in COUNT_FIELDS else 1
            if not is_int(value) or value < minimum:
                raise ValueError(f"DiTConfig.{name} must be an int >= {minimum}, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.hidden_size % 4:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by 4 "
                f"(2-D sin-cos position embedding)"
            )
        if self.data_dim == 0 and self.input_size % self.patch_size:
            raise ValueError(
                f"input_size {self.input_size} must be divisible by patch_size {self.patch_size}"
            )
        for name in ("mlp_ratio", "time_scale"):
            value = getattr(self, name)
            if not is_real(value) or value <= 0:
                raise ValueError(f"DiTConfig.{name} must be a number > 0, got {value!r}")
        for name, allowed in (
            ("time_convention", TIME_CONVENTIONS),
            ("prediction_type", PREDICTION_TYPES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.prediction_type != "flow" and self.time_convention != "ours":
            raise ValueError(
                f"time_convention 'sit' applies to flow models only; diffusion files "
                f"(prediction_type={self.prediction_type!r}) use "
                f"time_convention='ours'"
            )


# ---------- embeddings ----------
def sinusoid_frequencies(half: int, dtype: torch.dtype, device=None) -> Tensor:
    """GLIDE/DiT frequencies exp(-ln(10000) * i / half), i < half (DiT `timestep_embedding`)."""
    index = torch.arange(half, dtype=dtype, device=device)  # (half,)
    return torch.exp(-math.log(MAX_PERIOD) * index / half)  # (half,)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sin-cos embedding (G*G, D) in float64 (MAE/DiT `get_2d_sincos_pos_embed`).

    The first half of the channels encodes the column (DiT's grid[0] of meshgrid(w, h)), the second
    the row; each half is [sin, cos].
    """
    cpu = torch.device("cpu")  # also under a meta-device context: a few KB, copied into the weight
    exponent = torch.arange(embed_dim // 4, dtype=torch.float64, device=cpu) / (embed_dim / 4)
    omega = 1.0 / POS_EMBED_BASE**exponent  # (D/4,)
    coords = torch.arange(grid_size, dtype=torch.float64, device=cpu)
    row, column = torch.meshgrid(coords, coords, indexing="ij")  # (G, G); token = row * G + column
    halves = []
    for position in (column.reshape(-1), row.reshape(-1)):
        angles = position[:, None] * omega[None]  # (G*G, D/4)
        halves.append(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1))  # (G*G, D/2)
    return torch.cat(halves, dim=1)  # (G*G, D)


class TimestepEmbedder(nn.Module):
    """Network time (B,) -> (B, D): sinusoid [cos, sin] of dim 256, then Linear-SiLU-Linear.

    DiT `TimestepEmbedder`.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        # Frequencies computed once per (device, dtype). Not a buffer: a buffer would be cast by
        # model.to(bf16) and left uninitialised by meta builds + to_empty() + load_state_dict.
        self._frequency_cache: dict[tuple, Tensor] = {}

    def forward(self, time: Tensor) -> Tensor:
        dtype = torch.promote_types(time.dtype, torch.float32)  # DiT: the sinusoid in >= float32
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
        if data_dim:
            self.proj = nn.Linear(data_dim, hidden_size)
        else:
            self.proj = nn.Conv2d(
                in_channels, hidden_size, kernel_size=patch_size, stride=patch_size
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return self.proj(x).unsqueeze(1)  # (B, 1, D)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T, D)


# ---------- transformer ----------
def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift  (DiT `modulate`)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # (B, T, D)


class Attention(nn.Module):
    """Multi-head self-attention, fused qkv (timm Attention, qkv_bias=True), by SDPA."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        if T == 1:  # one token (vector data): softmax over one key is 1, attention returns v
            v = functional.linear(x, self.qkv.weight[2 * D :], self.qkv.bias[2 * D :])  # (B, 1, D)
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
        mlp_hidden = int(hidden_size * mlp_ratio)  # timm Mlp, DiT's approx_gelu: fc1 -> GELU -> fc2
        self.mlp = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(hidden_size, mlp_hidden),
                act=nn.GELU(approximate="tanh"),
                fc2=nn.Linear(mlp_hidden, hidden_size),
            )
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        modulation = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (B, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN then a linear map to patch_size**2 * out_channels per token (DiT `FinalLayer`)."""

    def __init__(self, hidden_size: int, out_features: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.linear = nn.Linear(hidden_size, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, out_features)


# ---------- model ----------
class DiT(nn.Module):
    """DiT/SiT with TwinFlow conditioning: `model(x_t, t, t_tgt, y)` is the average velocity F from
    t to t_tgt in the project's time convention (see twinflow_min/transport.py)."""

    @classmethod
    def runs(cls, config: DiTConfig) -> bool:
        """Whether this class runs `config`'s time convention and prediction type as they are."""
        return config.time_convention == "ours" and config.prediction_type == "flow"

    def __init__(self, config: DiTConfig):
        super().__init__()
        if not isinstance(config, DiTConfig):
            raise TypeError(
                f"DiT expects a DiTConfig, got {type(config).__name__}; "
                f"use build_model(name) for presets"
            )
        if not self.runs(config):
            raise ValueError(
                f"{type(self).__name__} does not run time_convention="
                f"{config.time_convention!r} with prediction_type="
                f"{config.prediction_type!r}; build it with model_from_config(config)"
            )
        self.config = config
        D = config.hidden_size
        channels = config.data_dim or config.in_channels
        self.out_channels = channels * (2 if config.learn_sigma else 1)
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, D, config.data_dim)
        grid_size = 1 if config.data_dim else config.input_size // config.patch_size
        patch_area = 1 if config.data_dim else config.patch_size**2
        tokens = grid_size**2  # vector data: one token
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, D), requires_grad=False)  # fixed
        self.t_embedder = TimestepEmbedder(D)
        self.t_tgt_embedder = TimestepEmbedder(D) if config.use_target_time else None
        self.t_sign_embedder = nn.Embedding(2, D) if config.use_time_sign else None
        # DiT LabelEmbedder key `y_embedder.embedding_table`: num_classes + 1 rows, the last = null.
        # No label dropout inside the model: the training loop passes the null id explicitly.
        self.y_embedder = None
        if config.num_classes:
            table = nn.Embedding(config.num_classes + 1, D)
            self.y_embedder = nn.ModuleDict({"embedding_table": table})
        self.blocks = nn.ModuleList(
            DiTBlock(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(D, patch_area * self.out_channels)
        self.initialize_weights(grid_size)

    def initialize_weights(self, grid_size: int) -> None:
        """DiT `initialize_weights` + TwinFlow: t_tgt MLP ~ N(0, 0.02), sign table zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):  # xavier-uniform linears, zero biases
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        pos_embed = sincos_pos_embed_2d(self.config.hidden_size, grid_size)  # (T, D), frozen
        self.pos_embed.data.copy_(pos_embed.unsqueeze(0))
        weight = self.x_embedder.proj.weight  # initialised like a linear layer (conv bias: default)
        nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=EMBED_INIT_STD)
        for embedder in (self.t_embedder, self.t_tgt_embedder):  # t-MLPs ~ N(0, 0.02), zero biases
            if embedder is None:
                continue
            nn.init.normal_(embedder.mlp[0].weight, std=EMBED_INIT_STD)
            nn.init.normal_(embedder.mlp[2].weight, std=EMBED_INIT_STD)
        if self.t_sign_embedder is not None:
            nn.init.zeros_(self.t_sign_embedder.weight)
        zero_layers = [block.adaLN_modulation[-1] for block in self.blocks]  # adaLN-Zero
        zero_layers += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for layer in zero_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, x_t: Tensor, t: Tensor, t_tgt: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        """Average velocity F(x_t, t, t_tgt, y), shaped like x_t (docs/math.md#model-inputs).

        x_t: (B, C, H, W), or (B, data_dim) for vector data. t, t_tgt: (B,) signed times in [-1, 1]
        (negative = fake branch; convention in twinflow_min/transport.py); t_tgt None means
        t_tgt = t (the instantaneous velocity). y: (B,) class ids; id num_classes, or y None, is the
        null class; an unconditional model takes y None. Raises ValueError / TypeError for shapes,
        dtypes, times or class ids this model cannot take.
        """
        t_tgt = t if t_tgt is None else t_tgt
        y = self.check_inputs(x_t, t, t_tgt, y)  # y None -> the null class
        x = self.x_embedder(x_t) + self.pos_embed  # (B, T, D)
        c = self.condition(t, t_tgt, y)  # (B, D)
        for block in self.blocks:
            x = self.run_block(block, x, c)  # (B, T, D)
        with torch.autocast(x_t.device.type, enabled=False):  # bf16 trunk, head in x_t's dtype
            x = self.final_layer(x.to(x_t.dtype), c.to(x_t.dtype))  # (B, T, p * p * out_channels)
        x = self.unpatchify(x)  # (B, out_channels, H, W) | (B, out_channels)
        return x[:, : x_t.shape[1]]  # learn_sigma: keep the mean, the first C channels

    def network_time(self, t: Tensor) -> Tensor:
        """The time the embedders see: |t| * time_scale (the sign has its own embedding)."""
        return t.abs() * self.config.time_scale  # (B,)

    def condition(self, t: Tensor, t_tgt: Tensor, y: Tensor | None) -> Tensor:
        """c = t_emb(|t|) + t_tgt_emb(|t_tgt|) (t - t_tgt) + sign_emb(t < 0) + y_emb(y), (B, D).

        The gate (t - t_tgt) is in raw units: zero on the diagonal t_tgt = t, where the model is the
        pretrained network (docs/math.md#model-inputs).
        """
        c = self.t_embedder(self.network_time(t))  # (B, D)
        if self.t_tgt_embedder is not None:
            gate = (t - t_tgt).to(c.dtype)[:, None]  # (B, 1)
            c = c + self.t_tgt_embedder(self.network_time(t_tgt)) * gate  # (B, D)
        if self.t_sign_embedder is not None:
            c = c + self.t_sign_embedder((t < 0).long())  # (B, D), row 1 = fake branch
        if self.y_embedder is not None:
            c = c + self.y_embedder.embedding_table(y)  # (B, D)
        return c

    def run_block(self, block: DiTBlock, x: Tensor, c: Tensor) -> Tensor:
        """One block, recomputed in the backward pass when gradient checkpointing is on."""
        recompute = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if recompute:
            return checkpoint(block, x, c, use_reentrant=False)  # (B, T, D)
        return block(x, c)  # (B, T, D)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, T, p*p*C) -> (B, C, H, W)  (DiT `unpatchify`); one token of vector data -> (B, C)."""
        if self.config.data_dim:
            return x[:, 0]  # (B, out_channels)
        p, C = self.config.patch_size, self.out_channels
        h = self.config.input_size // p
        x = x.reshape(x.shape[0], h, h, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
        return x.reshape(x.shape[0], C, h * p, h * p)  # (B, C, H, W)

    def check_inputs(
        self, x_t: Tensor, t: Tensor, t_tgt: Tensor, y: Tensor | None
    ) -> Tensor | None:
        """The door of `forward`: clear errors for foreseeable mistakes; returns y with None
        replaced by the null class (None for an unconditional model)."""
        cfg = self.config
        if cfg.data_dim:
            expected = (cfg.data_dim,)
        else:
            expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        wanted = f"(B, {', '.join(map(str, expected))})"
        if not isinstance(x_t, Tensor) or not x_t.is_floating_point():
            raise TypeError(f"x_t must be a floating-point tensor of shape {wanted}")
        if tuple(x_t.shape[1:]) != expected:
            raise ValueError(f"x_t must have shape {wanted} for this model, got {tuple(x_t.shape)}")
        weight_dtype = self.final_layer.linear.weight.dtype
        same_dtype = x_t.dtype == weight_dtype
        if not same_dtype and not torch.is_autocast_enabled(x_t.device.type):
            raise TypeError(
                f"x_t is {x_t.dtype} but the model weights are {weight_dtype}: "
                f"cast one of them (model.to(dtype)) or run under torch.autocast"
            )
        # Value checks read tensors back to the host: skipped inside torch.compile, where they
        # would split the graph on every call (the training script checks its draws at the door).
        read_values = not torch.compiler.is_compiling()
        for name, value in (("t", t), ("t_tgt", t_tgt)):
            if read_values:
                check_time(value, name)
            if value.shape[0] != x_t.shape[0]:
                raise ValueError(
                    f"{name} has {value.shape[0]} entries but x_t has batch size {x_t.shape[0]}"
                )
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this model is unconditional (num_classes=0): pass y=None")
            return None
        if y is None:  # conditional model without labels: the null (unconditional) class
            return torch.full((x_t.shape[0],), cfg.num_classes, dtype=torch.long, device=x_t.device)
        integer = isinstance(y, Tensor) and y.dtype in (torch.int64, torch.int32)
        if not integer or y.shape != (x_t.shape[0],):
            raise ValueError(
                f"y must be an integer tensor of shape ({x_t.shape[0]},), got "
                f"{getattr(y, 'dtype', type(y).__name__)} "
                f"{tuple(getattr(y, 'shape', ()))}"
            )
        if y.numel() == 0 or not read_values:
            return y
        if int(y.min()) < 0 or int(y.max()) > cfg.num_classes:
            raise ValueError(
                f"class ids must lie in [0, {cfg.num_classes}] "
                f"(id {cfg.num_classes} = null class), "
                f"got {int(y.min())}..{int(y.max())}"
            )
        return y


# ---------- wrappers ----------
class SiTTimeFlip(DiT):
    """A willisma/SiT file in the project's convention: F(x_t, t, t_tgt) = -SiT(x_t, 1 - |t|, ...).

    SiT interpolates x_s = s x + (1 - s) eps and predicts dx_s/ds = x - eps, so its time is
    s = 1 - |t| and its velocity is minus ours (docs/math.md#model-inputs). The gate (t - t_tgt) and
    the sign embedding stay in our units. Same keys as `DiT`.
    """

    @classmethod
    def runs(cls, config: DiTConfig) -> bool:
        return config.time_convention == "sit" and config.prediction_type == "flow"

    def network_time(self, t: Tensor) -> Tensor:
        return (1 - t.abs()) * self.config.time_scale  # SiT time s = 1 - |t|, (B,)

    def forward(
        self, x_t: Tensor, t: Tensor, t_tgt: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        return -super().forward(x_t, t, t_tgt, y)  # SiT's x - eps = -(z - x)


class DiffusionAsFlow(DiT):
    """A DDPM epsilon / v-prediction DiT file as a flow model (docs/math.md#diffusion-bridge).

    The network sees x_ddpm = input_scale(|t|) x_t at the fractional DDPM index of |t|; its output
    becomes our velocity through `diff2flow.prediction_to_flow_velocity`. time_scale is unused (the
    DDPM index is the network time). Same keys as `DiT`.
    """

    @classmethod
    def runs(cls, config: DiTConfig) -> bool:
        return config.prediction_type != "flow"

    def network_time(self, t: Tensor) -> Tensor:
        alphas_cumprod = diff2flow.ddpm_alphas_cumprod().to(t.device)  # (1000,) float64
        return diff2flow.flow_time_to_ddpm(t.abs(), alphas_cumprod)[0]  # DDPM index, (B,)

    def forward(
        self, x_t: Tensor, t: Tensor, t_tgt: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        y = self.check_inputs(x_t, t, t if t_tgt is None else t_tgt, y)  # before any arithmetic
        alphas_cumprod = diff2flow.ddpm_alphas_cumprod().to(x_t.device)  # (1000,) float64
        input_scale = diff2flow.ddpm_input_scale(t.abs())  # (B,)
        x_ddpm = x_t * expand_time(input_scale, x_t)  # (B, C, H, W)
        prediction = super().forward(x_ddpm, t, t_tgt, y)  # epsilon or v, (B, C, H, W)
        prediction_type = self.config.prediction_type
        return diff2flow.prediction_to_flow_velocity(
            prediction, x_ddpm, t.abs(), alphas_cumprod, prediction_type
        )


MODEL_CLASSES = (DiT, SiTTimeFlip, DiffusionAsFlow)


def model_from_config(config: DiTConfig) -> DiT:
    """The model for `config`: `DiT`, or the wrapper that translates the file's time convention /
    prediction type (`SiTTimeFlip`, `DiffusionAsFlow`); all share `DiT`'s state-dict keys."""
    if not isinstance(config, DiTConfig):
        raise TypeError(f"model_from_config expects a DiTConfig, got {type(config).__name__}")
    model_class = next(cls for cls in MODEL_CLASSES if cls.runs(config))
    return model_class(config)


# ---------- metadata ----------
def _make_config(fields: dict, source: str) -> DiTConfig:
    known = {field.name for field in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"unknown DiTConfig field(s) {unknown} in {source}; known fields: {sorted(known)}"
        )
    return DiTConfig(**fields)


def build_model(name: str, **overrides) -> DiT:
    """The model of a registry preset (`MODEL_REGISTRY`), DiTConfig fields overridden by keyword.

    Raises ValueError for an unknown name (with the closest match) or field.
    """
    if name not in MODEL_REGISTRY:
        close = difflib.get_close_matches(name, list(MODEL_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(MODEL_REGISTRY)}")
    fields = {**MODEL_REGISTRY[name], **overrides}
    return model_from_config(_make_config(fields, f"build_model({name!r}) overrides"))


def config_to_metadata(config: DiTConfig) -> dict[str, str]:
    """{"twinflow_min.model_config": JSON} for safetensors metadata (strings only)."""
    return {METADATA_KEY: json.dumps(dataclasses.asdict(config), sort_keys=True)}


def config_from_metadata(metadata: dict[str, str] | None) -> DiTConfig:
    """Inverse of `config_to_metadata`; fields absent from older files take the DiTConfig defaults.

    Raises ValueError when the entry is absent or is not a JSON object of DiTConfig fields.
    """
    if not metadata or METADATA_KEY not in metadata:
        raise ValueError(
            f"no {METADATA_KEY!r} entry in the file metadata (keys: "
            f"{sorted(metadata or {})}); it was not written by twinflow-min: "
            f"convert it or give the model name explicitly"
        )
    try:
        fields = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        raise ValueError(
            f"{METADATA_KEY!r} metadata must be a JSON object of DiTConfig fields, "
            f"got {metadata[METADATA_KEY][:200]!r}"
        )
    return _make_config(fields, "the file metadata")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (the frozen pos_embed included unless trainable_only), as DiT counts."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------- presets ----------
# (hidden_size, depth, num_heads) of DiT Table 1 / SiT; S 33M, B 130M, L 458M, XL 675M params at /2.
BACKBONE_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
# ImageNet-256 latents; the released DiT/SiT files have learn_sigma=True. Loaders set the time
# convention / prediction type per file (willisma SiT: "sit"; REPA: "ours", no sigma; DiT: epsilon).
IMAGENET_LATENT = dict(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
CIFAR10_PIXELS = dict(input_size=32, patch_size=2, in_channels=3, num_classes=10)
DIT_PRESETS = {
    f"DiT-{size}/{patch}": dict(
        IMAGENET_LATENT,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        patch_size=patch,
        time_scale=1000.0,
    )
    for size, (hidden, depth, heads) in BACKBONE_SIZES.items()
    for patch in (2, 4, 8)
}
SIT_PRESETS = {
    f"SiT-{size}/2": dict(
        IMAGENET_LATENT,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        patch_size=2,
        time_scale=1.0,
    )
    for size, (hidden, depth, heads) in BACKBONE_SIZES.items()
}
MODEL_REGISTRY: dict[str, dict] = {
    **DIT_PRESETS,
    **SIT_PRESETS,
    "CIFAR-T/2": dict(CIFAR10_PIXELS, hidden_size=64, depth=2, num_heads=2),  # smoke tests, CPU
    "CIFAR-S/2": dict(CIFAR10_PIXELS, hidden_size=256, depth=8, num_heads=4),
    "CIFAR-B/2": dict(CIFAR10_PIXELS, hidden_size=384, depth=12, num_heads=6),
    # 2-D toy: same blocks, one token; `python train.py --toy moons` takes 1-1.5 min on 2 CPU cores
    "toy": dict(data_dim=2, num_classes=0, hidden_size=64, depth=2, num_heads=4, mlp_ratio=2.0),
}
