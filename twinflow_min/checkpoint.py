"""Load pretrained DiT / SiT / REPA weights (and twinflow-min's own files) into our TwinFlow `DiT`.

TwinFlow (arXiv:2512.05150) Sec. 4 fine-tunes pretrained flow models (REPA SiT-XL/2 on ImageNet-256)
into one-step generators; this is the loading half. It mirrors the facts of `facebookresearch/DiT
download.py:: find_model` and `willisma/SiT download.py` (a state dict, possibly under "ema") and
nanoGPT's `from_pretrained` audit, but reads only safetensors: pickled `.pt` files go through
`tools/convert_checkpoint.py` once.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake
branch. A file's own convention ("sit": x_t = t x + (1 - t) eps, so F = -model(x, 1 - t); "ours":
REPA and TwinFlow; DiT epsilon prediction via diff2flow) is recorded in the model config;
`DiT.forward` translates.

The header is validated before any tensor is read: keys, shapes and dtypes, and that the file holds
every byte the header promises. Only the TwinFlow additions (`t_tgt_embedder.*`,
`t_sign_embedder.*`) may be missing from a pretrained file; they keep their initialisation
(zero-gated / zero), so with t_tgt = t the loaded model computes exactly the original network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from twinflow_min.checks import CheckpointError
from twinflow_min.model import (
    BACKBONE_SIZES,
    METADATA_KEY,
    DiT,
    DiTConfig,
    config_from_metadata,
    model_from_config,
)
from twinflow_min.train_state import FORMAT_KEY, FORMAT_VERSION

TWINFLOW_PREFIXES = (
    "t_tgt_embedder.",
    "t_sign_embedder.",
)  # new in TwinFlow: allowed to be missing
HEADER_LENGTH_BYTES = (
    8  # safetensors: little-endian u64 header size, JSON header, then the tensor data
)
HEADS_BY_HIDDEN = {
    hidden: heads for hidden, _, heads in BACKBONE_SIZES.values()
}  # DiT Table 1 / SiT presets
REQUIRED_KEYS = (
    "x_embedder.proj.weight",
    "t_embedder.mlp.0.weight",
    "final_layer.linear.weight",
    "pos_embed",
)
# Metadata written by tools/convert_checkpoint.py next to the model config.
META_TIME_CONVENTION = "twinflow_min.time_convention"
META_PREDICTION_TYPE = "twinflow_min.prediction_type"
LORA_METADATA_KEY = "twinflow_min.lora"  # an adapter file (lora.py): not a whole model
META_TIME_SCALE = "twinflow_min.time_scale"
META_ARCHITECTURE = "twinflow_min.architecture"


@dataclass
class LoadInfo:
    """What `load_pretrained` found, inferred and loaded."""

    path: str
    architecture: str
    config: DiTConfig
    source: str  # "twinflow-min config" | "inferred from shapes"
    weights: str  # "state dict" | "model" | "ema" (training checkpoints)
    file_dtypes: list[str]
    dtype: str
    loaded: int
    missing: list[str] = field(default_factory=list)  # TwinFlow keys left at their initialisation
    inferred: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.architecture} from {os.path.basename(self.path)} ({self.source}, "
            f"{self.weights}): "
            f"{self.loaded} tensors loaded ({'/'.join(self.file_dtypes)} -> {self.dtype}), "
            f"{len(self.missing)} TwinFlow tensors at init, time convention "
            f"{self.config.time_convention}, "
            f"prediction {self.config.prediction_type}"
        )


# ---------- header ----------
def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple], dict[str, str], dict[str, str]]:
    """(shapes, dtypes, metadata) of a safetensors file, reading no tensor data; raises
    CheckpointError when the file is missing, is not safetensors, or is shorter than its header says
    (a truncated download)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no file at {path!r}")
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(HEADER_LENGTH_BYTES)
        header_length = struct.unpack("<Q", prefix)[0] if len(prefix) == HEADER_LENGTH_BYTES else -1
        raw = handle.read(header_length) if 0 < header_length <= size else b""
    try:
        header = json.loads(raw)
    except ValueError:
        header = None
    entries = (
        {k: v for k, v in header.items() if k != "__metadata__"}
        if isinstance(header, dict)
        else None
    )
    if entries is None or not all(
        isinstance(v, dict) and {"shape", "dtype", "data_offsets"} <= set(v)
        for v in entries.values()
    ):
        hint = (
            " (a pickled .pt file: run tools/convert_checkpoint.py first)"
            if path.endswith((".pt", ".pth", ".ckpt", ".bin"))
            else ""
        )
        raise CheckpointError(
            f"{path!r} is not a safetensors file (or its header is cut short){hint}"
        )
    data_bytes = max((entry["data_offsets"][1] for entry in entries.values()), default=0)
    if size < HEADER_LENGTH_BYTES + header_length + data_bytes:
        raise CheckpointError(
            f"{path!r} is truncated: its header promises {data_bytes} bytes of tensor data but "
            f"only {size - HEADER_LENGTH_BYTES - header_length} are there; re-download or "
            "re-convert"
        )
    try:
        with safe_open(
            path, framework="pt"
        ) as handle:  # the library's own header validation; no tensor is read
            metadata = handle.metadata() or {}
            slices = {key: handle.get_slice(key) for key in handle.keys()}
            shapes = {key: tuple(piece.get_shape()) for key, piece in slices.items()}
            dtypes = {key: piece.get_dtype() for key, piece in slices.items()}
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{path!r} has a damaged safetensors header ({error})") from None
    return shapes, dtypes, metadata


