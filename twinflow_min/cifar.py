"""CIFAR-10 readers: the official python pickles and the binary records, without running pickled
code.

Paper: TwinFlow (arXiv:2512.05150), Sec. 4 (experiments); CIFAR-10 is this project's small
real-image set. The official TwinFlow code has no CIFAR reader (its tutorial uses torchvision's
MNIST); the file formats, member names and md5 sums are those of the dataset page
(cs.toronto.edu/~kriz/cifar.html) and of torchvision `datasets/cifar.py::CIFAR10`. This module
touches no time variable and no model.

Accepted inputs for `load_cifar10(path)`:
    cifar-10-python.tar.gz          read member by member inside the archive (nothing is extracted
        to disk)
    cifar-10-batches-py/ (or parent) the extracted python folder
    cifar-10-binary.tar.gz          the binary variant: records of <1 label byte><3072 pixel bytes>
    cifar-10-batches-bin/ (or parent) the extracted binary folder
A row of 3072 bytes is 1024 R, then 1024 G, then 1024 B values, each plane 32x32 row-major, so
`reshape(-1, 3, 32, 32)` gives NCHW images.

Pickles can run arbitrary code when loaded; `RestrictedUnpickler` only resolves the globals that a
numpy array needs and refuses everything else with `UnsafePickleError`.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

try:  # numpy >= 2 keeps the array reconstructor in numpy._core (numpy.core is a deprecated alias)
    from numpy._core import multiarray as _numpy_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _numpy_multiarray

CIFAR10_CLASSES = (
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
)
IMAGE_SHAPE = (3, 32, 32)
PIXELS_PER_IMAGE = 3 * 32 * 32  # 3072 bytes per row / record
BINARY_RECORD_BYTES = (
    1 + PIXELS_PER_IMAGE
)  # <1 label byte><3072 pixel bytes> (dataset page, "binary version")
PYTHON_FOLDER, BINARY_FOLDER = "cifar-10-batches-py", "cifar-10-batches-bin"
PYTHON_BATCHES = {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]}
BINARY_BATCHES = {"train": [f"data_batch_{k}.bin" for k in range(1, 6)], "test": ["test_batch.bin"]}

# Per-file md5 of the python batches (torchvision `CIFAR10.train_list` / `test_list`).
PYTHON_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# md5 of the official archives, checked when the file carries the official name (dataset page
# table).
ARCHIVE_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
}
_MD5_HINT = (
    "re-download the file, or skip the check with the config key data_check_md5: false "
    "(CLI --data_check_md5 false), e.g. for your own re-packed copy"
)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the numpy-array allow-list (it could have run code)."""


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for `_codecs.encode`, which Python 3 protocol-2 pickles use to store `bytes`; latin1
    only."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise UnsafePickleError(
            f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only latin1 "
            f"text-to-bytes is allowed"
        )
    return text.encode("latin1")


