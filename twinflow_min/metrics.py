"""Sample-quality metrics: energy distance (toy), Fréchet distance, FID, and proxies when no
Inception is given.

Paper: TwinFlow (arXiv:2512.05150) reports few-step sample quality (1/2/4 NFE vs multi-step, Sec.
4); this project measures it with
  * the energy distance (Székely & Rizzo 2013, "Energy statistics") between toy samples and fresh
    data;
  * the Fréchet distance between Gaussians fitted to features (Heusel et al. 2017,
    arXiv:1706.08500), mirroring pytorch-fid `fid_score.py::calculate_frechet_distance` /
    `calculate_activation_statistics`, with the matrix square roots taken by `eigh` and the trace
    term by an SVD, numpy only (no scipy);
  * FID = that distance on Inception pool3 features (`inception.py`), samples quantised to uint8
    first, as DiT `sample_ddp.py` does before saving PNGs;
  * without Inception weights, proxies under their own names (never "FID"): the Fréchet distance on
    fixed random conv features (`fd_random_features`) and the mean squared gap between 1-NFE and
    50-step samples from the same noise (`gap_1nfe_vs_50step_mse`).
Metrics see finished samples only; no diffusion time enters this file.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from twinflow_min.inception import InceptionV3FID, images_to_unit_range

PAIRWISE_CHUNK_ELEMENTS = (
    2**22
)  # pairwise distances held at once by energy_distance (32 MiB of float64)
FID_NUM_SAMPLES = (
    50_000  # "FID-50k": the standard CIFAR-10 protocol (pytorch-fid, DiT/EDM evaluations)
)
RANDOM_FEATURE_SEED = 0  # fixed seed of the proxy feature net (brief H5)
RANDOM_FEATURE_CHANNELS = (
    32,
    64,
    128,
    256,
)  # widths of its conv stages; features = last width (256)
# Keys of metric dicts, named so a proxy can never be mistaken for FID.
FID_KEY = "fid"
PROXY_FD_KEY = "fd_random_features"
GAP_KEY = "gap_1nfe_vs_50step_mse"


# ---------- Energy distance (toy) ----------


def _as_float64_points(points, name: str) -> Tensor:
    """(N, D) tensor or array -> float64 CPU tensor, with a clear error for anything else."""
    if isinstance(points, np.ndarray):
        points = torch.from_numpy(points)
    if not isinstance(points, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy array of shape (N, D), got "
            f"{type(points).__name__}"
        )
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (N, D) with N >= 1, got {tuple(points.shape)}; "
            f"flatten samples with x.reshape(len(x), -1)"
        )
    points = points.detach().to("cpu", torch.float64)
    if not torch.isfinite(points).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return points


def _mean_pairwise_distance(a: Tensor, b: Tensor, chunk_rows: int) -> float:
    """E|X - Y| over all N_a * N_b pairs, summed one block of rows of `a` at a time."""
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, a.shape[0], chunk_rows):
        # exact differences (no |a|^2 + |b|^2 - 2ab expansion), so identical points are at distance
        # exactly 0
        distances = torch.cdist(
            a[start : start + chunk_rows], b, compute_mode="donot_use_mm_for_euclid_dist"
        )
        total += distances.sum()  # distances: (chunk, N_b)
    return total.item() / (a.shape[0] * b.shape[0])


def energy_distance(a, b, *, chunk_rows: int | None = None) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between the empirical distributions of a
    and b.

    Székely & Rizzo (2013), V-statistic form: every pair counts, including each point with itself,
    so the value is >= 0 (up to float64 round-off) and exactly 0 for identical sets. a: (N, D), b:
    (M, D) tensors or arrays; computed in float64 in row chunks (`chunk_rows`, default:
    PAIRWISE_CHUNK_ELEMENTS / max(N, M)) so 20000 x 20000 fits in memory.
    """
    a, b = _as_float64_points(a, "a"), _as_float64_points(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have the same dimension D, got {a.shape[1]} and {b.shape[1]}"
        )
    if chunk_rows is None:
        chunk_rows = max(1, PAIRWISE_CHUNK_ELEMENTS // max(a.shape[0], b.shape[0]))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    cross = _mean_pairwise_distance(a, b, chunk_rows)  # E|X - Y|
    within_a = _mean_pairwise_distance(a, a, chunk_rows)  # E|X - X'|
    within_b = _mean_pairwise_distance(b, b, chunk_rows)  # E|Y - Y'|
    return 2 * cross - within_a - within_b


# ---------- Fréchet distance between Gaussians ----------


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """sqrt(S) = V diag(sqrt(w)) V^T from S = V diag(w) V^T (eigh); round-off negatives in w are
    clipped to 0."""
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T  # (D, D)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(sqrt(S1) S2 sqrt(S1))  (Heusel et al. 2017,
        Eq. 6).

    pytorch-fid `calculate_frechet_distance` takes `scipy.linalg.sqrtm(S1 @ S2)`; tr sqrt(S1 S2)
    equals tr sqrt(sqrt(S1) S2 sqrt(S1)) (AB and BA share eigenvalues), numpy only. With A =
    sqrt(S2) sqrt(S1) that matrix is A^T A, so its trace-sqrt is the sum of the singular values of
    A: taking them by SVD instead of `eigvalsh(A^T A)` + sqrt keeps round-off at eps |A| rather than
    sqrt(eps) |A| per zero eigenvalue, which matters for singular covariances (fewer samples than
    features: 1e-12 instead of 1e-4 for identical inputs); for full-rank covariances both routes
    agree to round-off. No epsilon offset is needed.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    dim = mu1.shape[0]
    if (
        mu1.shape != (dim,)
        or mu2.shape != (dim,)
        or sigma1.shape != (dim, dim)
        or sigma2.shape != (dim, dim)
    ):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 "
            f"{sigma2.shape}; expected mu (D,) and sigma (D, D) with one D (same feature model?)"
        )
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    # tr sqrt(sqrt(S1) S2 sqrt(S1)) = sum of singular values of sqrt(S2) sqrt(S1)
    trace_sqrt = np.linalg.svd(_sqrt_psd(sigma2) @ _sqrt_psd(sigma1), compute_uv=False).sum()
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    return mean_term + float(np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) with the N - 1 denominator, float64 (pytorch-fid
    `np.cov(rowvar=False)`)."""
    features = _as_float64_points(features, "features").numpy()
    if features.shape[0] < 2:
        raise ValueError(
            f"need at least 2 feature vectors for a covariance, got {features.shape[0]}"
        )
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(
        features.shape[1], features.shape[1]
    )


class _RunningMoments:
    """Streaming mean and scatter, merged batch by batch (Chan, Golub & LeVeque 1979) in float64."""

    def __init__(self):
        self.count, self.mean, self.scatter = 0, None, None

    def update(self, features: np.ndarray) -> None:
        batch_count, batch_mean = features.shape[0], features.mean(axis=0)  # batch_mean: (D,)
        centered = features - batch_mean  # (B, D)
        batch_scatter = centered.T @ centered  # (D, D)
        if self.count == 0:
            self.count, self.mean, self.scatter = batch_count, batch_mean, batch_scatter
            return
        total = self.count + batch_count
        delta = batch_mean - self.mean  # (D,)
        self.mean = self.mean + delta * (batch_count / total)
        self.scatter = (
            self.scatter
            + batch_scatter
            + np.outer(delta, delta) * (self.count * batch_count / total)
        )
        self.count = total

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"need at least 2 images for feature statistics, got {self.count}")
        return self.mean, self.scatter / (self.count - 1)


# ---------- Feature statistics of image sets, the cached reference, FID from a sampler ----------


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 by clamp(127.5 x + 128, 0, 255) (DiT `sample_ddp.py`); uint8 passes
    through."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(
            "images contain NaN or infinite values (diverged sampler?); refusing to quantise them"
        )
    return torch.clamp(127.5 * images + 128.0, 0, 255).to(torch.uint8)


def feature_model_name(feature_model: nn.Module) -> str:
    """The name stored next to cached statistics (the model's `name` attribute, else its class
    name)."""
    return str(getattr(feature_model, "name", type(feature_model).__name__))


@torch.no_grad()
def compute_statistics(
    images,
    feature_model: nn.Module,
    *,
    batch_size: int = 200,
    device="cpu",
    progress: bool = True,
    total: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of `feature_model` features over an image set (pytorch-fid
    `calculate_activation_statistics`).

    images: a (N, C, H, W) tensor/array (split into `batch_size` batches) or an iterable of such
    batches (uint8 or [-1, 1]; `total` = number of images, for the progress bar). Moments are merged
    per batch in float64, so 50k x 2048 features are never held at once. The model is moved to
    `device` and set to eval.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, Tensor):
        total = images.shape[0]
        batches: Iterable = (
            images[start : start + batch_size] for start in range(0, total, batch_size)
        )
    elif isinstance(images, Iterable):
        batches = images
    else:
        raise TypeError(
            "images must be a tensor, an array or an iterable of batches, got "
            f"{type(images).__name__}"
        )
    feature_model = feature_model.to(device).eval()
    moments = _RunningMoments()
    description = f"features ({feature_model_name(feature_model)})"
    with tqdm(total=total, disable=not progress, unit="img", desc=description) as bar:
        for batch in batches:
            batch = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
            features = feature_model(batch.to(device))  # (B, D)
            if features.dim() != 2 or features.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"feature_model must return (B, D) features, got {tuple(features.shape)} "
                    f"for a batch of {batch.shape[0]}"
                )
            moments.update(features.detach().to("cpu", torch.float64).numpy())
            bar.update(batch.shape[0])
    return moments.statistics()


def _fingerprint(images_uint8: np.ndarray, feature_model: nn.Module) -> dict:
    """Number of images, sha256 of their shape and bytes, and the feature model's name."""
    digest = hashlib.sha256(str(images_uint8.shape).encode())
    digest.update(memoryview(np.ascontiguousarray(images_uint8)).cast("B"))
    return {
        "num_images": images_uint8.shape[0],
        "data_sha256": digest.hexdigest(),
        "feature_model": feature_model_name(feature_model),
    }


