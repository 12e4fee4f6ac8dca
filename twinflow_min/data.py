"""Training data: 2-D toy distributions, image class folders, pre-encoded latents and a resumable
batch iterator.

Paper: TwinFlow (arXiv:2512.05150), Sec. 4 (experiments). The official TwinFlow code reads MNIST
through torchvision in `tutorials/mnist/` and ImageNet latents in `src/`; nothing here mirrors a
TwinFlow function. The toy samplers are written from the definitions used by FFJORD
`lib/toy_data.py::inf_train_gen` and sklearn `make_moons` / `make_circles` / `make_swiss_roll`;
`ImageBatches` does what DiT `train.py`'s loader does (per-epoch shuffle seeded by (seed, epoch),
random horizontal flip, ToTensor + Normalize(0.5, 0.5) = u / 127.5 - 1) without a DataLoader, so its
position can be saved and restored exactly. CIFAR-10 pickles / binary records are read in
`twinflow_min/cifar.py` (re-exported here).

Time convention of the package: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t
is the fake (twin) branch. This file only produces the data x (t = 0); it never touches t.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import math
import tarfile
import zlib
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor

from twinflow_min.cifar import CIFAR10_CLASSES, UnsafePickleError, is_cifar10, load_cifar10

__all__ = [
    "TOY_DATASETS",
    "sample_toy",
    "toy_mode_centres",
    "toy_mode_std",
    "CIFAR10_CLASSES",
    "UnsafePickleError",
    "load_cifar10",
    "load_image_folder",
    "load_latents",
    "load_dataset",
    "ImageBatches",
    "images_to_uint8",
    "uint8_to_images",
]

# ---------- Toy 2-D distributions (issue #3) ----------

TOY_DATASETS = ("moons", "circles", "8gaussians", "checkerboard", "spirals", "swissroll", "grid25")

# Shapes in raw units, before standardising. Sources: sklearn make_moons / make_circles /
# make_swiss_roll and FFJORD lib/toy_data.py (its "circles" uses factor 0.5, noise 0.08;
# "8gaussians" centres at scale 4, sd 0.5; "checkerboard" 4x4 unit squares on [-2, 2]^2; "2spirals"
# angles sqrt(u) * 540 degrees).
MOONS_NOISE = 0.1  # Gaussian sd added to both moons (issue #3)
CIRCLES_RADII, CIRCLES_NOISE = (1.0, 0.5), 0.08
GAUSSIANS_RADIUS, GAUSSIANS_STD, GAUSSIANS_MODES = 4.0, 0.5, 8
CHECKERBOARD_HALF_WIDTH = 2.0
SPIRAL_MAX_ANGLE, SPIRAL_NOISE = 3 * math.pi, 0.3
SWISSROLL_ANGLES, SWISSROLL_NOISE = (1.5 * math.pi, 4.5 * math.pi), 0.5
# "grid25": 5 x 5 equally likely Gaussians at spacing * {-2, -1, 0, 1, 2}^2, sd 0.1 (10 sd between
# neighbours), the many-mode toy of the mode-coverage experiment (issue 17)
GRID_SIDE, GRID_SPACING, GRID_STD = 5, 1.0, 0.1


def _toy_moments() -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """Exact per-coordinate (mean, std) of each raw distribution, from the closed forms noted per
    line."""
    pi, (b, c), a = math.pi, SWISSROLL_ANGLES, SPIRAL_MAX_ANGLE
    swiss_square = (c * c + c * b + b * b) / 3  # E[theta^2], theta ~ U[b, c]
    return {
        # theta ~ U[0, pi]; half (cos, sin), half (1 - cos, 1/2 - sin): E = (1/2, 1/4), Var = (3/4,
        # 9/16 - 1/pi)
        "moons": (
            (0.5, 0.25),
            (math.sqrt(0.75 + MOONS_NOISE**2), math.sqrt(0.5625 - 1 / pi + MOONS_NOISE**2)),
        ),
        # uniform angle on two circles: E[x^2] = (r1^2 + r2^2) / 4
        "circles": (
            (0.0, 0.0),
            (math.sqrt(sum(r * r for r in CIRCLES_RADII) / 4 + CIRCLES_NOISE**2),) * 2,
        ),
        # 8 equally spaced centres: mean of cos^2 over them is exactly 1/2
        "8gaussians": ((0.0, 0.0), (math.sqrt(GAUSSIANS_RADIUS**2 / 2 + GAUSSIANS_STD**2),) * 2),
        # both marginals are uniform on [-w, w]: Var = w^2 / 3
        "checkerboard": ((0.0, 0.0), (CHECKERBOARD_HALF_WIDTH / math.sqrt(3),) * 2),
        # theta = a sqrt(u) (density 2 theta / a^2), int_0^a theta^3 cos(2 theta) = 3 a^2 / 4 as 2a
        # = 6 pi: E[theta^2 cos^2] = a^2/4 + 3/4, E[theta^2 sin^2] = a^2/4 - 3/4
        "spirals": (
            (0.0, 0.0),
            (
                math.sqrt(a * a / 4 + 0.75 + SPIRAL_NOISE**2),
                math.sqrt(a * a / 4 - 0.75 + SPIRAL_NOISE**2),
            ),
        ),
        # theta ~ U[3pi/2, 9pi/2]: E[theta cos] = 2, E[theta sin] = 2 / (3 pi),
        # E[theta^2 cos^2] = E[theta^2] / 2 - 1/4 and E[theta^2 sin^2] = E[theta^2] / 2 + 1/4
        "swissroll": (
            (2.0, 2 / (3 * pi)),
            (
                math.sqrt(swiss_square / 2 - 0.25 - 2.0**2 + SWISSROLL_NOISE**2),
                math.sqrt(swiss_square / 2 + 0.25 - (2 / (3 * pi)) ** 2 + SWISSROLL_NOISE**2),
            ),
        ),
        # centre coordinate uniform on spacing * {-(m-1)/2, ..., (m-1)/2}: Var = spacing^2 (m^2 - 1)
        # / 12
        "grid25": (
            (0.0, 0.0),
            (math.sqrt(GRID_SPACING**2 * (GRID_SIDE**2 - 1) / 12 + GRID_STD**2),) * 2,
        ),
    }


TOY_MOMENTS = _toy_moments()  # the fixed affine map of every call: (raw - mean) / std


def _raw_toy(name: str, n: int, generator: torch.Generator) -> Tensor:
    """n raw float64 points (n, 2) of `name`, every random number drawn from `generator`."""

    def uniform() -> Tensor:
        return torch.rand(n, generator=generator, dtype=torch.float64)  # (n,)

    def noise(sd: float) -> Tensor:
        return sd * torch.randn(n, 2, generator=generator, dtype=torch.float64)  # (n, 2)

    if name == "moons":  # sklearn make_moons: outer (cos, sin), inner (1 - cos, 1/2 - sin)
        outer, theta = uniform() < 0.5, math.pi * uniform()  # (n,), (n,)
        upper = torch.stack([theta.cos(), theta.sin()], 1)  # (n, 2)
        lower = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1)  # (n, 2)
        return torch.where(outer[:, None], upper, lower) + noise(MOONS_NOISE)
    if name == "circles":  # sklearn make_circles(factor=0.5): two concentric circles
        radius = torch.where(uniform() < 0.5, CIRCLES_RADII[0], CIRCLES_RADII[1]).double()  # (n,)
        theta = 2 * math.pi * uniform()  # (n,)
        return radius[:, None] * torch.stack([theta.cos(), theta.sin()], 1) + noise(CIRCLES_NOISE)
    if name == "8gaussians":  # centres R (cos, sin)(2 pi k / 8)
        theta = torch.randint(GAUSSIANS_MODES, (n,), generator=generator).double() * (
            2 * math.pi / GAUSSIANS_MODES
        )
        return GAUSSIANS_RADIUS * torch.stack([theta.cos(), theta.sin()], 1) + noise(GAUSSIANS_STD)
    if name == "checkerboard":  # 4 x 4 unit squares, uniform on those with floor(x) + floor(y) even
        x = CHECKERBOARD_HALF_WIDTH * (2 * uniform() - 1)  # (n,)
        pair = torch.randint(
            2, (n,), generator=generator
        ).double()  # which of the column's 2 black squares
        row = 2 * pair - CHECKERBOARD_HALF_WIDTH + torch.remainder(torch.floor(x), 2)  # (n,)
        return torch.stack([x, row + uniform()], 1)
    if name == "spirals":  # two arms r = theta, the second rotated by pi (FFJORD "2spirals")
        theta = SPIRAL_MAX_ANGLE * uniform().sqrt()  # (n,)
        arm = torch.where(uniform() < 0.5, 1.0, -1.0).double()[:, None]  # (n, 1)
        return arm * torch.stack([-theta * theta.cos(), theta * theta.sin()], 1) + noise(
            SPIRAL_NOISE
        )
    if name == "swissroll":  # sklearn make_swiss_roll, (x, z) plane: r = theta
        theta = (
            SWISSROLL_ANGLES[0] + (SWISSROLL_ANGLES[1] - SWISSROLL_ANGLES[0]) * uniform()
        )  # (n,)
        return theta[:, None] * torch.stack([theta.cos(), theta.sin()], 1) + noise(SWISSROLL_NOISE)
    if name == "grid25":  # mode k = 5 row + column, each of the 25 equally likely
        mode = torch.randint(GRID_SIDE**2, (n,), generator=generator)  # (n,)
        return _raw_mode_centres(name)[mode] + noise(GRID_STD)
    raise AssertionError(name)


def _raw_mode_centres(name: str) -> Tensor:
    """The K mode centres (K, 2) float64 of a many-mode toy, in raw units (before standardising)."""
    if name == "8gaussians":  # R (cos, sin)(2 pi k / 8), k = 0..7
        theta = torch.arange(GAUSSIANS_MODES, dtype=torch.float64) * (2 * math.pi / GAUSSIANS_MODES)
        return GAUSSIANS_RADIUS * torch.stack([theta.cos(), theta.sin()], 1)  # (8, 2)
    ticks = GRID_SPACING * (torch.arange(GRID_SIDE, dtype=torch.float64) - (GRID_SIDE - 1) / 2)
    row, column = torch.meshgrid(ticks, ticks, indexing="ij")  # (5, 5) each
    return torch.stack([column.reshape(-1), row.reshape(-1)], 1)  # (25, 2), mode k = 5 row + column


MODE_TOYS = ("8gaussians", "grid25")  # the toys made of discrete Gaussian modes


def sample_toy(name: str, n: int, generator: torch.Generator) -> Tensor:
    """n points (n, 2) float32 from the toy distribution `name`, standardised by the fixed
    `TOY_MOMENTS`.

    Every random number comes from `generator`, which must be a CPU `torch.Generator` (move the
    result with `.to(device)`); the same generator state gives the same points. Definitions: see the
    constants above.
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {', '.join(TOY_DATASETS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(
            "generator must be a CPU torch.Generator, e.g. torch.Generator().manual_seed(0)"
        )
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in TOY_MOMENTS[name])
    return ((_raw_toy(name, n, generator) - mean) / std).float()  # (n, 2)


def _check_mode_toy(name: str) -> None:
    if name not in MODE_TOYS:
        raise ValueError(
            f"toy {name!r} has no discrete modes; mode centres exist for {', '.join(MODE_TOYS)}"
        )


def toy_mode_centres(name: str) -> Tensor:
    """The mode centres (K, 2) float32 of a many-mode toy, in the standardised units of
    `sample_toy`.

    K = 8 for "8gaussians" (angle 2 pi k / 8, k = 0..7), K = 25 for "grid25" (mode k = 5 row +
    column, row and column counted from the most negative coordinate; x follows the column). Every
    mode has weight 1 / K and per-coordinate sd `toy_mode_std(name)`. Raises ValueError for the
    other toys.
    """
    _check_mode_toy(name)
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in TOY_MOMENTS[name])
    return ((_raw_mode_centres(name) - mean) / std).float()  # (K, 2)


