"""The FID variant of Inception-v3 (TF "inception-2015-12-05"), returning the 2048-d pool3 features.

Metric: Fréchet Inception Distance (Heusel et al. 2017, arXiv:1706.08500). The CIFAR-10 FID numbers
in the literature use the TensorFlow graph "inception-2015-12-05"; pytorch-fid ships a port of its
weights (`pt_inception-2015-12-05-6726825d.pth`) for torchvision's `Inception3` layout. This file
rebuilds that network without torchvision, mirroring mseitzer/pytorch-fid
`src/pytorch_fid/inception.py::fid_inception_v3` and `InceptionV3.forward` (output block 3), with
torchvision `models/inception.py::Inception3` module names, so the user's weight file loads with
strict key checks. The FID-specific patches of pytorch-fid:
  * `FIDInceptionA/C/E_1`: the pool branch averages with `count_include_pad=False` (TF ignores
    padded zeros);
  * `FIDInceptionE_2` (Mixed_7c): the pool branch uses a max-pool;
  * 1008 output classes (`fc.weight` [1008, 2048]), no auxiliary classifier.
Weights are never downloaded: `load_inception(path)` reads a file the user already has.

Images only (no diffusion time here). Inputs are uint8 in [0, 255] or floats in [-1, 1].
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from twinflow_min.checks import CheckpointError

INPUT_SIZE = (
    299  # Inception-v3 input resolution (pytorch-fid `InceptionV3.forward`, resize_input=True)
)
FEATURE_DIM = 2048  # pool3 width: pytorch-fid BLOCK_INDEX_BY_DIM[2048] = 3 (final average pooling)
NUM_CLASSES = (
    1008  # the TF graph's classifier width (pytorch-fid `fid_inception_v3`, num_classes=1008)
)
BATCH_NORM_EPS = 1e-3  # torchvision `BasicConv2d`: BatchNorm2d(eps=0.001)
UINT8_MAX = 255.0
RANGE_TOLERANCE = (
    1e-4  # float images may overshoot [-1, 1] by this much (round-off) before we refuse them
)


WORKING_FILES = (
    "use pytorch-fid's state dict pt_inception-2015-12-05-6726825d.pth "
    "(or a .safetensors copy of it)"
)


class InceptionWeightsError(CheckpointError):
    """A weight file that is not the FID Inception-v3 state dict (format, keys or shapes)."""


def images_to_unit_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] or float [-1, 1] images (B, C, H, W), C in {1, 3} -> float RGB in [0, 1], (B,
    3, H, W)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        channels_last = images.dim() == 4 and images.shape[-1] in (1, 3)
        hint = " (channels-last? use images.permute(0, 3, 1, 2))" if channels_last else ""
        raise ValueError(
            f"images must have shape (B, 1 or 3, H, W), got {tuple(images.shape)}{hint}"
        )
    if images.dtype == torch.uint8:
        unit = images.float() / UINT8_MAX
    elif images.is_floating_point():
        if images.numel() and (
            images.min() < -1 - RANGE_TOLERANCE or images.max() > 1 + RANGE_TOLERANCE
        ):
            raise ValueError(
                f"float images must lie in [-1, 1], got values from {images.min().item():.4g} to "
                f"{images.max().item():.4g}; clamp them with images.clamp(-1, 1) or pass uint8"
            )
        unit = (images.clamp(-1, 1) + 1) / 2
    else:
        raise TypeError(
            f"images must be uint8 in [0, 255] or float in [-1, 1], got dtype {images.dtype}"
        )
    return (
        unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit
    )  # grey -> RGB, as PIL .convert("RGB")


# ---------- Building blocks (torchvision names: BasicConv2d, InceptionA..E; pytorch-fid patches as
# ---------- a `pool` argument) ----------


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU  (torchvision `inception.py::BasicConv2d`)."""

    def __init__(self, in_channels: int, out_channels: int, **conv_options):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_options)
        self.bn = nn.BatchNorm2d(out_channels, eps=BATCH_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool_3x3(x: Tensor, pool: str) -> Tensor:
    """The pool branch of blocks A/C/E: 3x3, stride 1, pad 1 (pytorch-fid FIDInceptionA/C/E_1 and
    E_2)."""
    if pool == "max":  # FIDInceptionE_2 (Mixed_7c)
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(
        x, kernel_size=3, stride=1, padding=1, count_include_pad=False
    )  # TF average pool


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d (pytorch-fid `FIDInceptionA`). Output channels 224 + pool_features."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_pool_3x3(x, "avg"))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], dim=1)


class InceptionB(nn.Module):
    """Mixed_6a, grid reduction 35 -> 17 (torchvision `InceptionB`, unpatched). Output 384 + 96 +
    in."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], dim=1)


class InceptionC(nn.Module):
    """Mixed_6b..6e, factorised 7x7 convolutions (pytorch-fid `FIDInceptionC`). Output 768."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_pool_3x3(x, "avg"))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], dim=1)


class InceptionD(nn.Module):
    """Mixed_7a, grid reduction 17 -> 8 (torchvision `InceptionD`, unpatched). Output 320 + 192 +
    in."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], dim=1)


class InceptionE(nn.Module):
    """Mixed_7b (pool="avg", `FIDInceptionE_1`) and Mixed_7c (pool="max", `FIDInceptionE_2`). Output
    2048."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' (Mixed_7b) or 'max' (Mixed_7c), got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], dim=1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], dim=1
        )
        branch_pool = self.branch_pool(_pool_3x3(x, self.pool))
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], dim=1)