# ---------- inference ----------
def _require_dit_layout(shapes: dict[str, tuple], where: str) -> None:
    """Raise "not a DiT/SiT checkpoint" unless the tensors every DiT/SiT state dict holds are
    there."""
    missing = [key for key in REQUIRED_KEYS if key not in shapes]
    if not missing:
        return
    sample = sorted(shapes)[:6]
    raise CheckpointError(
        f"{where} is not a DiT/SiT checkpoint (unknown layout: it lacks {missing}; "
        f"it has {len(shapes)} tensors, e.g. {sample}); twinflow-min loads "
        f"DiT/SiT/REPA weights and its own checkpoints"
    )


def infer_config_from_shapes(shapes: dict[str, tuple], **overrides) -> tuple[DiTConfig, dict]:
    """DiTConfig of a DiT/SiT/REPA state dict from its tensor shapes (+ DiTConfig overrides), and
    what was inferred.

    hidden = x_embedder.proj.weight[0], patch = its last dim, in_channels = its dim 1, depth =
    largest block index + 1, num_classes = label-table rows - 1, learn_sigma from final_layer.linear
    rows (2 p^2 C vs p^2 C), input_size = sqrt(pos_embed tokens) * patch, mlp_ratio = fc1 rows /
    hidden, num_heads from the presets by hidden size (shapes cannot tell; pass num_heads= for other
    widths).
    """
    _require_dit_layout(shapes, "this file")
    patch_weight = shapes["x_embedder.proj.weight"]
    if len(patch_weight) != 4 or patch_weight[2] != patch_weight[3]:
        raise CheckpointError(
            f"unknown layout: x_embedder.proj.weight {patch_weight} is not a square patch "
            f"convolution (vector-data models need the twinflow-min config metadata)"
        )
    hidden, in_channels, patch = patch_weight[0], patch_weight[1], patch_weight[2]
    block_indices = {int(m.group(1)) for key in shapes if (m := re.match(r"blocks\.(\d+)\.", key))}
    if not block_indices or block_indices != set(range(max(block_indices) + 1)):
        raise CheckpointError(
            f"unknown layout: transformer blocks {sorted(block_indices)} are not 0..N-1"
        )
    tokens = shapes["pos_embed"][1]
    grid = round(tokens**0.5)
    if grid * grid != tokens:
        raise CheckpointError(f"pos_embed has {tokens} tokens, not a square grid")
    out_features = shapes["final_layer.linear.weight"][0]
    if out_features not in (patch * patch * in_channels, 2 * patch * patch * in_channels):
        raise CheckpointError(
            f"final_layer.linear.weight has {out_features} rows; expected {patch}^2 x "
            f"{in_channels} (or twice that with learn_sigma)"
        )
    table = shapes.get("y_embedder.embedding_table.weight")
    inferred = dict(
        hidden_size=hidden,
        patch_size=patch,
        in_channels=in_channels,
        depth=max(block_indices) + 1,
        num_classes=table[0] - 1 if table else 0,
        input_size=grid * patch,
        learn_sigma=out_features == 2 * patch * patch * in_channels,
        mlp_ratio=shapes.get("blocks.0.mlp.fc1.weight", (4 * hidden,))[0] / hidden,
    )
    if "num_heads" not in overrides:
        if hidden not in HEADS_BY_HIDDEN:
            raise CheckpointError(
                f"cannot tell the number of attention heads for hidden size {hidden} (presets: "
                f"{HEADS_BY_HIDDEN}); pass num_heads= (convert_checkpoint.py: --num-heads)"
            )
        inferred["num_heads"] = HEADS_BY_HIDDEN[hidden]
    return _make_config({**inferred, **overrides}), inferred


