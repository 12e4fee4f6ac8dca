"""Tests for twinflow_min/metrics.py: energy distance, Fréchet distance, feature statistics and
caching, proxies.

Every expected value is a closed form or a float64 computation written here from the definitions
(explicit loops, eigen-decompositions of S1 S2), never a number printed by the code under test.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from twinflow_min.metrics import (
    GAP_KEY,
    PROXY_FD_KEY,
    RandomFeatureNet,
    compute_statistics,
    energy_distance,
    feature_statistics,
    fid_from_samples,
    frechet_distance,
    frechet_distance_from_samples,
    proxy_frechet_distance,
    proxy_metrics,
    reference_statistics,
    sample_gap,
    to_uint8,
)


def random_spd(dim: int, rng: np.random.Generator) -> np.ndarray:
    matrix = rng.standard_normal((dim, dim))
    return matrix @ matrix.T / dim + 0.1 * np.eye(dim)


# ---------- energy distance ----------


def test_energy_distance_identical_sets_is_exactly_zero():
    points = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert energy_distance(points, points.clone()) == 0.0  # V-statistic: all three means coincide


def test_energy_distance_single_points_is_twice_the_distance():
    # E|X-Y| = 5 (3-4-5 triangle), E|X-X'| = E|Y-Y'| = 0  ->  2 * 5
    assert energy_distance(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == pytest.approx(
        10.0, abs=1e-12
    )


def test_energy_distance_two_versus_two_by_hand():
    a = [[0.0, 0.0], [3.0, 4.0]]
    b = [[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]

    def mean_distance(p, q):  # explicit double loop over all pairs, float64
        return sum(math.dist(u, v) for u in p for v in q) / (len(p) * len(q))

    expected = 2 * mean_distance(a, b) - mean_distance(a, a) - mean_distance(b, b)
    assert energy_distance(torch.tensor(a, dtype=torch.float64), torch.tensor(b)) == pytest.approx(
        expected, rel=1e-12
    )


def test_energy_distance_symmetric_nonnegative_and_chunked():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(300, 2, generator=generator, dtype=torch.float64)
    b = torch.randn(200, 2, generator=generator, dtype=torch.float64) + 0.5
    full = energy_distance(a, b, chunk_rows=10**6)  # one chunk
    assert full > 0
    assert energy_distance(b, a) == pytest.approx(full, rel=1e-12)
    assert energy_distance(a, b, chunk_rows=7) == pytest.approx(full, rel=1e-12)
    assert energy_distance(a, b) == pytest.approx(full, rel=1e-12)  # default chunking


def test_energy_distance_toy_size_fits_and_separates():
    generator = torch.Generator().manual_seed(2)
    data = torch.randn(4000, 2, generator=generator)
    same = energy_distance(data, torch.randn(4000, 2, generator=generator))
    shifted = energy_distance(data, torch.randn(4000, 2, generator=generator) + 1.0)
    assert 0 <= same < 0.01 < shifted


def test_energy_distance_bad_inputs():
    with pytest.raises(ValueError, match="same dimension"):
        energy_distance(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        energy_distance(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        energy_distance(torch.tensor([[float("nan")]]), torch.zeros(1, 1))


# ---------- Fréchet distance ----------


def test_frechet_diagonal_closed_form():
    # Gaussians with diagonal covariances: d^2 = |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2, s = standard
    # deviations
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    std1, std2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 0.5])
    expected = 1 + 0 + 4 + (1 + 0 + 2.5**2)
    assert frechet_distance(mu1, np.diag(std1**2), mu2, np.diag(std2**2)) == pytest.approx(
        expected, abs=1e-10
    )


def test_frechet_commuting_covariances_closed_form():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    eig1, eig2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    sigma1, sigma2 = rotation @ np.diag(eig1) @ rotation.T, rotation @ np.diag(eig2) @ rotation.T
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    # shared eigenvectors: tr sqrt(S1 S2) = sum sqrt(a_i b_i), so d^2 = |dmu|^2 + sum (sqrt a_i -
    # sqrt b_i)^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(eig1) - np.sqrt(eig2)) ** 2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(1)
    sigma, mu = random_spd(64, rng), rng.standard_normal(64)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) <= 1e-8
    low_rank = rng.standard_normal((64, 5)) @ rng.standard_normal((5, 64))
    low_rank = low_rank @ low_rank.T  # singular PSD covariance (fewer samples than features)
    # trace ~1.9e4; the eigvalsh(sqrt(S1) S2 sqrt(S1)) route is off by ~2e-3 here (sqrt of round-off
    # noise)
    assert abs(frechet_distance(mu, low_rank, mu, low_rank)) <= 1e-8


def test_frechet_non_commuting_matches_eigenvalues_of_product():
    rng = np.random.default_rng(2)
    sigma1, sigma2 = random_spd(10, rng), random_spd(10, rng)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    # independent route: tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)), eigenvalues real and positive for
    # SPD S1, S2
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    assert np.abs(eigenvalues.imag).max() < 1e-10
    trace_sqrt = np.sqrt(eigenvalues.real).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(expected, rel=1e-10)


def test_frechet_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


# ---------- feature statistics ----------


class FlattenFeatures(nn.Module):
    """Feature model = the flattened pixels in float64, counting how many images it saw."""

    name = "flatten"

    def __init__(self):
        super().__init__()
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += images.shape[0]
        return images.reshape(images.shape[0], -1).double()


def hand_statistics(features: np.ndarray):
    """Mean and unbiased covariance by the textbook sums (N - 1 denominator)."""
    mean = features.sum(axis=0) / len(features)
    centered = features - mean
    return mean, sum(np.outer(row, row) for row in centered) / (len(features) - 1)


def test_feature_statistics_matches_hand_computation():
    features = np.random.default_rng(3).standard_normal((20, 4))
    mu, sigma = feature_statistics(torch.from_numpy(features))
    expected_mu, expected_sigma = hand_statistics(features)
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-12, atol=1e-14)
    assert mu.dtype == sigma.dtype == np.float64


def test_compute_statistics_batched_equals_all_at_once():
    images = torch.randint(
        0, 256, (23, 1, 2, 2), generator=torch.Generator().manual_seed(4), dtype=torch.uint8
    )
    expected_mu, expected_sigma = hand_statistics(images.reshape(23, -1).double().numpy())
    for source in (images, images.numpy(), [images[:5], images[5:17], images[17:]]):
        mu, sigma = compute_statistics(source, FlattenFeatures(), batch_size=4, progress=False)
        np.testing.assert_allclose(mu, expected_mu, rtol=1e-12)
        np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-10, atol=1e-9)


def test_reference_statistics_cache(tmp_path):
    images = torch.randint(
        0, 256, (12, 1, 2, 2), generator=torch.Generator().manual_seed(5), dtype=torch.uint8
    )
    cache = tmp_path / "stats" / "reference.npz"
    model = FlattenFeatures()
    mu, sigma = reference_statistics(images, model, cache, batch_size=5, progress=False)
    assert model.images_seen == 12 and cache.is_file()
    np.testing.assert_allclose(
        mu, hand_statistics(images.reshape(12, -1).double().numpy())[0], rtol=1e-12
    )
    # second call: served from the cache, the model never runs
    cached_mu, cached_sigma = reference_statistics(images.numpy(), model, cache, progress=False)
    assert model.images_seen == 12
    np.testing.assert_array_equal(cached_mu, mu)
    np.testing.assert_array_equal(cached_sigma, sigma)
    # one changed pixel -> new fingerprint -> recomputed and rewritten
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    new_mu, _ = reference_statistics(changed, model, cache, progress=False)
    assert model.images_seen == 24 and not np.array_equal(new_mu, mu)
    # another feature model name -> recomputed
    model.name = "flatten-v2"
    reference_statistics(changed, model, cache, progress=False)
    assert model.images_seen == 36
    # a corrupt cache is recomputed, not fatal; no temporary files are left behind
    cache.write_bytes(b"not a zip")
    reference_statistics(changed, model, cache, progress=False)
    assert model.images_seen == 48
    assert sorted(p.name for p in cache.parent.iterdir()) == ["reference.npz"]
    with pytest.raises(ValueError, match="uint8"):
        reference_statistics(images.float(), model, tmp_path / "x.npz")


def test_to_uint8_follows_dit_quantisation():
    # clamp(127.5 x + 128, 0, 255) then truncation: -1 -> 0.5 -> 0, 0 -> 128, 1 -> 255.5 -> 255, 2
    # -> 255
    values = torch.tensor([-1.0, 0.0, 1.0, 2.0, -0.5])
    assert to_uint8(values).tolist() == [0, 128, 255, 255, 64]  # -0.5 -> 64.25 -> 64
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.tensor([0.0, float("nan")]))


def test_frechet_distance_from_samples_batches_and_fid_guard():
    reference = torch.randint(
        0, 256, (25, 1, 2, 2), generator=torch.Generator().manual_seed(6), dtype=torch.uint8
    )
    stats = compute_statistics(reference, FlattenFeatures(), progress=False)
    requested, cursor = [], [0]

    def sample_fn(count):  # replays the reference set, as [-1, 1] floats
        requested.append(count)
        batch = reference[cursor[0] : cursor[0] + count]
        cursor[0] += count
        return batch.double() / 127.5 - 1

    distance = frechet_distance_from_samples(
        sample_fn, stats, FlattenFeatures(), num_samples=25, batch_size=10, progress=False
    )
    assert requested == [10, 10, 5]
    assert abs(distance) < 1e-6  # the same images after the uint8 round trip
    with pytest.raises(ValueError, match="must return a tensor of 10 images"):
        frechet_distance_from_samples(
            lambda n: reference[:3],
            stats,
            FlattenFeatures(),
            num_samples=20,
            batch_size=10,
            progress=False,
        )
    with pytest.raises(TypeError, match="load_inception"):
        fid_from_samples(sample_fn, stats, RandomFeatureNet(), num_samples=10)


# ---------- proxy metrics ----------


def test_random_feature_net_is_deterministic():
    images = torch.randint(
        0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(7), dtype=torch.uint8
    )
    first, second, other_seed = RandomFeatureNet(), RandomFeatureNet(), RandomFeatureNet(seed=1)
    for (name, p), (_, q) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(p, q), name
    features = first(images)
    assert features.shape == (3, 256)
    assert torch.equal(features, second(images))
    assert not torch.allclose(features, other_seed(images))
    assert features.std() > 0
    # resize-free: any size and grey images work; uint8 and [-1, 1] give the same features
    assert first(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2, 256)
    torch.testing.assert_close(first(images.float() / 127.5 - 1), features)


def test_proxy_frechet_distance_and_gap():
    generator = torch.Generator().manual_seed(8)
    images = torch.randint(0, 256, (40, 3, 8, 8), generator=generator, dtype=torch.uint8)
    other = (images // 4).to(torch.uint8)  # darker images
    same = proxy_frechet_distance(images, images)
    assert abs(same) < 1e-6
    assert proxy_frechet_distance(images, other) > 1e-3
    # sample_gap: mean of (0 - 2)^2 = 4
    assert sample_gap(torch.zeros(2, 3), torch.full((2, 3), 2.0)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="same shape"):
        sample_gap(torch.zeros(2, 3), torch.zeros(3, 2))
    one_step = images.float() / 127.5 - 1
    report = proxy_metrics(one_step, one_step + 0.1, images)
    assert set(report) == {PROXY_FD_KEY, GAP_KEY, "num_samples"}
    assert PROXY_FD_KEY == "fd_random_features" and GAP_KEY == "gap_1nfe_vs_50step_mse"
    assert report[GAP_KEY] == pytest.approx(0.01, rel=1e-5)
    assert abs(report[PROXY_FD_KEY]) < 1e-6  # 1-NFE "samples" are the reference images themselves
