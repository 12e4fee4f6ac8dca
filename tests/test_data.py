"""Toy samplers, class folders, latents and the resumable batch iterator (twinflow_min/data.py)."""

import math
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from twinflow_min import data as D
from twinflow_min.data import (
    TOY_DATASETS,
    ImageBatches,
    images_to_uint8,
    load_dataset,
    load_image_folder,
    load_latents,
    sample_toy,
    uint8_to_images,
)

# ---------- Toy distributions ----------

# midpoint rule on u in (0, 1): error < 1e-7 for these maps
GRID = (np.arange(100_000) + 0.5) / 100_000


_GRID25_RAW = np.array([(i, j) for j in range(-2, 3) for i in range(-2, 3)], dtype=float)  # (25, 2)


def _quadrature_moments(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw per-coordinate mean and std by numerical integration over each definition's parameters
    (independent of the closed forms in data.py); noise variances added as sd^2."""
    if name == "moons":  # 1/2 upper (cos, sin), 1/2 lower (1 - cos, 1/2 - sin), theta ~ U[0, pi]
        theta = math.pi * GRID
        parts = [
            np.stack([np.cos(theta), np.sin(theta)], 1),
            np.stack([1 - np.cos(theta), 0.5 - np.sin(theta)], 1),
        ]
        noise = D.MOONS_NOISE
    elif name == "circles":  # radius 1 or 1/2, theta ~ U[0, 2 pi]
        theta = 2 * math.pi * GRID
        parts = [r * np.stack([np.cos(theta), np.sin(theta)], 1) for r in D.CIRCLES_RADII]
        noise = D.CIRCLES_NOISE
    elif name == "8gaussians":  # 8 centres R (cos, sin)(k pi / 4)
        angles = np.arange(8) * math.pi / 4
        parts = [D.GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], 1)]
        noise = D.GAUSSIANS_STD
    # the 8 unit squares (i, j) in [-2, 2)^2 with i + j even, uniform inside
    elif name == "checkerboard":
        cells = [(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0]
        ticks = (np.arange(200) + 0.5) / 200
        offsets = np.stack(np.meshgrid(ticks, ticks), -1).reshape(-1, 2)
        parts = [np.array(cell) + offsets for cell in cells]
        noise = 0.0
    elif name == "spirals":  # theta = 3 pi sqrt(u); arm +-(-theta cos, theta sin)
        theta = 3 * math.pi * np.sqrt(GRID)
        arm = np.stack([-theta * np.cos(theta), theta * np.sin(theta)], 1)
        parts, noise = [arm, -arm], D.SPIRAL_NOISE
    elif name == "grid25":  # 25 centres (i, j) for i, j in {-2, ..., 2}, sd 0.1
        parts, noise = [_GRID25_RAW], 0.1
    else:  # swissroll: theta = 1.5 pi (1 + 2u), (theta cos, theta sin)
        theta = 1.5 * math.pi * (1 + 2 * GRID)
        parts, noise = (
            [theta[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)],
            D.SWISSROLL_NOISE,
        )
    points = np.concatenate(parts)  # equal weights: every part has the same number of grid points
    return points.mean(0), np.sqrt(points.var(0) + noise**2)


def _raw(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Undo the standardisation with the quadrature moments (not the module's constants)."""
    mean, std = _quadrature_moments(name)
    return sample_toy(name, n, torch.Generator().manual_seed(seed)).double().numpy() * std + mean


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_dtype_determinism_and_private_rng(name):
    state = torch.get_rng_state()
    a = sample_toy(name, 500, torch.Generator().manual_seed(3))
    b = sample_toy(name, 500, torch.Generator().manual_seed(3))
    c = sample_toy(name, 500, torch.Generator().manual_seed(4))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_standardisation_constants_match_quadrature(name):
    mean, std = _quadrature_moments(name)
    np.testing.assert_allclose(D.TOY_MOMENTS[name][0], mean, atol=1e-6)
    np.testing.assert_allclose(D.TOY_MOMENTS[name][1], std, rtol=1e-6)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_mean_zero_std_one(name):
    # n = 20000: standard error of a unit-variance mean is 0.007 and of the std <= 0.006 (kurtosis
    # <= 3 here), so 0.04 is > 5 standard errors; at n = 200000 they are 0.0022 / 0.002, so 0.015
    # catches a 1.5% error.
    for n, tolerance in ((20_000, 0.04), (200_000, 0.015)):
        x = sample_toy(name, n, torch.Generator().manual_seed(11)).double()
        assert x.mean(0).abs().max() < tolerance
        assert (x.std(0) - 1).abs().max() < tolerance


def _arc_distance(p: np.ndarray, centre, upper: bool) -> np.ndarray:
    """Distance to the unit half circle around `centre` (upper or lower half)."""
    d = p - np.asarray(centre)
    on_side = d[:, 1] >= 0 if upper else d[:, 1] <= 0
    to_circle = np.abs(np.hypot(d[:, 0], d[:, 1]) - 1)
    to_ends = np.minimum(np.hypot(d[:, 0] - 1, d[:, 1]), np.hypot(d[:, 0] + 1, d[:, 1]))
    return np.where(on_side, to_circle, to_ends)


def test_moons_centres():
    p = _raw("moons", 20_000)
    upper = _arc_distance(p, (0, 0), True) < _arc_distance(p, (1, 0.5), False)
    assert abs(upper.mean() - 0.5) < 0.02  # binomial sd 0.0035
    # centroid of (cos, sin) over theta ~ U[0, pi] is (0, 2/pi); of the lower moon (1, 1/2 - 2/pi)
    np.testing.assert_allclose(p[upper].mean(0), [0, 2 / math.pi], atol=0.03)
    np.testing.assert_allclose(p[~upper].mean(0), [1, 0.5 - 2 / math.pi], atol=0.03)


def test_circles_two_radii():
    r = np.hypot(*_raw("circles", 20_000).T)
    inner = r < 0.75
    assert abs(inner.mean() - 0.5) < 0.02
    assert abs(np.median(r[inner]) - 0.5) < 0.02 and abs(np.median(r[~inner]) - 1.0) < 0.02


def test_8gaussians_eight_modes():
    p = _raw("8gaussians", 20_000)
    k = np.round(np.arctan2(p[:, 1], p[:, 0]) / (math.pi / 4)).astype(int) % 8
    counts = np.bincount(k, minlength=8)
    assert np.all(np.abs(counts - 2500) < 250)  # binomial sd sqrt(20000 * 1/8 * 7/8) = 47
    centres = 4 * np.stack([np.cos(k * math.pi / 4), np.sin(k * math.pi / 4)], 1)
    assert np.hypot(*(p - centres).T).max() < 6 * 0.5  # P(2-D radius > 6 sd) = exp(-18)


def test_checkerboard_only_black_squares():
    p = _raw("checkerboard", 20_000)
    assert np.abs(p).max() < 2 + 1e-5
    interior = np.all(np.abs(p - np.round(p)) > 1e-4, axis=1)  # float32 rounding can blur the edges
    cells = np.floor(p[interior]).astype(int)
    assert np.all((cells.sum(1) % 2) == 0)
    _, counts = np.unique(cells, axis=0, return_counts=True)
    assert len(counts) == 8 and np.all(np.abs(counts - 2500) < 250)


def test_spirals_radius_grows_with_angle():
    p = _raw("spirals", 20_000)
    r, phi = np.hypot(*p.T), np.arctan2(p[:, 1], p[:, 0])
    far = r > 2
    # arm +1 is theta (cos(pi - theta), sin(pi - theta)), arm -1 theta (cos(-theta), sin(-theta)): r
    # + phi = 0 mod pi
    residual = np.remainder(r[far] + phi[far] + math.pi / 2, math.pi) - math.pi / 2
    assert np.median(np.abs(residual)) < 0.4  # uniform points would give pi / 4 = 0.785


def test_swissroll_radius_grows_with_angle():
    p = _raw("swissroll", 20_000)
    r, phi = np.hypot(*p.T), np.arctan2(p[:, 1], p[:, 0])
    # r = theta, phi = theta mod 2 pi
    residual = np.remainder(r - phi + math.pi, 2 * math.pi) - math.pi
    assert np.median(np.abs(residual)) < 0.5  # uniform points would give pi / 2
    assert r.min() > 1.5 * math.pi - 2.5 and r.max() < 4.5 * math.pi + 2.5  # 5 noise sd


def test_grid25_twenty_five_modes():
    p = _raw("grid25", 20_000)
    k = np.argmin(((p[:, None, :] - _GRID25_RAW[None]) ** 2).sum(-1), 1)  # nearest centre
    counts = np.bincount(k, minlength=25)
    assert np.all(np.abs(counts - 800) < 150)  # binomial sd sqrt(20000 * 1/25 * 24/25) = 27.7
    assert np.hypot(*(p - _GRID25_RAW[k]).T).max() < 6 * 0.1  # P(2-D radius > 6 sd) = exp(-18)
    # the modes have width (Rayleigh sd 0.066)
    assert np.hypot(*(p - _GRID25_RAW[k]).T).std() > 0.03


def _mode_centres_by_hand(name: str) -> np.ndarray:
    """Raw centres (K, 2) written out here, standardised by the quadrature moments."""
    if name == "8gaussians":
        angles = np.arange(8) * math.pi / 4
        raw = 4 * np.stack([np.cos(angles), np.sin(angles)], 1)
    else:
        raw = _GRID25_RAW
    mean, std = _quadrature_moments(name)
    return (raw - mean) / std


@pytest.mark.parametrize("name, modes, sd", [("8gaussians", 8, 0.5), ("grid25", 25, 0.1)])
def test_toy_mode_centres_in_sample_units(name, modes, sd):
    centres = D.toy_mode_centres(name)
    assert centres.shape == (modes, 2) and centres.dtype == torch.float32
    np.testing.assert_allclose(centres.double().numpy(), _mode_centres_by_hand(name), atol=1e-6)
    mode_sd = np.asarray(D.toy_mode_std(name))
    np.testing.assert_allclose(mode_sd, sd / _quadrature_moments(name)[1], rtol=1e-6)
    x = sample_toy(name, 20_000, torch.Generator().manual_seed(5))  # (n, 2), standardised
    nearest = torch.cdist(x.double(), centres.double()).argmin(1)  # (n,)
    counts = torch.bincount(nearest, minlength=modes).double()
    assert (counts / 20_000 - 1 / modes).abs().max() < 0.015  # binomial sd <= 0.0024
    offsets = (x.double() - centres.double()[nearest]).numpy() / mode_sd  # in units of the mode sd
    np.testing.assert_allclose(offsets.mean(0), 0, atol=0.05)  # standard error 0.007
    np.testing.assert_allclose(offsets.std(0), 1, atol=0.05)


def test_toy_mode_centres_refuse_toys_without_modes():
    for name in ("moons", "checkerboard", "banana"):
        with pytest.raises(ValueError, match="no discrete modes.*8gaussians, grid25"):
            D.toy_mode_centres(name)
        with pytest.raises(ValueError, match="no discrete modes"):
            D.toy_mode_std(name)


def test_toy_errors():
    with pytest.raises(ValueError, match="moons, circles, 8gaussians"):
        sample_toy("banana", 4, torch.Generator())
    with pytest.raises(ValueError, match="positive"):
        sample_toy("moons", 0, torch.Generator())
    with pytest.raises(TypeError, match="Generator"):
        sample_toy("moons", 4, 0)


# ---------- Class folders ----------


def _color(label: int, index: int) -> tuple[int, int, int]:
    return (10 + 40 * label, 20 + index, 200 - 30 * label)


CLASS_SIZES = {"cat": 2, "ant": 3, "bee": 2}


def _write_classes(root, sizes=CLASS_SIZES, width=6, height=5):
    """PNGs of solid colours, a known pixel at (x=4, y=1) = (255, 0, 7); 'bee' stored as RGBA, one
    as grey."""
    for name, count in sizes.items():
        (root / name).mkdir(parents=True)
        label = sorted(sizes).index(name)
        for index in range(count):
            image = Image.new("RGB", (width, height), _color(label, index))
            image.putpixel((4, 1), (255, 0, 7))
            if name == "bee":
                image = image.convert("RGBA")
            image.save(root / name / f"{index:03d}.png")
    Image.new("L", (width, height), 77).save(root / "cat" / "zzz_grey.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "ant" / ".hidden.png").write_bytes(b"junk")
    return root


def test_image_folder_and_its_tarball(tmp_path):
    root = _write_classes(tmp_path / "data" / "train")
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(tmp_path / "data", arcname="set")  # class level is set/train/<class>
    for source in (root, archive):
        images, labels, names = load_image_folder(source)
        assert names == ["ant", "bee", "cat"]
        assert images.dtype == np.uint8 and images.shape == (8, 3, 5, 6)
        assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
        assert tuple(images[0, :, 0, 0]) == _color(0, 0) and tuple(images[4, :, 0, 0]) == _color(
            1, 1
        )
        assert tuple(images[3, :, 1, 4]) == (255, 0, 7)  # (C, H=y, W=x) layout
        assert np.all(images[7] == 77)  # grey "L" image expanded to three equal channels


@pytest.mark.parametrize("mode, suffix", [("w:gz", ".tar.gz"), ("w", ".tar"), ("w:xz", ".tar.xz")])
def test_truncated_archive_is_one_line(tmp_path, mode, suffix):
    """Issue 13: an archive cut in half gives one ValueError line, never a traceback, and never a
    silently shorter data set (tarfile's stream mode alone stops quietly at a cut gzip stream)."""
    _write_classes(tmp_path / "data" / "train")
    archive = tmp_path / f"set{suffix}"
    with tarfile.open(archive, mode) as handle:
        handle.add(tmp_path / "data", arcname="set")
    assert load_image_folder(archive)[0].shape == (8, 3, 5, 6)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or damaged archive") as error:
        load_image_folder(cut)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="truncated or damaged archive"):
        load_dataset("folder", cut)


def test_image_folder_max_images_round_robin(tmp_path):
    root = _write_classes(tmp_path / "r")
    images, labels, _ = load_image_folder(root, max_images=4)
    assert labels.tolist() == [0, 0, 1, 2]  # ant0, bee0, cat0 then ant1; returned sorted
    assert tuple(images[1, :, 0, 0]) == _color(0, 1)


def test_image_folder_errors(tmp_path):
    root = _write_classes(tmp_path / "r")
    Image.new("RGB", (7, 5)).save(root / "bee" / "odd.png")
    with pytest.raises(ValueError, match="odd.png"):
        load_image_folder(root)
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (4, 4)).save(loose / "a.png")
    with pytest.raises(ValueError, match="class folder"):
        load_image_folder(loose)
    (loose / "x" / "deeper").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(loose / "x" / "deeper" / "b.png")
    (loose / "a.png").unlink()
    Image.new("RGB", (4, 4)).save(loose / "x" / "c.png")
    with pytest.raises(ValueError, match="different depths"):
        load_image_folder(loose)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="max_images"):
        load_image_folder(root, max_images=0)