def _make_config(fields: dict) -> DiTConfig:
    known = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(
            f"unknown DiTConfig field(s) {unknown}; known fields: {sorted(known)}"
        )
    try:
        return DiTConfig(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"invalid model config {fields}: {error}") from None


def expected_shapes(config: DiTConfig) -> dict[str, tuple]:
    """State-dict shapes of our DiT for `config`, built on the meta device (no memory, no init
    cost)."""
    with torch.device("meta"):
        return {
            key: tuple(value.shape) for key, value in model_from_config(config).state_dict().items()
        }


def audit_keys(expected: dict[str, tuple], found: dict[str, tuple], path: str) -> list[str]:
    """Raise listing every unexpected, wrongly shaped or (non-TwinFlow) missing key; return the
    missing TwinFlow keys, which keep their initialisation."""
    missing = sorted(set(expected) - set(found))
    missing_required = [key for key in missing if not key.startswith(TWINFLOW_PREFIXES)]
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{key}: expected {expected[key]}, found {found[key]}"
        for key in sorted(set(expected) & set(found))
        if tuple(found[key]) != expected[key]
    ]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {'; '.join(mismatched)}")
    if missing_required:
        problems.append(f"missing keys: {missing_required}")
    if unexpected:
        hint = (
            " (training-only REPA projectors: convert the .pt with tools/convert_checkpoint.py)"
            if any(key.startswith("projectors.") for key in unexpected)
            else ""
        )
        problems.append(f"unexpected keys{hint}: {unexpected}")
    if problems:
        raise CheckpointError(f"{path!r} does not match the model: " + " | ".join(problems))
    return missing


# ---------- loading ----------
def _select_weights(
    shapes: dict[str, tuple], metadata: dict, weights: str
) -> tuple[dict[str, str], str]:
    """Map model key -> file key. Training checkpoints hold "model.*" and "ema.<group>.*": pick
    one."""
    if metadata.get(FORMAT_KEY) != FORMAT_VERSION:
        if weights != "auto":
            raise CheckpointError(
                f"weights={weights!r} applies to twinflow-min training checkpoints only; this file "
                f"holds a single state dict (use weights='auto')"
            )
        return {key: key for key in shapes}, "state dict"
    model_keys = {key[len("model.") :]: key for key in shapes if key.startswith("model.")}
    ema_groups: dict[str, dict[str, str]] = {}
    for key in shapes:
        if key.startswith("ema.") and key.count(".") >= 2:
            group, rest = key[len("ema.") :].split(".", 1)
            ema_groups.setdefault(group, {})[rest] = key
    ema_keys = next((keys for keys in ema_groups.values() if set(keys) == set(model_keys)), None)
    choice = ("ema" if ema_keys else "model") if weights == "auto" else weights
    if choice not in ("model", "ema") or (choice == "ema" and ema_keys is None):
        raise CheckpointError(
            f"weights={weights!r}: this training checkpoint offers "
            f"{['model'] + (['ema'] if ema_keys else [])}"
        )
    return (ema_keys if choice == "ema" else model_keys), choice