# Every global a plain numpy array (and bytes written by Python 3 with protocol 2) needs; nothing
# else.
_ALLOWED_GLOBALS = {
    (
        "numpy.core.multiarray",
        "_reconstruct",
    ): _numpy_multiarray._reconstruct,  # Python 2 / numpy 1 pickles
    (
        "numpy._core.multiarray",
        "_reconstruct",
    ): _numpy_multiarray._reconstruct,  # numpy >= 2 pickles
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode_latin1,
}


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only the numpy-array globals in `_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load global {module}.{name}: only numpy array reconstruction is "
                "allowed in a "
                f"CIFAR-10 batch, so this file is not a genuine CIFAR-10 pickle (it could run code)"
            ) from None


def restricted_loads(payload: bytes) -> object:
    """Unpickle `payload` with `RestrictedUnpickler`; Python-2 strings come back as bytes."""
    return RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()


def _check_md5(payload: bytes, expected: str, what: str) -> None:
    found = hashlib.md5(payload).hexdigest()
    if found != expected:
        raise ValueError(
            f"md5 mismatch for {what}: expected {expected}, found {found}; {_MD5_HINT}"
        )


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_python_batch(payload: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from one pickled batch dict (bytes or str
    keys)."""
    batch = restricted_loads(payload)
    if not isinstance(batch, dict):
        raise ValueError(
            f"{what} is not a CIFAR-10 batch: it unpickles to {type(batch).__name__}, not a dict"
        )
    batch = {
        key.decode("latin1") if isinstance(key, bytes) else key: value
        for key, value in batch.items()
    }
    if "data" not in batch or "labels" not in batch:
        raise ValueError(
            f"{what} has keys {sorted(batch)}; a CIFAR-10 batch needs 'data' and 'labels'"
        )
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS_PER_IMAGE:
        raise ValueError(
            f"{what}: 'data' must be uint8 (N, {PIXELS_PER_IMAGE}), got {data.dtype} {data.shape}"
        )
    labels = np.asarray(batch["labels"], dtype=np.int64)  # (N,)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{what}: {labels.shape} labels for {data.shape[0]} images")
    return data.reshape(-1, *IMAGE_SHAPE), labels  # (N, 3, 32, 32): R plane, G plane, B plane


def _parse_binary_batch(payload: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) from records of <1 label byte><3072 pixel bytes>."""
    if len(payload) == 0 or len(payload) % BINARY_RECORD_BYTES:
        raise ValueError(
            f"{what} has {len(payload)} bytes, not a whole number of {BINARY_RECORD_BYTES}-byte "
            f"CIFAR-10 records"
        )
    records = np.frombuffer(payload, dtype=np.uint8).reshape(-1, BINARY_RECORD_BYTES)  # (N, 3073)
    images = records[:, 1:].reshape(-1, *IMAGE_SHAPE).copy()  # (N, 3, 32, 32)
    return images, records[:, 0].astype(np.int64)  # (N,)


def _tar_batches(archive: tarfile.TarFile) -> tuple[str, dict[str, tarfile.TarInfo]]:
    """(format, {batch file name: member}) for the CIFAR batches inside an open archive ("" if
    none)."""
    for fmt, folder, batches in (
        ("python", PYTHON_FOLDER, PYTHON_BATCHES),
        ("binary", BINARY_FOLDER, BINARY_BATCHES),
    ):
        wanted = {name for names in batches.values() for name in names}
        members = {
            Path(m.name).name: m
            for m in archive.getmembers()
            if m.isfile() and Path(m.name).parent.name == folder and Path(m.name).name in wanted
        }
        if members:
            return fmt, members
    return "", {}


def _folder_format(folder: Path) -> str:
    """ "python" / "binary" when `folder` itself holds CIFAR batch files, else ""."""
    for fmt, batches in (("python", PYTHON_BATCHES), ("binary", BINARY_BATCHES)):
        if any((folder / name).is_file() for names in batches.values() for name in names):
            return fmt
    return ""


def _locate(path: Path) -> tuple[str, Path]:
    """("tar", archive) or ("python" | "binary", batch folder) for any accepted CIFAR-10 input."""
    if path.is_file() and tarfile.is_tarfile(path):
        return "tar", path
    if path.is_dir():
        for candidate in (path, path / PYTHON_FOLDER, path / BINARY_FOLDER):
            if candidate.is_dir() and _folder_format(candidate):
                return _folder_format(candidate), candidate
        for archive_name in ARCHIVE_MD5:
            if (path / archive_name).is_file():
                return "tar", path / archive_name
        raise ValueError(
            f"{path} holds no CIFAR-10 batches: expected {PYTHON_FOLDER}/data_batch_1..5, "
            f"{BINARY_FOLDER}/data_batch_1..5.bin or an official .tar.gz inside it"
        )
    raise FileNotFoundError(f"CIFAR-10 path {path} does not exist or is not a folder / tar archive")


def is_cifar10(path) -> bool:
    """True when `path` is one of the CIFAR-10 forms `load_cifar10` accepts (False for a class
    folder)."""
    try:
        kind, location = _locate(Path(path))
        if kind != "tar":
            return True
        with tarfile.open(location, "r:*") as archive:
            for member in (
                archive
            ):  # lazy scan: stops at the first batch, or the first image (a class folder)
                member_path = Path(member.name)
                if member_path.parent.name in (
                    PYTHON_FOLDER,
                    BINARY_FOLDER,
                ) and member_path.name.startswith(("data_batch_", "test_batch")):
                    return True
                if member_path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                    return False
    except (ValueError, OSError, tarfile.TarError):
        return False
    return False


ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)  # cut or damaged archives


def _read_tar_batches(location: Path, split: str, payloads: dict[str, bytes]) -> str:
    """Fill `payloads` with the split's batch files from a tar archive; return its format.

    A truncated or damaged archive raises one ValueError line.
    """
    try:
        with tarfile.open(location, "r:*") as archive:
            fmt, members = _tar_batches(archive)
            if not fmt:
                raise ValueError(
                    f"{location} is an archive without {PYTHON_FOLDER}/ or "
                    f"{BINARY_FOLDER}/ batches; give the official "
                    f"cifar-10-python.tar.gz or cifar-10-binary.tar.gz"
                )
            for name in (PYTHON_BATCHES if fmt == "python" else BINARY_BATCHES)[split]:
                if name not in members:
                    raise ValueError(
                        f"{location} has no member .../{name} (needed for split {split!r})"
                    )
                payloads[name] = archive.extractfile(members[name]).read()
    except ARCHIVE_ERRORS as error:
        raise ValueError(
            f"{location} is a truncated or damaged archive ({type(error).__name__}: "
            f"{error}); download it again"
        ) from None
    return fmt


def load_cifar10(
    path, split: str = "train", *, check_md5: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 `split` ("train": 50,000 or "test": 10,000) as (uint8 (N, 3, 32, 32), int64 (N,)).

    `path`: cifar-10-python.tar.gz, cifar-10-binary.tar.gz, their extracted folders, or a folder
    holding one of them. With `check_md5` the python batches are checked against torchvision's
    per-file md5 sums, and an archive with an official file name against the dataset page's md5 (the
    binary batches have no per-file md5); a mismatch raises ValueError. Mirrors torchvision
    `CIFAR10.__init__` (batch order data_batch_1..5, labels from `labels`).
    """
    if split not in PYTHON_BATCHES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    kind, location = _locate(Path(path))
    payloads: dict[str, bytes] = {}  # batch file name -> raw bytes, in the official batch order
    if kind == "tar":
        if check_md5 and location.name in ARCHIVE_MD5:
            found = _file_md5(location)
            if found != ARCHIVE_MD5[location.name]:
                raise ValueError(
                    f"md5 mismatch for {location}: expected {ARCHIVE_MD5[location.name]}, "
                    f"found {found}; {_MD5_HINT}"
                )
        fmt = _read_tar_batches(location, split, payloads)
    else:
        fmt = kind
        for name in (PYTHON_BATCHES if fmt == "python" else BINARY_BATCHES)[split]:
            if not (location / name).is_file():
                raise FileNotFoundError(
                    f"missing CIFAR-10 batch {location / name} (needed for split {split!r})"
                )
            payloads[name] = (location / name).read_bytes()
    images, labels = [], []
    for name, payload in payloads.items():
        what = f"{location}:{name}" if kind == "tar" else str(location / name)
        if fmt == "python":
            if check_md5:
                _check_md5(payload, PYTHON_BATCH_MD5[name], what)
            batch_images, batch_labels = _parse_python_batch(payload, what)
        else:
            batch_images, batch_labels = _parse_binary_batch(payload, what)
        images.append(batch_images)
        labels.append(batch_labels)
    labels_all = np.concatenate(labels)  # (N,)
    if labels_all.size == 0:
        raise ValueError(f"{location} holds CIFAR-10 batches with no images")
    if labels_all.min() < 0 or labels_all.max() >= len(CIFAR10_CLASSES):
        raise ValueError(
            f"CIFAR-10 labels must lie in 0..9, found {labels_all.min()}..{labels_all.max()}"
        )
    return np.concatenate(images), labels_all  # (N, 3, 32, 32), (N,)