def test_shared_cifar10_jpeg_test_archive(shared_data_dir):
    archive = shared_data_dir / "cifar10-jpeg-test.tar.gz"
    start = time.perf_counter()
    # all 10,000: ~3 s on 2 idle cores
    images, labels, names = load_image_folder(archive, max_images=2000)
    print(f"read 10,000 members, decoded 2,000 JPEGs in {time.perf_counter() - start:.1f} s")
    classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert names == classes
    assert images.shape == (2000, 3, 32, 32) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [200] * 10  # round robin over the classes
    assert 60 < images.mean() < 190  # real photographs, not blank decodes
    with tarfile.open(archive) as handle:  # the full split, counted from the member names
        per_class = [name.split("/")[-2] for name in handle.getnames() if name.endswith(".jpg")]
    assert [per_class.count(name) for name in classes] == [1000] * 10


# ---------- Latents and load_dataset ----------


def _latents():
    latents = torch.linspace(-3, 3, 5 * 4 * 2 * 2).reshape(5, 4, 2, 2).half()
    return latents, torch.tensor([0, 3, 1, 999, 2])


def test_load_latents_round_trips(tmp_path):
    latents, labels = _latents()
    save_file({"latents": latents, "labels": labels}, str(tmp_path / "a.safetensors"))
    np.savez(tmp_path / "b.npz", latents=latents.numpy(), labels=labels.numpy().astype(np.int32))
    (tmp_path / "c").mkdir()
    np.save(tmp_path / "c" / "latents.npy", latents.float().numpy())
    np.save(tmp_path / "c" / "labels.npy", labels.numpy())
    for path in (tmp_path / "a.safetensors", tmp_path / "b.npz", tmp_path / "c" / "latents.npy"):
        x, y = load_latents(path)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, latents.float()) and torch.equal(y, labels)
    x, y, names = load_dataset(f"latents:{tmp_path / 'b.npz'}")
    assert x.shape == (5, 4, 2, 2) and names is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_latents_are_refused_at_load(tmp_path, bad):
    """Issue 13: NaN / inf latents are caught when the file is read, with the row count."""
    latents, labels = _latents()
    latents[1, 0, 0, 0] = bad
    latents[3, 2, 1, 0] = bad
    save_file({"latents": latents, "labels": labels}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="2 latent\\(s\\) hold NaN or inf"):
        load_latents(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="NaN or inf"):
        load_dataset(f"latents:{tmp_path / 'bad.safetensors'}")


