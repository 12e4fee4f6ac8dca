"""Tests for twinflow_min/vae.py: the SD-VAE decoder in diffusers layout.

A tiny random decoder is saved as safetensors in both attention-key styles and compared against an
independent straightforward forward pass written here with functional ops on the raw state dict
(diffusers `Decoder` semantics: GroupNorm(eps 1e-6) -> SiLU -> 3x3 conv resnets, single-head
attention with scale 1/sqrt(C), nearest x2 upsampling). The full-size layout (140 tensors,
49,490,199 parameters, the figures of `stabilityai/sd-vae-ft-ema`'s decoder + post_quant_conv in the
released file) is checked on the meta device.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from twinflow_min.vae import SDVAEDecoder, VAECheckpointError, VAEDecoderConfig

DTYPE = torch.float64
TINY = VAEDecoderConfig(
    latent_channels=4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32
)
EPS = 1e-6
GROUPS = 32


def random_state_dict(config, seed=0):
    """Random weights with the exact diffusers key names (norm scales around 1 so activations stay
    O(1))."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in SDVAEDecoder(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator, dtype=DTYPE)
        is_norm = "norm" in key
        if is_norm and key.endswith("weight"):
            state[key] = 1 + 0.1 * noise
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 10
            state[key] = noise / math.sqrt(fan_in)
    return state


# ---------- independent reference forward ----------
def ref_resnet(sd, p, x):
    h = F.conv2d(
        F.silu(F.group_norm(x, GROUPS, sd[p + "norm1.weight"], sd[p + "norm1.bias"], EPS)),
        sd[p + "conv1.weight"],
        sd[p + "conv1.bias"],
        padding=1,
    )
    h = F.conv2d(
        F.silu(F.group_norm(h, GROUPS, sd[p + "norm2.weight"], sd[p + "norm2.bias"], EPS)),
        sd[p + "conv2.weight"],
        sd[p + "conv2.bias"],
        padding=1,
    )
    if p + "conv_shortcut.weight" in sd:
        x = F.conv2d(x, sd[p + "conv_shortcut.weight"], sd[p + "conv_shortcut.bias"])
    return x + h


def ref_attention(sd, p, x):
    b, c, hgt, wid = x.shape
    h = F.group_norm(x, GROUPS, sd[p + "group_norm.weight"], sd[p + "group_norm.bias"], EPS)
    h = h.reshape(b, c, hgt * wid).permute(0, 2, 1)
    q = h @ sd[p + "to_q.weight"].T + sd[p + "to_q.bias"]
    k = h @ sd[p + "to_k.weight"].T + sd[p + "to_k.bias"]
    v = h @ sd[p + "to_v.weight"].T + sd[p + "to_v.bias"]
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
    out = (weights @ v) @ sd[p + "to_out.0.weight"].T + sd[p + "to_out.0.bias"]
    return x + out.permute(0, 2, 1).reshape(b, c, hgt, wid)