def _save_npz_atomically(path: Path, **arrays) -> None:
    """Write to a temporary file beside `path`, then os.replace: a crash never leaves half a
    cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def reference_statistics(
    images_uint8,
    feature_model: nn.Module,
    cache_path: str | Path,
    *,
    batch_size: int = 200,
    device="cpu",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a uint8 image set (e.g. the CIFAR-10 train set), cached in a `.npz` with a
    fingerprint.

    The cache holds mu, sigma, the number of images, a sha256 of the images and the feature model's
    name; it is reused only when all three match, otherwise recomputed and rewritten atomically
    (temp file + os.replace).
    """
    array = (
        images_uint8.cpu().numpy() if isinstance(images_uint8, Tensor) else np.asarray(images_uint8)
    )
    if array.dtype != np.uint8 or array.ndim != 4:
        raise ValueError(
            f"reference images must be uint8 (N, C, H, W), got {array.dtype} {array.shape}"
        )
    fingerprint = _fingerprint(array, feature_model)
    cache_path = Path(cache_path)
    if cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as cached:
                stored = {key: cached[key].item() for key in fingerprint}
                if stored == fingerprint:
                    return cached["mu"], cached["sigma"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable or old-format cache: recompute and overwrite it
    mu, sigma = compute_statistics(
        torch.from_numpy(array),
        feature_model,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    _save_npz_atomically(
        cache_path, mu=mu, sigma=sigma, **{k: np.array(v) for k, v in fingerprint.items()}
    )
    return mu, sigma


def sample_batches(
    sample_fn: Callable[[int], Tensor], num_samples: int, batch_size: int
) -> Iterator[Tensor]:
    """Call `sample_fn(count)` until `num_samples` images are drawn; yield them quantised to
    uint8."""
    if num_samples < 2 or batch_size < 1:
        raise ValueError(
            f"need num_samples >= 2 and batch_size >= 1, got {num_samples} and {batch_size}"
        )
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        batch = sample_fn(count)
        if not isinstance(batch, Tensor) or batch.shape[0] != count:
            shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(
                f"sample_fn({count}) must return a tensor of {count} images, got {shape}"
            )
        yield to_uint8(batch.detach())


def frechet_distance_from_samples(
    sample_fn: Callable[[int], Tensor],
    reference_stats,
    feature_model: nn.Module,
    *,
    num_samples: int = FID_NUM_SAMPLES,
    batch_size: int = 200,
    device="cpu",
    progress: bool = True,
) -> float:
    """Fréchet distance between `num_samples` generated images and precomputed reference (mu,
    sigma)."""
    batches = sample_batches(sample_fn, num_samples, batch_size)
    mu, sigma = compute_statistics(
        batches, feature_model, device=device, progress=progress, total=num_samples
    )
    return frechet_distance(mu, sigma, *reference_stats)


def fid_from_samples(
    sample_fn: Callable[[int], Tensor],
    reference_stats,
    inception: InceptionV3FID,
    *,
    num_samples: int = FID_NUM_SAMPLES,
    batch_size: int = 200,
    device="cpu",
    progress: bool = True,
) -> float:
    """FID-50k by default: `sample_fn(count)` returns `count` images (uint8 or [-1, 1], (count, C,
    H, W)).

    `reference_stats` = `reference_statistics(train_images, inception, cache_path)`. Only a loaded
    `InceptionV3FID` may produce a number called FID; use `frechet_distance_from_samples` for other
    features.
    """
    if not isinstance(inception, InceptionV3FID):
        raise TypeError(
            f"FID needs the Inception-v3 FID network (load_inception(path)), got "
            f"{type(inception).__name__}; for other features call frechet_distance_from_samples"
        )
    return frechet_distance_from_samples(
        sample_fn,
        reference_stats,
        inception,
        num_samples=num_samples,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )


# ---------- Proxy metrics when no Inception weights are available (never reported as FID)
# ---------- ----------


class RandomFeatureNet(nn.Module):
    """A fixed random conv net (weights from `torch.Generator().manual_seed(seed)`): images -> (B,
    256) features.

    3x3 convs (stride 1, then 2 per stage) with He-scaled N(0, 2 / fan_in) weights and ReLU, then a
    global average pool, so any image size works without resizing. Deterministic on CPU for a given
    seed.
    """

    def __init__(
        self, seed: int = RANDOM_FEATURE_SEED, channels: tuple[int, ...] = RANDOM_FEATURE_CHANNELS
    ):
        super().__init__()
        self.name = f"random-features-seed{seed}-" + "-".join(map(str, channels))
        generator = torch.Generator().manual_seed(seed)
        widths = (3, *channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, stride=1 if i == 0 else 2, padding=1)
            for i in range(len(channels))
        )
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(
                    torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2 / fan_in)
                )
                conv.bias.zero_()
        self.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        x = (
            2 * images_to_unit_range(images).to(self.convs[0].weight.dtype) - 1
        )  # (B, 3, H, W) in [-1, 1]
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3))  # (B, channels[-1])