def toy_mode_std(name: str) -> tuple[float, float]:
    """Per-coordinate sd (x, y) of each Gaussian mode of `name`, in the units of `toy_mode_centres`.

    Raises ValueError for toys without discrete modes.
    """
    _check_mode_toy(name)
    sd = GAUSSIANS_STD if name == "8gaussians" else GRID_STD
    return tuple(sd / s for s in TOY_MOMENTS[name][1])


# ---------- Image class folders (issue #5) ----------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _is_image(parts: tuple[str, ...]) -> bool:
    """An image file name, outside hidden folders (".git", "._x.jpg", "__MACOSX")."""
    return parts[-1].lower().endswith(IMAGE_SUFFIXES) and not any(
        p.startswith(".") or p == "__MACOSX" for p in parts
    )


def _decode_rgb(payload: bytes, name: str) -> np.ndarray:
    """One encoded PNG/JPEG -> uint8 (H, W, 3) RGB."""
    try:
        with Image.open(io.BytesIO(payload), formats=("PNG", "JPEG")) as image:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # (H, W, 3)
    except OSError as error:
        raise ValueError(f"cannot decode image {name}: {error}") from error


def _select(keys: list[tuple[str, ...]], max_images: int | None, where: str):
    """Sorted chosen keys, their labels and the class names, for keys = path parts
    root/.../<class>/<file>."""
    if not keys:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images found in {where}")
    if min(len(k) for k in keys) < 2:
        loose = next(k for k in keys if len(k) < 2)
        raise ValueError(
            f"{where}: image {loose[0]} is not inside a class folder; lay images out as "
            f"<root>/<class name>/<image>"
        )
    roots = sorted({k[:-2] for k in keys}, key=len)
    if len(roots) > 1:  # the class level must be one directory level for every image
        raise ValueError(
            f"{where}: images sit at different depths (under {'/'.join(roots[0]) or '.'} and "
            f"{'/'.join(roots[-1])}); keep one <root>/<class>/<image> layout"
        )
    class_names = sorted({k[-2] for k in keys})
    label_of = {name: label for label, name in enumerate(class_names)}
    keys = sorted(keys)
    if (
        max_images is not None
    ):  # round robin over classes: image 0 of every class, then image 1, ...
        seen: dict[str, int] = defaultdict(int)
        rank = {}
        for key in keys:
            rank[key], seen[key[-2]] = (seen[key[-2]], label_of[key[-2]]), seen[key[-2]] + 1
        keys = sorted(sorted(keys, key=rank.__getitem__)[:max_images])
    labels = np.array([label_of[k[-2]] for k in keys], dtype=np.int64)  # (N,)
    return keys, labels, class_names