def ref_decode(sd, latents, num_blocks, num_resnets, scaling=0.18215):
    h = F.conv2d(latents / scaling, sd["post_quant_conv.weight"], sd["post_quant_conv.bias"])
    h = F.conv2d(h, sd["decoder.conv_in.weight"], sd["decoder.conv_in.bias"], padding=1)
    h = ref_resnet(sd, "decoder.mid_block.resnets.0.", h)
    h = ref_attention(sd, "decoder.mid_block.attentions.0.", h)
    h = ref_resnet(sd, "decoder.mid_block.resnets.1.", h)
    for i in range(num_blocks):
        for j in range(num_resnets):
            h = ref_resnet(sd, f"decoder.up_blocks.{i}.resnets.{j}.", h)
        if i < num_blocks - 1:
            h = h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest x2
            h = F.conv2d(
                h,
                sd[f"decoder.up_blocks.{i}.upsamplers.0.conv.weight"],
                sd[f"decoder.up_blocks.{i}.upsamplers.0.conv.bias"],
                padding=1,
            )
    h = F.silu(
        F.group_norm(
            h, GROUPS, sd["decoder.conv_norm_out.weight"], sd["decoder.conv_norm_out.bias"], EPS
        )
    )
    return F.conv2d(h, sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"], padding=1)


def to_old_attention_style(state):
    """Rename to query/key/value/proj_attn and store them as [C, C, 1, 1] 1x1-conv weights."""
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in state.items():
        for new, previous in names.items():
            marker = f"attentions.0.{new}."
            if marker in key:
                key = key.replace(marker, f"attentions.0.{previous}.")
                value = value[:, :, None, None] if value.dim() == 2 else value
        old[key] = value
    return old


def with_encoder_keys(state):
    extra = {
        "encoder.conv_in.weight": torch.zeros(32, 3, 3, 3, dtype=DTYPE),
        "encoder.conv_in.bias": torch.zeros(32, dtype=DTYPE),
        "quant_conv.weight": torch.zeros(8, 8, 1, 1, dtype=DTYPE),
    }
    return {**state, **extra}


# ---------- tests ----------
@pytest.mark.parametrize("style", ["current", "old"])
def test_tiny_decoder_matches_reference_forward(tmp_path, style):
    state = random_state_dict(TINY)
    stored = to_old_attention_style(state) if style == "old" else state
    path = tmp_path / "vae.safetensors"
    save_file(with_encoder_keys(stored), str(path))
    model = SDVAEDecoder.from_file(path, norm_num_groups=GROUPS, dtype=DTYPE)

    assert model.config.block_out_channels == (32, 64) and model.config.layers_per_block == 1
    report = model.load_report
    assert report.loaded == len(state) and report.ignored_encoder_keys == 3
    assert report.renamed_attention_keys == (8 if style == "old" else 0)

    latents = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    with torch.no_grad():
        got = model.decode(latents, clamp=False)
    expected = ref_decode(state, latents, num_blocks=2, num_resnets=2)
    assert got.shape == (2, 3, 6, 6)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        clamped = model.decode(latents)
    torch.testing.assert_close(clamped, expected.clamp(-1, 1), rtol=1e-10, atol=1e-10)


def test_full_size_layout_on_meta():
    with torch.device("meta"):
        model = SDVAEDecoder()
    state = model.state_dict()
    assert len(state) == 140
    assert sum(p.numel() for p in model.parameters()) == 49_490_199
    assert state["decoder.conv_in.weight"].shape == (512, 4, 3, 3)
    assert state["decoder.mid_block.attentions.0.to_out.0.weight"].shape == (512, 512)
    assert state["decoder.up_blocks.2.resnets.0.conv_shortcut.weight"].shape == (256, 512, 1, 1)
    assert state["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"].shape == (128, 256, 1, 1)
    assert "decoder.up_blocks.3.upsamplers.0.conv.weight" not in state
    assert "decoder.up_blocks.0.resnets.0.conv_shortcut.weight" not in state
    assert state["decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    # 32x32 latents decode to 256x256 images (three x2 upsamplers)
    assert model.decode(torch.empty(1, 4, 32, 32, device="meta"), clamp=False).shape == (
        1,
        3,
        256,
        256,
    )


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path):
    state = random_state_dict(TINY)
    broken = dict(state)
    del broken["decoder.conv_out.bias"]
    broken["decoder.extra.weight"] = torch.zeros(2, dtype=DTYPE)
    broken["decoder.mid_block.resnets.0.conv1.bias"] = torch.zeros(7, dtype=DTYPE)
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(VAECheckpointError) as error:
        SDVAEDecoder.from_file(path)
    message = str(error.value)
    assert "decoder.conv_out.bias" in message and "decoder.extra.weight" in message
    assert "decoder.mid_block.resnets.0.conv1.bias: expected (64,), found (7,)" in message


def test_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(VAECheckpointError, match="does not exist"):
        SDVAEDecoder.from_file(tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(VAECheckpointError, match="not a readable safetensors"):
        SDVAEDecoder.from_file(garbage)
    ldm = tmp_path / "ldm.safetensors"
    save_file({"decoder.mid.attn_1.q.weight": torch.zeros(2, 2)}, str(ldm))
    with pytest.raises(VAECheckpointError, match="CompVis"):
        SDVAEDecoder.from_file(ldm)
    unet = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, str(unet))
    with pytest.raises(VAECheckpointError, match="post_quant_conv"):
        SDVAEDecoder.from_file(unet)


def test_decode_rejects_wrong_latent_shape():
    model = SDVAEDecoder(TINY)
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        model.decode(torch.zeros(1, 3, 4, 4))


def test_config_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEDecoderConfig(block_out_channels=(48, 64))