def proxy_frechet_distance(
    images_a,
    images_b,
    *,
    feature_model: nn.Module | None = None,
    batch_size: int = 200,
    device="cpu",
    progress: bool = False,
) -> float:
    """The random-feature Fréchet distance between two image sets (tensors or iterables of batches).
    Not FID."""
    feature_model = RandomFeatureNet() if feature_model is None else feature_model
    stats_a = compute_statistics(
        images_a, feature_model, batch_size=batch_size, device=device, progress=progress
    )
    stats_b = compute_statistics(
        images_b, feature_model, batch_size=batch_size, device=device, progress=progress
    )
    return frechet_distance(*stats_a, *stats_b)


def sample_gap(x_a: Tensor, x_b: Tensor) -> float:
    """Mean squared difference between two sample batches of the same shape (e.g. 1-NFE vs 50-step,
    same noise)."""
    if x_a.shape != x_b.shape:
        raise ValueError(
            f"samples must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}"
        )
    return (x_a.detach().double() - x_b.detach().double()).pow(2).mean().item()


def proxy_metrics(
    samples_1nfe: Tensor,
    samples_50step: Tensor,
    reference_images,
    *,
    batch_size: int = 200,
    device="cpu",
) -> dict:
    """The no-Inception report: {"fd_random_features": 1-NFE samples vs reference,
    "gap_1nfe_vs_50step_mse"}."""
    return {
        PROXY_FD_KEY: proxy_frechet_distance(
            to_uint8(samples_1nfe), reference_images, batch_size=batch_size, device=device
        ),
        GAP_KEY: sample_gap(samples_1nfe, samples_50step),
        "num_samples": int(samples_1nfe.shape[0]),
    }