def load_image_folder(
    path, *, max_images: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 (N, 3, H, W), int64 labels (N,), class names) from `<root>/<class>/*.png|jpg|jpeg`.

    `path` is a folder or a .tar / .tar.gz; the class level is found automatically (the directory
    level whose children hold the images, e.g. `cifar10-jpeg/train/<class>/0001.jpg`). Classes are
    sorted by name, images by (class, file name) and converted to RGB; all must share one size.
    `max_images` keeps that many images, taken round robin over the classes so a small subset still
    covers every class. Mirrors torchvision `ImageFolder` (sorted class names -> label index)
    without torchvision.
    """
    path = Path(path)
    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1
    ):
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
    if path.is_dir():
        files = {p.relative_to(path).parts: p for p in path.rglob("*") if p.is_file()}
        keys, labels, class_names = _select(
            [k for k in files if _is_image(k)], max_images, str(path)
        )
        payloads = (files[key].read_bytes() for key in keys)
    elif path.is_file() and tarfile.is_tarfile(path):
        stored = _read_archive_images(path)
        keys, labels, class_names = _select(list(stored), max_images, str(path))
        payloads = (stored.pop(key) for key in keys)
    else:
        raise FileNotFoundError(
            f"image folder {path} is neither a folder nor a .tar/.tar.gz archive"
        )
    return _decode_all(payloads, keys, path), labels, class_names


ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)  # cut or damaged archives


COMPRESSED_OPENERS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


def _open_decompressed(path: Path):
    """A binary stream of the tar bytes of a .tar / .tar.gz / .tar.bz2 / .tar.xz file.

    The compression modules raise EOFError on a cut stream, where tarfile's own stream mode stops
    silently after the last whole member.
    """
    with open(path, "rb") as handle:
        magic = handle.read(6)
    for prefix, opener in COMPRESSED_OPENERS:
        if magic.startswith(prefix):
            return opener(path, "rb")
    return open(path, "rb")


def _read_archive_images(path: Path) -> dict[tuple[str, ...], bytes]:
    """Encoded images of a .tar / .tar.gz by member path parts, in one sequential pass (no seeks in
    the compressed stream). A truncated or damaged archive raises one ValueError line."""
    stored: dict[tuple[str, ...], bytes] = {}
    try:
        with _open_decompressed(path) as raw, tarfile.open(fileobj=raw, mode="r|") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if member.isfile() and _is_image(parts):
                    stored[parts] = archive.extractfile(member).read()
            raw.read()  # to the end: a cut compressed stream raises EOFError here at the latest
    except ARCHIVE_ERRORS as error:
        raise ValueError(
            f"{path} is a truncated or damaged archive ({type(error).__name__}: "
            f"{error}); download or pack it again"
        ) from None
    return stored


def _decode_all(payloads, keys: list[tuple[str, ...]], where: Path) -> np.ndarray:
    """Decode the encoded images of `keys` (in order) into one uint8 (N, 3, H, W) array of a common
    size."""
    images = None
    for index, payload in enumerate(payloads):
        name = f"{where}/{'/'.join(keys[index])}"
        rgb = _decode_rgb(payload, name)  # (H, W, 3)
        if images is None:
            images, first = np.empty((len(keys), 3, *rgb.shape[:2]), dtype=np.uint8), name
        elif rgb.shape[:2] != images.shape[2:]:
            raise ValueError(
                f"all images must share one size: {name} is {rgb.shape[1]}x{rgb.shape[0]} but "
                f"{first} is {images.shape[3]}x{images.shape[2]} (W x H); resize them first"
            )
        images[index] = rgb.transpose(2, 0, 1)  # (3, H, W)
    return images  # (N, 3, H, W)


# ---------- Pre-encoded latents and the dataset switch (issue #5) ----------


def load_latents(path) -> tuple[Tensor, Tensor]:
    """(latents float32 (N, C, H, W), labels int64 (N,)) from .safetensors / .npz (keys "latents",
    "labels") or a .npy of latents with a sibling labels.npy. Float data is kept as is: no scaling,
    no flip."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latents file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        arrays = load_file(str(path))
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    elif suffix == ".npy":
        labels_path = path.with_name("labels.npy")
        if not labels_path.is_file():
            raise FileNotFoundError(
                f"{path} holds only latents: put the class labels next to it as {labels_path}"
            )
        arrays = {
            "latents": np.load(path, allow_pickle=False),
            "labels": np.load(labels_path, allow_pickle=False),
        }
    else:
        raise ValueError(
            f"latents file {path} must be .safetensors or .npz (keys 'latents', 'labels') or a "
            ".npy "
            f"with a sibling labels.npy"
        )
    missing = [key for key in ("latents", "labels") if key not in arrays]
    if missing:
        raise ValueError(
            f"{path} lacks {missing}: it has keys {sorted(arrays)}; expected 'latents' (N, C, H, "
            "W) "
            f"and 'labels' (N,)"
        )
    latents, labels = torch.as_tensor(arrays["latents"]), torch.as_tensor(arrays["labels"])
    if latents.is_floating_point() and not bool(torch.isfinite(latents).all()):
        bad = int((~torch.isfinite(latents)).flatten(1).any(1).sum()) if latents.dim() > 1 else 1
        raise ValueError(
            f"{path}: {bad} latent(s) hold NaN or inf values; re-encode them (a VAE run "
            f"in float16 can overflow) or drop those rows"
        )
    if latents.dim() != 4 or not latents.is_floating_point():
        raise ValueError(
            f"{path}: latents must be a float (N, C, H, W) array, got {latents.dtype} "
            f"{tuple(latents.shape)}"
        )
    if (
        labels.dim() != 1
        or labels.is_floating_point()
        or labels.dtype == torch.bool
        or len(labels) != len(latents)
    ):
        raise ValueError(
            f"{path}: labels must be integers of shape ({len(latents)},), got {labels.dtype} "
            f"{tuple(labels.shape)}"
        )
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"{path}: labels must be >= 0, found {int(labels.min())}")
    return latents.float().contiguous(), labels.long()  # (N, C, H, W), (N,)


