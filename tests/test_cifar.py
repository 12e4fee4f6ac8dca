"""CIFAR-10 readers (twinflow_min/cifar.py via twinflow_min.data): python pickles, binary records,
md5, safety.

Fixtures are 10-image batches written in tmp_path in the exact official layouts (dataset page): a
dict with b"data" uint8 (10, 3072) rows of R plane, G plane, B plane (32x32 row-major each),
b"labels", b"batch_label", b"filenames", pickled with protocol 2; binary records <1 label byte><3072
bytes>.
"""

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from twinflow_min.cifar import PYTHON_BATCH_MD5, is_cifar10, restricted_loads
from twinflow_min.data import UnsafePickleError, load_cifar10, load_dataset

TRAIN_NAMES = [f"data_batch_{k}" for k in range(1, 6)]
# The known pixel: image 3 of every batch, row 5, column 7 has (R, G, B) = (200, 100, 50).
KNOWN_IMAGE, KNOWN_ROW, KNOWN_COL, KNOWN_RGB = 3, 5, 7, (200, 100, 50)


def _batch_arrays(batch_index: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(batch_index)
    data = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
    offset = KNOWN_ROW * 32 + KNOWN_COL  # row-major index inside one 32x32 plane
    # planes are R (0..1023), G (1024..2047), B (2048..3071)
    for plane, value in enumerate(KNOWN_RGB):
        data[KNOWN_IMAGE, plane * 1024 + offset] = value
    labels = [int(v) for v in rng.permutation(10)]
    return data, labels


def _pickled_batch(batch_index: int, str_keys: bool = False) -> bytes:
    data, labels = _batch_arrays(batch_index)
    batch = {
        b"batch_label": b"training batch %d of 5" % batch_index,
        b"labels": labels,
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(10)],
    }
    if str_keys:  # the variant a latin1 / Python 3 writer produces
        batch = {key.decode(): value for key, value in batch.items()}
    return pickle.dumps(batch, protocol=2)


def _expected(split: str) -> tuple[np.ndarray, np.ndarray]:
    indices = range(1, 6) if split == "train" else [6]
    pairs = [_batch_arrays(i) for i in indices]
    images = np.concatenate([d for d, _ in pairs]).reshape(-1, 3, 32, 32)
    return images, np.concatenate([np.array(labels) for _, labels in pairs])


def _write_python(root: Path, str_keys: bool = False) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index, name in enumerate(TRAIN_NAMES + ["test_batch"], start=1):
        (folder / name).write_bytes(_pickled_batch(index, str_keys))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}, protocol=2))
    return folder


def _tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as handle:
        # members cifar-10-batches-*/..., as in the official archives
        handle.add(folder, arcname=folder.name)
    return archive


def test_python_folder_parent_and_tarball_agree(tmp_path):
    folder = _write_python(tmp_path / "extracted")
    archive = _tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    expected_images, expected_labels = _expected("train")
    for source in (folder, folder.parent, archive):
        images, labels = load_cifar10(source, check_md5=False)
        assert images.dtype == np.uint8 and images.shape == (50, 3, 32, 32)
        assert labels.dtype == np.int64 and labels.shape == (50,)
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)
    test_images, test_labels = load_cifar10(archive, "test", check_md5=False)
    assert test_images.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(test_labels, _batch_arrays(6)[1])


def test_pixel_layout_is_rgb_planes_row_major(tmp_path):
    images, _ = load_cifar10(_write_python(tmp_path), check_md5=False)
    # The pixel written at plane offsets p*1024 + 5*32 + 7 must read back at [:, row 5, col 7] as
    # (R, G, B).
    assert tuple(images[KNOWN_IMAGE, :, KNOWN_ROW, KNOWN_COL]) == KNOWN_RGB
    # batch 2, same slot
    assert tuple(images[10 + KNOWN_IMAGE, :, KNOWN_ROW, KNOWN_COL]) == KNOWN_RGB


def test_str_keys_variant(tmp_path):
    images, labels = load_cifar10(_write_python(tmp_path, str_keys=True), "train", check_md5=False)
    np.testing.assert_array_equal(images, _expected("train")[0])
    np.testing.assert_array_equal(labels, _expected("train")[1])


def test_md5_mismatch_names_file_expected_and_found(tmp_path):
    folder = _write_python(tmp_path)
    found = hashlib.md5((folder / "data_batch_1").read_bytes()).hexdigest()
    with pytest.raises(ValueError) as info:
        load_cifar10(folder)
    message = str(info.value)
    assert (
        "data_batch_1" in message
        and PYTHON_BATCH_MD5["data_batch_1"] in message
        and found in message
    )
    # a key users can set
    assert "data_check_md5: false" in message and "check_md5=False" not in message


