"""Convert a released DiT / SiT / REPA `.pt` checkpoint into a safetensors file twinflow-min loads.

    python tools/convert_checkpoint.py last.pt repa-sit-xl2.safetensors --convention repa [--dtype
    bf16|fp32]

TwinFlow (arXiv:2512.05150) Sec. 4 starts from pretrained flow models; this one-time step keeps the
runtime free of pickle. Facts mirrored: `willisma/SiT download.py` (weights may sit under "ema"),
`sihyun-yu/REPA generate.py` (`torch.load(ckpt)["ema"]`, training-only `projectors.*`, legacy
`decoder_blocks.*` renamed by `utils.py:: load_legacy_checkpoints`), `facebookresearch/DiT
download.py::find_model` (a plain state dict).

Time convention of twinflow-min: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data. The
file's own convention is recorded in the metadata: "sit" (willisma/SiT, x_t = t x + (1 - t) eps, F =
-model(x, 1 - t)), "repa" (same as ours), "dit" (DDPM epsilon prediction on 1000 linear-beta steps,
learned sigma; network time is the DDPM index, about 1000 t).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

if __package__ in (
    None,
    "",
):  # run as `python tools/convert_checkpoint.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twinflow_min.checkpoint import (
    META_ARCHITECTURE,
    META_PREDICTION_TYPE,
    META_TIME_CONVENTION,  # noqa: E402
    META_TIME_SCALE,
    CheckpointError,
    architecture_name,
    audit_keys,
    expected_shapes,
    infer_config_from_shapes,
)
from twinflow_min.checks import EXIT_REFUSED, is_count  # noqa: E402
from twinflow_min.model import config_to_metadata  # noqa: E402

# How each source family maps onto DiTConfig's time fields (SiT/REPA feed raw t, DiT
# the DDPM index; docs/math.md#model-inputs).
CONVENTIONS = {
    "sit": dict(time_convention="sit", time_scale=1.0, prediction_type="flow"),
    "repa": dict(time_convention="ours", time_scale=1.0, prediction_type="flow"),
    "dit": dict(time_convention="ours", time_scale=1000.0, prediction_type="epsilon"),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
WRAPPER_KEYS = (
    "ema",
    "model",
)  # training-script checkpoints: EMA weights preferred (they are the released ones)
TRAINING_ONLY_PREFIXES = (
    "projectors.",
)  # REPA's representation-alignment heads, unused at sampling time
FIXED_FLOAT32_KEYS = (
    "pos_embed",
)  # fixed 2-D sin-cos table: kept exact in float32 (1.2 MB at XL/2)
HASH_CHUNK_BYTES = 1 << 20


class ConversionError(CheckpointError):
    """A source checkpoint that cannot be converted."""


def load_pickled_checkpoint(path: str) -> object:
    """torch.load with weights_only=True (no arbitrary code), allowing the argparse.Namespace that
    SiT/REPA training scripts store under "args"."""
    if not os.path.isfile(path):
        raise ConversionError(f"no file at {path!r}")
    if not os.access(path, os.R_OK):
        raise ConversionError(f"cannot read {path!r}: permission denied")
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe_globals is not None:
            with safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refusals, bad zip archives and truncation all land here
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise ConversionError(
            f"cannot read {path!r} as a PyTorch checkpoint with weights_only=True "
            f"({first_line}); pass the released .pt file, or save its state dict with "
            f"torch.save(checkpoint['ema'], 'weights.pt') first"
        ) from None


def select_state_dict(checkpoint: object) -> tuple[dict, str]:
    """The weights inside a loaded checkpoint: a plain state dict, or the one under "ema"
    (preferred) / "model"."""
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ConversionError(
            f"expected a state dict or a dict holding one, got {type(checkpoint).__name__}"
        )
    if all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return dict(checkpoint), "state dict"
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), dict):
            return dict(checkpoint[key]), key
    raise ConversionError(
        f"no state dict found: top-level keys are {sorted(map(str, checkpoint))[:20]}; "
        f"expected tensors or one of {WRAPPER_KEYS}"
    )


def clean_state_dict(state: dict) -> tuple[dict, list[str], list[str]]:
    """Strip a DDP "module." prefix, rename legacy REPA `decoder_blocks.i` to `blocks.(i + encoder
    depth)`, drop training-only keys. Returns (state, dropped keys, renamed keys)."""
    state = {
        (key[len("module.") :] if key.startswith("module.") else key): value
        for key, value in state.items()
    }
    non_tensors = sorted(key for key, value in state.items() if not isinstance(value, torch.Tensor))
    if non_tensors:
        raise ConversionError(f"the state dict holds non-tensor entries {non_tensors[:10]}")
    dropped = sorted(key for key in state if key.startswith(TRAINING_ONLY_PREFIXES))
    state = {key: value for key, value in state.items() if key not in dropped}
    renamed = sorted(key for key in state if key.startswith("decoder_blocks."))
    if renamed:  # REPA utils.load_legacy_checkpoints: decoder block i follows the encoder blocks
        encoder_depth = 1 + max(
            (int(key.split(".")[1]) for key in state if key.startswith("blocks.")), default=-1
        )
        for key in renamed:
            _, index, rest = key.split(".", 2)
            state[f"blocks.{int(index) + encoder_depth}.{rest}"] = state.pop(key)
    return state, dropped, renamed


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_existing(out_path: str, overwrite: bool) -> None:
    if os.path.exists(out_path) and not overwrite:
        raise ConversionError(
            f"{out_path} already exists; pass --overwrite to replace it, or choose "
            f"another output path"
        )


def convert(
    in_path: str,
    out_path: str,
    convention: str,
    dtype: str = "bf16",
    num_heads: int | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Convert `in_path` (.pt) to `out_path` (.safetensors, written atomically); return a summary.

    Raises ConversionError (a CheckpointError) with one line for every input it cannot convert, an
    existing output without `overwrite`, and a `num_heads` that is not a positive divisor of the
    hidden size.
    """
    if convention not in CONVENTIONS:
        raise ConversionError(
            f"unknown convention {convention!r}; choose one of {sorted(CONVENTIONS)}"
        )
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if num_heads is not None and not is_count(num_heads):
        raise ConversionError(f"--num-heads must be a positive integer, got {num_heads!r}")
    if os.path.abspath(in_path) == os.path.abspath(out_path):
        raise ConversionError("the output path must differ from the input path")
    if os.path.isdir(out_path):
        raise ConversionError(
            f"{out_path} is a folder; give the output file's path, e.g. "
            f"{os.path.join(out_path, 'model.safetensors')}"
        )
    _refuse_existing(out_path, overwrite)
    state, weights = select_state_dict(load_pickled_checkpoint(in_path))
    state, dropped, renamed = clean_state_dict(state)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    hidden = shapes.get("x_embedder.proj.weight", (None,))[0]
    if num_heads is not None and hidden and hidden % num_heads:
        divisors = [d for d in range(1, 33) if hidden % d == 0]
        raise ConversionError(
            f"--num-heads {num_heads} does not divide the hidden size {hidden}; "
            f"use a divisor such as {divisors}"
        )
    overrides = dict(CONVENTIONS[convention])
    if num_heads is not None:
        overrides["num_heads"] = num_heads
    config, _ = infer_config_from_shapes(shapes, **overrides)
    audit_keys(
        expected_shapes(config), shapes, in_path
    )  # the converted file will load, or we stop here

    tensors = {}
    for key, value in state.items():
        target = torch.float32 if key in FIXED_FLOAT32_KEYS else DTYPES[dtype]
        value = value.detach().to(target) if value.is_floating_point() else value.detach()
        tensors[key] = value.contiguous().clone()  # own storage: safetensors refuses shared tensors
    architecture = architecture_name(config) + (" (REPA)" if convention == "repa" else "")
    metadata = {
        **config_to_metadata(config),
        META_ARCHITECTURE: architecture,
        META_TIME_CONVENTION: config.time_convention,
        META_PREDICTION_TYPE: config.prediction_type,
        META_TIME_SCALE: repr(config.time_scale),
        "twinflow_min.source_convention": convention,
        "twinflow_min.learn_sigma": str(config.learn_sigma).lower(),
        "twinflow_min.num_classes": str(config.num_classes),
        "twinflow_min.source_file": os.path.basename(in_path),
        "twinflow_min.source_sha256": sha256_of(in_path),
        "twinflow_min.source_weights": weights,
        "twinflow_min.dropped_keys": json.dumps(dropped),
        "twinflow_min.dtype": dtype,
    }
    try:
        _write_atomically(tensors, metadata, out_path, overwrite)
    except OSError as error:  # a read-only folder, a full disk, a parent that is a file
        raise ConversionError(f"cannot write {out_path}: {error.strerror or error}") from None
    return dict(
        architecture=architecture,
        weights=weights,
        tensors=len(tensors),
        dropped=dropped,
        renamed=renamed,
        parameters=sum(v.numel() for v in tensors.values()),
        metadata=metadata,
    )