def load_dataset(spec: str, data_path=None, *, check_md5: bool = True):
    """(data, labels, class names) for a dataset spec.

    "cifar10"      data_path = any CIFAR-10 form of `load_cifar10` (train split, md5 checked unless
                   check_md5=False), or a class folder / archive (e.g. the CIFAR-10 JPEG archives)
    "folder"       data_path = a class folder / archive (`load_image_folder`)
    "latents:PATH" (or "latents" with data_path) -> `load_latents`; class names are None Images come
    back as numpy uint8 (N, 3, H, W) + int64 labels, latents as torch float32 + int64 tensors.
    """
    if spec == "latents" or spec.startswith("latents:"):
        path = spec.split(":", 1)[1] if ":" in spec else data_path
        if not path:
            raise ValueError("latents need a file: use 'latents:PATH' or pass data_path")
        return (*load_latents(path), None)
    if spec in ("cifar10", "folder"):
        if data_path is None or not Path(data_path).exists():
            raise FileNotFoundError(
                f"dataset {spec!r} needs an existing data path (e.g. --data "
                f"cifar-10-python.tar.gz or a <root>/<class>/<image> folder / archive), "
                f"got {data_path!r}"
            )
        if spec == "cifar10" and is_cifar10(data_path):
            return (*load_cifar10(data_path, check_md5=check_md5), list(CIFAR10_CLASSES))
        return load_image_folder(data_path)
    raise ValueError(
        f"unknown dataset {spec!r}; use 'cifar10', 'folder' or 'latents:PATH' (toy data: "
        f"sample_toy with one of {', '.join(TOY_DATASETS)})"
    )