def test_load_latents_errors(tmp_path):
    latents, labels = _latents()
    save_file({"latent": latents}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="'latent'"):
        load_latents(tmp_path / "a.safetensors")
    np.save(tmp_path / "lonely.npy", latents.numpy())
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        load_latents(tmp_path / "lonely.npy")
    np.savez(tmp_path / "flat.npz", latents=np.zeros((5, 4)), labels=np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        load_latents(tmp_path / "flat.npz")
    np.savez(tmp_path / "short.npz", latents=latents.numpy(), labels=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="integers of shape"):
        load_latents(tmp_path / "short.npz")
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors"):
        load_latents(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        load_latents(tmp_path / "nothing.npz")


def test_load_dataset_folder_and_errors(tmp_path):
    root = _write_classes(tmp_path / "r")
    for spec in ("folder", "cifar10"):  # "cifar10" given a class folder reads it as one
        images, labels, names = load_dataset(spec, root)
        assert images.shape == (8, 3, 5, 6) and names == ["ant", "bee", "cat"]
    with pytest.raises(ValueError, match="'cifar10', 'folder' or 'latents:PATH'"):
        load_dataset("imagenet", root)
    with pytest.raises(ValueError, match="latents"):
        load_dataset("latents")


# ---------- uint8 <-> [-1, 1] and ImageBatches ----------


def test_uint8_round_trip_and_range():
    u = torch.arange(256, dtype=torch.uint8)
    x = uint8_to_images(u)
    assert (
        x.dtype == torch.float32
        and x[0] == -1
        and x[255] == 1
        and abs(x[128].item() - 0.5 / 127.5) < 1e-7
    )
    assert torch.equal(images_to_uint8(x), u)
    assert images_to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]
    with pytest.raises(TypeError):
        uint8_to_images(torch.zeros(2))
    with pytest.raises(TypeError):
        images_to_uint8(torch.zeros(2, dtype=torch.uint8))


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_image_batches_exact_resume():
    images = torch.randint(
        0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    labels = np.arange(10)
    # 3 batches / epoch: 4 epochs
    straight = _take(ImageBatches(images.numpy(), labels, 3, seed=7), 12)
    first = ImageBatches(images.numpy(), labels, 3, seed=7)
    _take(first, 5)
    state = first.state_dict()
    assert set(state) == {"epoch", "position", "seed"} and state["epoch"] == 1
    resumed = ImageBatches(images.numpy(), labels, 3, seed=999)
    resumed.load_state_dict(state)
    for (x_a, y_a), (x_b, y_b) in zip(straight[5:], _take(resumed, 7)):
        assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
    other = _take(ImageBatches(images.numpy(), labels, 3, seed=8), 3)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(straight, other))
    with pytest.raises(ValueError, match="position"):
        resumed.load_state_dict({"epoch": 0, "position": 11, "seed": 7})


def test_image_batches_epochs_are_permutations_dropping_the_rest():
    labels = np.arange(10)
    batches = ImageBatches(np.zeros((10, 1, 1, 1), np.uint8), labels, 3, seed=1)
    for _ in range(3):  # each epoch: 3 batches of distinct samples, one sample dropped
        seen = torch.cat([next(batches)[1] for _ in range(3)])
        assert len(set(seen.tolist())) == 9


def test_image_batches_flip_and_range():
    # values 0..255, asymmetric in W
    image = torch.arange(2 * 3, dtype=torch.uint8).reshape(1, 1, 2, 3) * 51
    mirrored = image[..., [2, 1, 0]]
    expected = {"plain": image.float() / 127.5 - 1, "flipped": mirrored.float() / 127.5 - 1}
    batches = ImageBatches(image, torch.tensor([4]), 1, seed=0)
    outcomes = []
    for _ in range(64):
        x, y = next(batches)
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.tolist() == [4]
        assert x.min() == -1 and x.max() == 1
        outcomes.append(next(k for k, v in expected.items() if torch.equal(x, v)))
    assert set(outcomes) == {"plain", "flipped"}  # P(all 64 the same) = 2^-63
    no_flip = ImageBatches(image, None, 1, seed=0, flip=False)
    assert all(torch.equal(next(no_flip)[0], expected["plain"]) for _ in range(8))


def test_image_batches_float_latents_are_untouched():
    latents = torch.randn(
        4, 2, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    # float: no scaling, no flip by default
    batches = ImageBatches(latents, torch.arange(4), 4, seed=0)
    for _ in range(8):
        x, y = next(batches)
        assert x.dtype == torch.float32 and torch.equal(x, latents.float()[y])
    flipped, flips = ImageBatches(latents, torch.arange(4), 4, seed=0, flip=True), 0
    # flip=True asked: each sample is the latent or its mirror, and some are mirrored
    for _ in range(8):
        x, y = next(flipped)
        mirrored = torch.tensor([not torch.equal(a, latents.float()[i]) for a, i in zip(x, y)])
        assert torch.equal(x[mirrored], latents.float()[y[mirrored]].flip(-1))
        flips += int(mirrored.sum())
    assert 0 < flips < 32


def test_image_batches_bad_inputs():
    with pytest.raises(ValueError, match="batch_size"):
        ImageBatches(np.zeros((2, 1, 1, 1), np.uint8), [0, 1], 3, seed=0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageBatches(np.zeros((2, 1, 1), np.uint8), [0, 1], 1, seed=0)
    with pytest.raises(TypeError, match="uint8"):
        ImageBatches(np.zeros((2, 1, 1, 1), np.int32), [0, 1], 1, seed=0)
    with pytest.raises(ValueError, match="labels"):
        ImageBatches(np.zeros((2, 1, 1, 1), np.uint8), [0, 1, 2], 1, seed=0)
