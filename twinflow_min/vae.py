"""The Stable Diffusion VAE *decoder* (latents -> images), written out in plain PyTorch.

TwinFlow (arXiv:2512.05150) Sec. 4 samples ImageNet-256 in the 4x32x32 latent space of
`stabilityai/sd-vae-ft-ema` and decodes with it. This file rebuilds only that decoder, with the
exact state-dict names of diffusers' `AutoencoderKL` (`models/autoencoders/vae.py::Decoder`,
`unets/unet_2d_blocks.py::UNetMidBlock2D` and `UpDecoderBlock2D`, `resnet.py::ResnetBlock2D`,
`upsampling.py::Upsample2D`, `attention_processor.py::Attention`), so
`diffusion_pytorch_model.safetensors` loads strictly. Decode as SiT/REPA `sample.py` do: `image =
decoder(post_quant_conv(latents / 0.18215))`, nominally in [-1, 1]. No time variable appears here.

Older diffusers files name the attention projections `query/key/value/proj_attn` (sometimes as [C,
C, 1, 1] 1x1-conv weights); `from_file` renames and reshapes them. Encoder keys in the file are
counted and ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from twinflow_min.checks import CheckpointError

# `stabilityai/sd-vae-ft-ema` config.json: scaling_factor, block_out_channels, layers_per_block,
# norm_num_groups.
SD_VAE_SCALING_FACTOR = 0.18215
SD_VAE_BLOCK_OUT_CHANNELS = (128, 256, 512, 512)
SD_VAE_LAYERS_PER_BLOCK = 2
SD_VAE_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6  # diffusers Decoder passes resnet_eps=1e-6 and GroupNorm(eps=1e-6) everywhere
UPSAMPLE_FACTOR = 2  # Upsample2D: nearest-neighbour x2, then a 3x3 conv

# Old diffusers attention names -> current ones (diffusers `_convert_deprecated_attention_blocks`).
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
ENCODER_PREFIXES = ("encoder.", "quant_conv.")
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


class VAECheckpointError(CheckpointError):
    """A VAE file that cannot be read as a diffusers-layout SD-VAE decoder."""


@dataclass
class VAEDecoderConfig:
    """Decoder hyper-parameters; the defaults are `stabilityai/sd-vae-ft-ema`."""

    latent_channels: int = 4
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = SD_VAE_BLOCK_OUT_CHANNELS
    layers_per_block: int = SD_VAE_LAYERS_PER_BLOCK
    norm_num_groups: int = SD_VAE_NORM_GROUPS
    scaling_factor: float = SD_VAE_SCALING_FACTOR

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if not self.block_out_channels or bad:
            raise ValueError(
                f"every entry of block_out_channels {self.block_out_channels} must be a positive "
                f"multiple of norm_num_groups={self.norm_num_groups}"
            )


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)


class ResnetBlock(nn.Module):
    """out = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))   (diffusers `ResnetBlock2D`,
    no time input)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)  # (B, C_out, H, W)
        return shortcut + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual (diffusers `Attention`,
    heads = 1)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = _group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList(
            [nn.Linear(channels, channels)]
        )  # key "to_out.0" as in diffusers

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        # softmax(q k^T / sqrt(C)) v, one head of width C
        h = F.scaled_dot_product_attention(self.to_q(h), self.to_k(h), self.to_v(h))  # (B, H*W, C)
        h = (
            self.to_out[0](h).transpose(1, 2).reshape(batch, channels, height, width)
        )  # (B, C, H, W)
        return x + h


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution (diffusers `UNetMidBlock2D`)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)]
        )
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsampler(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (diffusers `Upsample2D(use_conv=True)`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(
            F.interpolate(x, scale_factor=UPSAMPLE_FACTOR, mode="nearest")
        )  # (B, C, 2H, 2W)


class UpBlock(nn.Module):
    """layers_per_block + 1 resnets, then an optional upsampler (diffusers `UpDecoderBlock2D`)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsampler(out_channels)]) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    """conv_in -> mid_block -> up_blocks (widest first) -> GroupNorm -> SiLU -> conv_out (diffusers
    `Decoder`)."""

    def __init__(self, config: VAEDecoderConfig):
        super().__init__()
        widths = list(
            reversed(config.block_out_channels)
        )  # up_blocks run from the widest to the narrowest
        groups = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups)
        self.up_blocks = nn.ModuleList(
            [
                UpBlock(
                    widths[max(i - 1, 0)],
                    widths[i],
                    config.layers_per_block + 1,
                    groups,
                    upsample=i < len(widths) - 1,
                )
                for i in range(len(widths))
            ]
        )
        self.conv_norm_out = _group_norm(widths[-1], groups)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))  # (B, C_max, h, w)
        for up_block in self.up_blocks:
            h = up_block(h)  # spatial size doubles in all but the last block
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, 3, h * 2^(n-1), w * 2^(n-1))


@dataclass
class VAELoadReport:
    """What `SDVAEDecoder.from_file` read: tensors loaded, encoder keys ignored, old attention keys
    renamed."""

    path: str
    loaded: int
    ignored_encoder_keys: int
    renamed_attention_keys: int
    source_dtypes: list[str] = field(default_factory=list)


class SDVAEDecoder(nn.Module):
    """`post_quant_conv` + `decoder` of the SD-VAE; `decode(latents)` returns images in [-1, 1]."""

    def __init__(self, config: VAEDecoderConfig | None = None):
        super().__init__()
        self.config = config if config is not None else VAEDecoderConfig()
        self.post_quant_conv = nn.Conv2d(
            self.config.latent_channels, self.config.latent_channels, 1
        )
        self.decoder = Decoder(self.config)
        self.load_report: VAELoadReport | None = None

    def forward(self, latents: Tensor) -> Tensor:
        return self.decode(latents)

    def decode(self, latents: Tensor, clamp: bool = True) -> Tensor:
        """image = decoder(post_quant_conv(latents / scaling_factor)), clamped to [-1, 1] unless
        clamp=False.

        Mirrors REPA `generate.py` / SiT `sample.py`: `vae.decode(samples / 0.18215).sample`.
        latents: (B, latent_channels, h, w) -> (B, 3, 8h, 8w) for the SD-VAE.
        """
        if (
            not isinstance(latents, Tensor)
            or latents.dim() != 4
            or latents.shape[1] != self.config.latent_channels
        ):
            shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise ValueError(
                f"latents must be (B, {self.config.latent_channels}, h, w), got {shape}"
            )
        weight = self.post_quant_conv.weight
        z = (
            latents.to(device=weight.device, dtype=weight.dtype) / self.config.scaling_factor
        )  # (B, 4, h, w)
        image = self.decoder(self.post_quant_conv(z))  # (B, 3, 8h, 8w)
        return image.clamp(-1, 1) if clamp else image

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        scaling_factor: float = SD_VAE_SCALING_FACTOR,
        norm_num_groups: int = SD_VAE_NORM_GROUPS,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> "SDVAEDecoder":
        """Load the decoder from a diffusers-layout safetensors file (e.g. sd-vae-ft-ema's
        `diffusion_pytorch_model.safetensors`), inferring channels from the shapes.

        Decoder keys are strict: any missing, unexpected or mis-shaped one raises
        `VAECheckpointError` listing them. Encoder keys are ignored and counted in
        `model.load_report`. Weights are cast to `dtype`.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise VAECheckpointError(f"VAE file {path!r} does not exist")
        try:
            with safe_open(path, framework="pt") as handle:
                keys = list(handle.keys())
                file_keys, renamed = _normalise_keys(keys)
                config = _infer_config(file_keys, handle, scaling_factor, norm_num_groups)
                with torch.device("meta"):
                    model = cls(config)
                expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
                _audit_keys(path, file_keys, expected, handle)
                state, dtypes = {}, set()
                for new_key, old_key in file_keys.items():
                    tensor = handle.get_tensor(old_key)
                    dtypes.add(str(tensor.dtype).replace("torch.", ""))
                    state[new_key] = tensor.reshape(expected[new_key]).to(dtype)
        except SafetensorError as error:
            raise VAECheckpointError(
                f"{path!r} is not a readable safetensors file ({error}); convert .ckpt/.bin "
                f"files to safetensors first"
            ) from error
        model = model.to_empty(device=device).to(dtype)
        model.load_state_dict(state, strict=True)
        model.load_report = VAELoadReport(
            path,
            len(state),
            sum(k.startswith(ENCODER_PREFIXES) for k in keys),
            renamed,
            sorted(dtypes),
        )
        return model.eval()


def _normalise_keys(keys: list[str]) -> tuple[dict[str, str], int]:
    """Map current-style decoder key -> key in the file (old attention names renamed); encoder keys
    dropped."""
    if any(k.startswith(("decoder.mid.", "decoder.up.")) for k in keys):
        raise VAECheckpointError(
            "this file uses the original CompVis/LDM key layout (decoder.mid.*, decoder.up.*); "
            "use the diffusers file diffusion_pytorch_model.safetensors of the same VAE"
        )
    mapping, renamed = {}, 0
    for key in keys:
        if key.startswith(ENCODER_PREFIXES):
            continue
        parts = key.split(".")
        if "attentions" in parts and len(parts) >= 2 and parts[-2] in OLD_ATTENTION_NAMES:
            new_key = ".".join(parts[:-2] + [OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
            renamed += 1
        else:
            new_key = key
        mapping[new_key] = key
    return mapping, renamed


def _infer_config(
    file_keys: dict[str, str], handle, scaling_factor: float, norm_num_groups: int
) -> VAEDecoderConfig:
    """Channels from shapes: latent from post_quant_conv, widths from each up block's last conv,
    depth from resnets."""
    required = (
        "post_quant_conv.weight",
        "decoder.conv_out.weight",
        "decoder.up_blocks.0.resnets.0.conv2.weight",
    )
    missing = [k for k in required if k not in file_keys]
    if missing:
        raise VAECheckpointError(f"not an SD-VAE decoder in diffusers layout: missing {missing}")

    def shape(key: str) -> list[int]:
        return list(handle.get_slice(file_keys[key]).get_shape())

    block_indices = {
        int(m.group(1)) for k in file_keys if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))
    }
    resnet_indices = {
        int(m.group(1))
        for k in file_keys
        if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))
    }
    widths = [
        shape(f"decoder.up_blocks.{i}.resnets.0.conv2.weight")[0]
        for i in sorted(block_indices)
        if f"decoder.up_blocks.{i}.resnets.0.conv2.weight" in file_keys
    ]
    if len(widths) != len(block_indices) or sorted(block_indices) != list(
        range(len(block_indices))
    ):
        raise VAECheckpointError(
            f"decoder up blocks {sorted(block_indices)} are incomplete in this file"
        )
    return VAEDecoderConfig(
        latent_channels=shape("post_quant_conv.weight")[0],
        out_channels=shape("decoder.conv_out.weight")[0],
        block_out_channels=tuple(reversed(widths)),
        layers_per_block=len(resnet_indices) - 1,
        norm_num_groups=norm_num_groups,
        scaling_factor=scaling_factor,
    )


def _audit_keys(path: str, file_keys: dict[str, str], expected: dict[str, tuple], handle) -> None:
    """Raise one error listing every missing, unexpected and mis-shaped decoder key."""
    missing = sorted(set(expected) - set(file_keys))
    unexpected = sorted(set(file_keys) - set(expected))
    mismatched = []
    for key in sorted(set(expected) & set(file_keys)):
        found = tuple(handle.get_slice(file_keys[key]).get_shape())
        squeezed = (
            found[:2]
            if len(found) == 4 and found[2:] == (1, 1) and len(expected[key]) == 2
            else found
        )
        if squeezed != expected[key]:
            mismatched.append(f"{file_keys[key]}: expected {expected[key]}, found {found}")
    if missing or unexpected or mismatched:
        raise VAECheckpointError(
            f"{path!r} does not match the SD-VAE decoder layout: "
            f"missing={missing} unexpected={unexpected} shape_mismatch={mismatched}"
        )