# ---------- uint8 <-> [-1, 1] and the resumable batch iterator (issue #6) ----------


def uint8_to_images(u8, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 [0, 255] -> float in [-1, 1]: u / 127.5 - 1 (DiT's ToTensor + Normalize(0.5, 0.5))."""
    u8 = torch.as_tensor(u8)
    if u8.dtype != torch.uint8:
        raise TypeError(f"uint8_to_images expects uint8 data, got {u8.dtype}")
    return u8.to(dtype) / 127.5 - 1


def images_to_uint8(x) -> Tensor:
    """Float images in [-1, 1] -> uint8: round(127.5 (x + 1)) clamped to [0, 255]; inverts
    uint8_to_images."""
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise TypeError(f"images_to_uint8 expects float images in [-1, 1], got {x.dtype}")
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for (seed, epoch): distinct pairs give unrelated streams."""
    digest = hashlib.sha256(f"twinflow-min/ImageBatches/{seed}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class ImageBatches:
    """Infinite, exactly resumable batches (x (B, C, H, W) float32 on `device`, y int64 (B,) or
    None).

    Dtype rule: uint8 data are images -> x = u / 127.5 - 1 in [-1, 1], flipped by default; float
    data (latents) are returned as float32 unchanged and not flipped unless `flip=True`. Each epoch
    draws a permutation and then a flip mask from a CPU generator seeded by (seed, epoch), so the
    state {"epoch", "position", "seed"} fixes every future batch. The last N % batch_size samples of
    each epoch's permutation are dropped (a different subset each epoch). The data stay on the CPU;
    each batch is moved to `device`.
    """

    def __init__(
        self,
        images_uint8,
        labels,
        batch_size: int,
        *,
        seed: int,
        flip: bool | None = None,
        device="cpu",
    ):
        if isinstance(images_uint8, np.ndarray) and not images_uint8.flags.writeable:
            images_uint8 = images_uint8.copy()
        self.data = torch.as_tensor(
            images_uint8
        ).cpu()  # (N, C, H, W), shares memory with a numpy input
        if self.data.dim() != 4:
            raise ValueError(f"data must be (N, C, H, W), got shape {tuple(self.data.shape)}")
        if self.data.dtype != torch.uint8 and not self.data.is_floating_point():
            raise TypeError(f"data must be uint8 images or float latents, got {self.data.dtype}")
        if labels is not None and not isinstance(labels, Tensor):
            labels = torch.as_tensor(np.array(labels))
        self.labels = None if labels is None else labels.cpu().long()  # (N,)
        if self.labels is not None and self.labels.shape != (len(self.data),):
            raise ValueError(
                f"labels must have shape ({len(self.data)},), got {tuple(self.labels.shape)}"
            )
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or not 1 <= batch_size <= len(self.data)
        ):
            raise ValueError(
                f"batch_size must be an int in [1, {len(self.data)}] (the dataset size), "
                f"got {batch_size!r}"
            )
        self.batch_size, self.seed, self.device = batch_size, int(seed), torch.device(device)
        self.is_uint8 = self.data.dtype == torch.uint8
        self.flip = self.is_uint8 if flip is None else bool(flip)
        self.epoch, self.position = 0, 0
        self._order: tuple[int, int, Tensor, Tensor] | None = (
            None  # (seed, epoch, permutation, flip mask)
        )

    @property
    def batches_per_epoch(self) -> int:
        return len(self.data) // self.batch_size

    def _epoch_order(self) -> tuple[Tensor, Tensor]:
        if self._order is None or self._order[:2] != (self.seed, self.epoch):
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
            permutation = torch.randperm(len(self.data), generator=generator)  # (N,)
            flip_mask = (
                torch.rand(len(self.data), generator=generator) < 0.5
            )  # (N,) drawn even when flip=False
            self._order = (self.seed, self.epoch, permutation, flip_mask)
        return self._order[2], self._order[3]

    def __iter__(self) -> "ImageBatches":
        return self

    def __next__(self) -> tuple[Tensor, Tensor | None]:
        if self.position + self.batch_size > len(
            self.data
        ):  # drop the partial batch, start a new epoch
            self.epoch, self.position = self.epoch + 1, 0
        permutation, flip_mask = self._epoch_order()
        window = slice(self.position, self.position + self.batch_size)
        index = permutation[window]  # (B,)
        x = self.data[index]  # (B, C, H, W)
        if self.flip:  # horizontal flip = reverse the width axis
            x = torch.where(flip_mask[window][:, None, None, None], x.flip(-1), x)  # (B, C, H, W)
        x = x.to(self.device)
        x = uint8_to_images(x) if self.is_uint8 else x.float()  # (B, C, H, W)
        y = None if self.labels is None else self.labels[index].to(self.device)  # (B,)
        self.position += self.batch_size
        return x, y

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved stream (its seed replaces the constructor's)."""
        missing = {"epoch", "position", "seed"} - set(state)
        if missing:
            raise ValueError(
                f"ImageBatches state lacks {sorted(missing)}; expected keys epoch, position, seed"
            )
        epoch, position, seed = (int(state[key]) for key in ("epoch", "position", "seed"))
        if epoch < 0 or not 0 <= position <= len(self.data):
            raise ValueError(
                f"ImageBatches state out of range: epoch {epoch}, position {position} for "
                f"{len(self.data)} samples (was it saved for another dataset?)"
            )
        self.epoch, self.position, self.seed = epoch, position, seed