def _config_for_file(
    shapes: dict[str, tuple], metadata: dict, overrides: dict
) -> tuple[DiTConfig, str, dict]:
    """The model config: from twinflow-min metadata when present, else inferred from the shapes."""
    if METADATA_KEY in metadata:
        try:
            base = dataclasses.asdict(config_from_metadata(metadata))
        except ValueError as error:
            raise CheckpointError(str(error)) from None
        return _make_config({**base, **overrides}), "twinflow-min config", {}
    time_fields = {
        "time_convention": metadata.get(META_TIME_CONVENTION),
        "prediction_type": metadata.get(META_PREDICTION_TYPE),
        "time_scale": float(metadata[META_TIME_SCALE]) if META_TIME_SCALE in metadata else None,
    }
    time_fields = {k: v for k, v in time_fields.items() if v is not None}
    if "time_convention" not in {**time_fields, **overrides} and "prediction_type" not in {
        **time_fields,
        **overrides,
    }:
        raise CheckpointError(
            "the file does not say its time convention: convert the original .pt with "
            "tools/convert_checkpoint.py --convention sit|repa|dit, or pass time_convention='sit' "
            "(willisma/SiT) / 'ours' (REPA) or prediction_type='epsilon' (DiT)"
        )
    config, inferred = infer_config_from_shapes(shapes, **{**time_fields, **overrides})
    return config, "inferred from shapes", inferred


def architecture_name(config: DiTConfig) -> str:
    """Preset-style name ("SiT-XL/2", "DiT-B/4") when the width/depth match a preset, else a
    description."""
    family = "DiT" if config.prediction_type != "flow" else "SiT"
    for size, (hidden, depth, _) in BACKBONE_SIZES.items():
        if (config.hidden_size, config.depth) == (hidden, depth):
            return f"{family}-{size}/{config.patch_size}"
    return (
        f"{family} (hidden {config.hidden_size}, depth {config.depth}, patch {config.patch_size})"
    )


def load_pretrained(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    weights: str = "auto",
    init_seed: int = 0,
    **overrides,
) -> tuple[DiT, LoadInfo]:
    """Build our DiT for a safetensors file and load its weights with a full audit: (model, info).

    Reads converted DiT/SiT/REPA files (tools/convert_checkpoint.py), plain DiT/SiT state dicts
    saved as safetensors (pass time_convention= / prediction_type=), and twinflow-min model or
    training checkpoints (config in metadata; `weights` = "auto" (EMA when present) | "model" |
    "ema"). `overrides` are DiTConfig fields (num_heads, gradient_checkpointing, use_time_sign,
    ...). Tensors are cast explicitly to `dtype` (a bf16 file gives float32 master weights by
    default). TwinFlow keys absent from the file are initialised from `init_seed` without touching
    the global RNG. The model is returned in training mode, like `build_model`.
    """
    path = os.fspath(path)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(
            f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}"
        )
    shapes, dtypes, metadata = read_header(path)
    if LORA_METADATA_KEY in metadata:
        raise CheckpointError(
            f"{path} is a LoRA adapter, not a whole model: sample it with sample.py, or merge it "
            f"into its base with python tools/merge_lora.py ADAPTER OUT.safetensors"
        )
    key_map, weights_used = _select_weights(shapes, metadata, weights)
    found = {model_key: shapes[file_key] for model_key, file_key in key_map.items()}
    _require_dit_layout(
        found, repr(path)
    )  # a foreign file is named as such, before its conventions
    config, source, inferred = _config_for_file(found, metadata, overrides)
    missing = audit_keys(expected_shapes(config), found, path)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = model_from_config(config)
    state = {}
    with safe_open(path, framework="pt") as handle:
        for model_key, file_key in key_map.items():
            state[model_key] = handle.get_tensor(file_key).to(dtype)
    result = model.to(dtype).load_state_dict(state, strict=False)
    if (
        result.unexpected_keys or sorted(result.missing_keys) != missing
    ):  # audit_keys already guarantees this
        raise CheckpointError(f"internal audit mismatch: {result}")
    model.to(device)
    info = LoadInfo(
        path=path,
        architecture=metadata.get(META_ARCHITECTURE, architecture_name(config)),
        config=config,
        source=source,
        weights=weights_used,
        file_dtypes=sorted({dtypes[k] for k in key_map.values()}),
        dtype=str(dtype).replace("torch.", ""),
        loaded=len(state),
        missing=missing,
        inferred=inferred,
    )
    return model, info