def _write_atomically(tensors: dict, metadata: dict, out_path: str, overwrite: bool) -> None:
    """safetensors into a temporary file next to `out_path`, then os.replace: a crash never leaves a
    half-written output, and an existing file is replaced only with `overwrite`."""
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.basename(out_path) + "."
    handle, tmp_path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=out_dir)
    os.close(handle)
    try:
        save_file(tensors, tmp_path, metadata=metadata)
        _refuse_existing(
            out_path, overwrite
        )  # again: another program may have written it meanwhile
        os.replace(tmp_path, out_path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "input", help="released .pt checkpoint (plain state dict or a dict with 'ema'/'model')"
    )
    parser.add_argument("output", help="output .safetensors path")
    parser.add_argument(
        "--convention",
        required=True,
        choices=sorted(CONVENTIONS),
        help="sit: willisma/SiT; repa: sihyun-yu/REPA; dit: facebookresearch/DiT (epsilon)",
    )
    parser.add_argument(
        "--dtype", default="bf16", choices=sorted(DTYPES), help="stored dtype (default bf16)"
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="attention heads, only for widths other than the S/B/L/XL presets",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output file if it exists (refused otherwise)",
    )
    args = parser.parse_args(argv)
    try:
        summary = convert(
            args.input,
            args.output,
            args.convention,
            args.dtype,
            args.num_heads,
            overwrite=args.overwrite,
        )
    except CheckpointError as error:
        print(f"convert_checkpoint: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    print(
        f"wrote {args.output}: {summary['architecture']}, {summary['tensors']} tensors, "
        f"{summary['parameters']:,} parameters, {args.dtype}, weights from {summary['weights']!r}"
    )
    if summary["dropped"]:
        print(
            f"dropped {len(summary['dropped'])} training-only tensors: "
            f"{', '.join(summary['dropped'])}"
        )
    if summary["renamed"]:
        print(f"renamed {len(summary['renamed'])} legacy REPA decoder_blocks tensors to blocks.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