# ---------- The network ----------


class InceptionV3FID(nn.Module):
    """Inception-v3 as used for FID: images -> pool3 features (B, 2048).

    Module names follow torchvision `Inception3` (no AuxLogits), so pytorch-fid's weight file loads
    with `load_state_dict(..., strict=True)`. `fc` is kept only so that file loads strictly; FID
    never uses it.
    """

    name = "inception-2015-12-05-pool3"  # feature-model name recorded next to cached statistics

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    @staticmethod
    def preprocess(images: Tensor) -> Tensor:
        """uint8 / [-1, 1] images -> the network input (B, 3, 299, 299) in [-1, 1].

        pytorch-fid `InceptionV3.forward`: images in [0, 1], bilinear resize to 299
        (align_corners=False), then `2 * x - 1`.
        """
        unit = images_to_unit_range(images)  # (B, 3, H, W) in [0, 1]
        resized = F.interpolate(
            unit, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
        )
        return 2 * resized - 1  # (B, 3, 299, 299)

    def forward(self, images: Tensor) -> Tensor:
        x = self.preprocess(images).to(self.fc.weight.dtype)  # (B, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)  maxpool1
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)  maxpool2
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (B, 2048)  pool3 = adaptive average pool to 1x1


def inception_state_dict_names(include_batch_counters: bool = True) -> list[str]:
    """The state-dict keys a weight file must hold (BatchNorm `num_batches_tracked` counters are
    optional)."""
    with torch.device("meta"):
        names = list(InceptionV3FID().state_dict().keys())
    return [n for n in names if include_batch_counters or not n.endswith("num_batches_tracked")]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}; pass the path of pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth (or a .safetensors copy)"
        )
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as error:
            raise InceptionWeightsError(
                f"{path} is not a readable safetensors file ({error}); {WORKING_FILES}"
            ) from None
    if path.suffix not in (".pth", ".pt"):
        raise InceptionWeightsError(f"unsupported weight file {path.name!r}: {WORKING_FILES}")
    if _is_torchscript(path):
        raise InceptionWeightsError(
            f"{path} is a TorchScript archive (such as torch-fidelity's or "
            f"clean-fid's inception-2015-12-05.pt), not a state dict; "
            f"{WORKING_FILES}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refusals, truncated zip archives: one line, no traceback
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InceptionWeightsError(
            f"cannot read {path} with weights_only=True ({first_line}); {WORKING_FILES}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InceptionWeightsError(
            f"{path} does not hold a plain state_dict of tensors; {WORKING_FILES}"
        )
    return dict(state)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip whose members include `<name>/constants.pkl` or `code/`."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> InceptionV3FID:
    """Build `InceptionV3FID`, load the user's weights with strict key and shape checks, eval mode,
    no grads.

    Mirrors pytorch-fid `fid_inception_v3` (`inception.load_state_dict(state_dict)`, strict) but
    reads a local
    file: a `.pth` (torch.load, weights_only=True) or a `.safetensors` copy.
    """
    path = Path(path)
    state = _read_state_dict(path)
    with torch.device("meta"):  # no memory, no random init: every tensor comes from the file
        model = InceptionV3FID()
    expected = model.state_dict()  # meta tensors: names and shapes only
    required = set(inception_state_dict_names(include_batch_counters=False))
    missing = sorted(required - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shapes:

        def show(items):
            return ", ".join(items[:10]) + (
                f", ... ({len(items)} in all)" if len(items) > 10 else ""
            )

        raise InceptionWeightsError(
            f"{path} is not the FID Inception-v3 (pt_inception-2015-12-05) layout: missing keys "
            f"[{show(missing)}]; unexpected keys [{show(unexpected)}]; wrong shapes "
            f"[{show(wrong_shapes)}]"
        )
    for name in set(expected) - set(state):  # only optional BatchNorm counters can remain
        state[name] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(state, strict=True, assign=True)  # assign: adopt the file's tensors
    model.name = f"{InceptionV3FID.name}:{path.name}"
    return (
        model.float().to(device).eval().requires_grad_(False)
    )  # float32 even from a half-precision copy