def test_archive_md5_checked_for_official_name(tmp_path):
    archive = _tar_folder(_write_python(tmp_path / "x"), tmp_path / "cifar-10-python.tar.gz")
    # the dataset page's archive md5
    with pytest.raises(ValueError, match="c58f30108f718f92721af3b95e74349a"):
        load_cifar10(archive)


def test_binary_format_folder_and_tarball(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for index, name in enumerate(TRAIN_NAMES + ["test_batch"], start=1):
        data, labels = _batch_arrays(index)
        # (10, 3073)
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    archive = _tar_folder(folder, tmp_path / "cifar-10-binary.tar.gz")
    for source in (folder, tmp_path, archive):
        images, labels = load_cifar10(source, check_md5=False)
        np.testing.assert_array_equal(images, _expected("train")[0])
        np.testing.assert_array_equal(labels, _expected("train")[1])
        assert tuple(images[KNOWN_IMAGE, :, KNOWN_ROW, KNOWN_COL]) == KNOWN_RGB
    # dataset page binary md5
    with pytest.raises(ValueError, match="c32a1d4ab5d03f1284b67883e8d87530"):
        load_cifar10(archive)
    (folder / "test_batch.bin").write_bytes(b"\x00" * 100)  # not a whole record
    with pytest.raises(ValueError, match="3073-byte"):
        load_cifar10(folder, "test")


class _WritesFile:
    """Unpickling this would create `path` (open(path, "w")): a stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class _Rot13:
    def __reduce__(self):
        import codecs

        # pickled as _codecs.encode with a non-latin1 codec
        return codecs.encode, ("payload", "rot13")


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned.txt"
    folder = _write_python(tmp_path / "data")
    (folder / "data_batch_1").write_bytes(
        pickle.dumps({b"data": _WritesFile(target), b"labels": []}, protocol=2)
    )
    with pytest.raises(UnsafePickleError, match="refused"):
        load_cifar10(folder, check_md5=False)
    assert not target.exists()
    with pytest.raises(UnsafePickleError):
        restricted_loads(pickle.dumps(_WritesFile(target), protocol=4))
    assert not target.exists()
    with pytest.raises(UnsafePickleError, match="rot13"):
        restricted_loads(pickle.dumps(_Rot13(), protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")


def test_plain_arrays_still_load():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4):
        loaded = restricted_loads(pickle.dumps({"a": array, "b": [1, 2]}, protocol=protocol))
        np.testing.assert_array_equal(loaded["a"], array)


def test_detection_and_bad_inputs(tmp_path):
    folder = _write_python(tmp_path / "py")
    assert is_cifar10(folder) and is_cifar10(_tar_folder(folder, tmp_path / "a.tar.gz"))
    classes = tmp_path / "classes" / "cat"
    classes.mkdir(parents=True)
    (classes / "x.png").write_bytes(b"")
    assert not is_cifar10(tmp_path / "classes")
    with tarfile.open(tmp_path / "classes.tar.gz", "w:gz") as handle:
        handle.add(tmp_path / "classes", arcname="classes")
    assert not is_cifar10(tmp_path / "classes.tar.gz")
    with pytest.raises(ValueError, match="split"):
        load_cifar10(folder, "validation", check_md5=False)
    with pytest.raises(FileNotFoundError):
        load_cifar10(tmp_path / "missing")
    with pytest.raises(ValueError, match="no CIFAR-10 batches"):
        load_cifar10(tmp_path / "classes")
    (folder / "data_batch_2").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(ValueError, match="3072"):
        load_cifar10(folder, check_md5=False)


def test_load_dataset_cifar10_spec(tmp_path):
    images, labels, names = load_dataset("cifar10", _write_python(tmp_path), check_md5=False)
    assert images.shape == (50, 3, 32, 32) and names[0] == "airplane" and len(names) == 10
    with pytest.raises(FileNotFoundError, match="existing data path"):
        load_dataset("cifar10")


def test_tarball_is_read_without_extracting(tmp_path):
    (tmp_path / "arch").mkdir()
    archive = _tar_folder(_write_python(tmp_path / "src"), tmp_path / "arch" / "c.tar.gz")
    with tarfile.open(archive) as handle:  # the real member names
        assert {"cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"} <= set(
            handle.getnames()
        )
    load_cifar10(archive, check_md5=False)
    assert [p.name for p in (tmp_path / "arch").iterdir()] == ["c.tar.gz"]
