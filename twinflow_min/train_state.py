"""Training checkpoints: one atomic safetensors file that holds everything a resumed run needs.

A checkpoint is `checkpoint.safetensors` (all tensors: model, EMA teacher, optimizer state, RNG
states) whose string metadata carries the model config (so `sample.py` rebuilds the model from the
file alone), the training config, the step, the optimizer's param groups, the data-order state and
the EMA warm-up state. Beside it, `checkpoint.json` repeats step and config for people (the
safetensors file is the authority). Both are first written in full to temporary files beside them,
then moved into place with `os.replace`, the tensors first and the summary right after: an
interrupted write leaves the previous checkpoint intact, and a kill between the two moves (a window
of one system call) leaves a summary one step behind, which the next start rewrites from the tensors
(`twinflow_min.run_dir.clean_resumed_folder`). The official TwinFlow code never checkpoints its EMA
teacher; DiT `train.py` and edm `training_loop.py` checkpoint the same pieces as here.

No time arithmetic happens here (time convention: see twinflow_min/transport.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from twinflow_min.checks import CheckpointError
from twinflow_min.model import config_from_metadata, config_to_metadata

CHECKPOINT_NAME = "checkpoint.safetensors"
SUMMARY_NAME = "checkpoint.json"
FORMAT_KEY = "twinflow_min.format"
FORMAT_VERSION = "twinflow-min-checkpoint-1"


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once (os.umask can only be read by setting it)


def _write_temporary(path: Path, write) -> str:
    """Write through `write(tmp_path)` into a temporary file `<name>.<random>.tmp` beside `path`.

    Returns the temporary path; on any failure the temporary file is removed and the error
    re-raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def write_summary(run_dir: str | Path, summary: dict) -> Path:
    """Atomically write `run_dir/checkpoint.json` (the people-readable step and config)."""
    path = Path(run_dir) / SUMMARY_NAME
    text = json.dumps(summary, indent=2)
    os.replace(_write_temporary(path, lambda tmp: Path(tmp).write_text(text)), path)
    return path


def summary_of(step: int, train_config: dict) -> dict:
    """The contents of checkpoint.json for a checkpoint at `step`."""
    return {"step": int(step), "checkpoint": CHECKPOINT_NAME, "train_config": train_config}


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


# --------------------------------------------------------------------------------------------
# RNG states (explicit generators + the global CPU / accelerator streams)
# --------------------------------------------------------------------------------------------

def capture_rng_states(generators: dict[str, torch.Generator],
                       device: torch.device) -> dict[str, torch.Tensor]:
    """The state of every named generator, of the global CPU stream and of the device's stream."""
    states = {f"rng.{name}": gen.get_state() for name, gen in generators.items()}
    states["rng.global_cpu"] = torch.get_rng_state()
    if device.type != "cpu":
        module = torch.get_device_module(device.type)
        states[f"rng.global_{device.type}"] = module.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, torch.Tensor], generators: dict[str, torch.Generator],
                       device: torch.device) -> None:
    for name, gen in generators.items():
        key = f"rng.{name}"
        if key not in states:
            raise CheckpointError(f"checkpoint has no state for the '{name}' generator; it was "
                                  f"written by an incompatible version: start a fresh run instead "
                                  f"of --resume")
        gen.set_state(states[key])
    torch.set_rng_state(states["rng.global_cpu"])
    key = f"rng.global_{device.type}"
    if device.type != "cpu" and key in states:
        torch.get_device_module(device.type).set_rng_state(states[key], device)


# --------------------------------------------------------------------------------------------
# Optimizer state <-> flat tensors + JSON
# --------------------------------------------------------------------------------------------

def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in info["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------

def save_checkpoint(run_dir: str | Path, *, model: torch.nn.Module, ema=None, optimizer=None,
                    step: int, train_config: dict, data_state: dict | None = None,
                    rng_states: dict[str, torch.Tensor] | None = None,
                    extra: dict | None = None, model_state: dict[str, torch.Tensor] | None = None,
                    extra_metadata: dict[str, str] | None = None) -> Path:
    """Atomically write `run_dir/checkpoint.safetensors` (+ `checkpoint.json`); returns its path.

    `model_state` replaces `model.state_dict()` as the `model.*` tensors and `extra_metadata` joins
    the file's metadata: a LoRA run saves only its trainable tensors plus its base file's path and
    sha256 (twinflow_min/lora_training.py).
    """
    run_dir = Path(run_dir)
    state = model.state_dict() if model_state is None else model_state
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in state.items()}
    metadata = {**config_to_metadata(model.config), **(extra_metadata or {})}
    metadata[FORMAT_KEY] = FORMAT_VERSION
    info: dict[str, Any] = {"step": int(step), "train_config": train_config,
                            "data_state": data_state, "extra": extra or {}}
    if ema is not None:
        for key, value in ema.state_dict().items():
            if isinstance(value, dict):
                tensors.update({f"ema.{key}.{k}": v.detach().contiguous()
                                for k, v in value.items()})
            else:
                info.setdefault("ema", {})[key] = value
    if optimizer is not None:
        optimizer_tensors, info["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optimizer_tensors)
    tensors.update(rng_states or {})
    metadata["twinflow_min.train_state"] = json.dumps(info)
    path, summary_path = run_dir / CHECKPOINT_NAME, run_dir / SUMMARY_NAME
    summary = json.dumps(summary_of(step, train_config), indent=2)
    tmp_tensors = _write_temporary(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    try:
        tmp_summary = _write_temporary(summary_path, lambda tmp: Path(tmp).write_text(summary))
    except BaseException:
        _remove(tmp_tensors)
        raise
    os.replace(tmp_tensors, path)  # the tensors are the authority: they move first,
    os.replace(tmp_summary, summary_path)  # and the summary follows at once
    return path


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept a run directory or the checkpoint file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass a run directory that holds "
                              f"{CHECKPOINT_NAME} or the .safetensors file itself")
    return path


def _train_state(path: Path, metadata: dict) -> dict:
    """The JSON training state in a checkpoint's metadata; CheckpointError if absent or damaged."""
    if metadata.get(FORMAT_KEY) != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a twinflow-min training checkpoint (metadata "
                              f"{FORMAT_KEY!r} is {metadata.get(FORMAT_KEY)!r}); for pretrained "
                              f"weights use --pretrained")
    try:
        info = json.loads(metadata["twinflow_min.train_state"])
        missing = [key for key in ("step", "train_config") if key not in info]
    except (KeyError, TypeError, json.JSONDecodeError):
        missing = ["twinflow_min.train_state"]
    if missing:
        raise CheckpointError(f"{path}: the training state in its metadata is damaged (no "
                              f"{missing[0]}); start a fresh run")
    return info


def saved_train_config(path: str | Path) -> dict:
    """The training config stored in a checkpoint's metadata (header only; no tensor is read)."""
    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several types for damaged files
        raise CheckpointError(f"cannot read {path} as safetensors ({error})") from None
    return _train_state(path, metadata)["train_config"]


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint: {"model_config", "model", "ema", "optimizer", "rng", "info",
    "path"}."""
    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for damaged files
        raise CheckpointError(f"cannot read {path} as safetensors ({error}); the file is damaged "
                              f"or not a twinflow-min checkpoint") from None
    info = _train_state(path, metadata)
    groups: dict[str, dict[str, torch.Tensor]] = {name: {} for name in ("model", "ema",
                                                                        "optimizer", "rng")}
    for key, value in tensors.items():
        prefix = key.split(".", 1)[0]
        if prefix == "rng":
            groups["rng"][key] = value
        elif prefix == "optimizer":
            groups["optimizer"][key] = value
        else:
            groups[prefix][key.split(".", 1)[1]] = value
    ema_state = None
    if groups["ema"] or "ema" in info:
        nested: dict[str, Any] = dict(info.get("ema", {}))
        for key, value in groups["ema"].items():
            outer, inner = key.split(".", 1)
            nested.setdefault(outer, {})[inner] = value
        ema_state = nested
    optimizer_state = None
    if "optimizer" in info:
        optimizer_state = _unflatten_optimizer(groups["optimizer"], info["optimizer"])
    return {"model_config": config_from_metadata(metadata), "model": groups["model"],
            "ema": ema_state, "optimizer": optimizer_state, "rng": groups["rng"], "info": info,
            "path": path}
