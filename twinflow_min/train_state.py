"""Training checkpoints: one atomic safetensors file that holds everything a resumed run needs.

A checkpoint is `checkpoint.safetensors` (all tensors: model, EMA teacher, optimizer state, RNG states)
whose string metadata carries the model config (so `sample.py` rebuilds the model from the file alone),
the training config, the step, the optimizer's param groups, the data-order state and the EMA warm-up
state. Beside it, `checkpoint.json` repeats step and config for people (the safetensors file is the
authority). Both are written to a temporary file and moved into place with `os.replace`, so an
interrupted write leaves the previous checkpoint intact (convention 12: DiT `train.py`, edm
`training_loop.py`; the official TwinFlow code never checkpoints its EMA teacher).

No time arithmetic happens here; the project's convention is x_t = (1 - t) * x + t * z, t = 1 noise,
negative t the fake branch.
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

from twinflow_min.model import config_from_metadata, config_to_metadata

CHECKPOINT_NAME = "checkpoint.safetensors"
SUMMARY_NAME = "checkpoint.json"
FORMAT_KEY = "twinflow_min.format"
FORMAT_VERSION = "twinflow-min-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the run that wants to resume from it."""


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once (os.umask can only be read by setting it)


def _atomic_write(path: Path, write) -> None:
    """Write through `write(tmp_path)` into a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --------------------------------------------------------------------------------------------
# RNG states (explicit generators + the global CPU / accelerator streams)
# --------------------------------------------------------------------------------------------

def capture_rng_states(generators: dict[str, torch.Generator], device: torch.device) -> dict[str, torch.Tensor]:
    """The state of every named generator, of the global CPU stream and of the device's stream."""
    states = {f"rng.{name}": gen.get_state() for name, gen in generators.items()}
    states["rng.global_cpu"] = torch.get_rng_state()
    if device.type != "cpu":
        states[f"rng.global_{device.type}"] = torch.get_device_module(device.type).get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, torch.Tensor], generators: dict[str, torch.Generator],
                       device: torch.device) -> None:
    for name, gen in generators.items():
        key = f"rng.{name}"
        if key not in states:
            raise CheckpointError(f"checkpoint has no state for the '{name}' generator; it was written by "
                                  f"an incompatible version — start a fresh run instead of --resume")
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

def save_checkpoint(run_dir: str | Path, *, model: torch.nn.Module, ema=None, optimizer=None, step: int,
                    train_config: dict, data_state: dict | None = None,
                    rng_states: dict[str, torch.Tensor] | None = None, extra: dict | None = None) -> Path:
    """Atomically write `run_dir/checkpoint.safetensors` (+ `checkpoint.json`) and return its path."""
    run_dir = Path(run_dir)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = dict(config_to_metadata(model.config))
    metadata[FORMAT_KEY] = FORMAT_VERSION
    info: dict[str, Any] = {"step": int(step), "train_config": train_config, "data_state": data_state,
                            "extra": extra or {}}
    if ema is not None:
        ema_state = ema.state_dict()
        for key, value in ema_state.items():
            if isinstance(value, dict):
                tensors.update({f"ema.{key}.{k}": v.detach().contiguous() for k, v in value.items()})
            else:
                info.setdefault("ema", {})[key] = value
    if optimizer is not None:
        optimizer_tensors, info["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optimizer_tensors)
    tensors.update(rng_states or {})
    metadata["twinflow_min.train_state"] = json.dumps(info)
    path = run_dir / CHECKPOINT_NAME
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    summary = {"step": int(step), "checkpoint": CHECKPOINT_NAME, "train_config": train_config}
    _atomic_write(run_dir / SUMMARY_NAME, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    return path


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept a run directory or the checkpoint file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass a run directory that holds {CHECKPOINT_NAME} "
                              f"or the .safetensors file itself")
    return path


def saved_train_config(path: str | Path) -> dict:
    """The training config stored in a checkpoint's metadata (header only; no tensor is read)."""
    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:
        raise CheckpointError(f"cannot read {path} as safetensors ({error})") from None
    if metadata.get(FORMAT_KEY) != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a twinflow-min training checkpoint")
    return json.loads(metadata["twinflow_min.train_state"])["train_config"]


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint into {"model_config", "model", "ema", "optimizer", "rng", "info"}."""
    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for damaged files
        raise CheckpointError(f"cannot read {path} as safetensors ({error}); the file is damaged or not a "
                              f"twinflow-min checkpoint") from None
    if metadata.get(FORMAT_KEY) != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a twinflow-min training checkpoint (metadata {FORMAT_KEY!r} is "
                              f"{metadata.get(FORMAT_KEY)!r}); for pretrained weights use --pretrained")
    info = json.loads(metadata["twinflow_min.train_state"])
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optimizer": {}, "rng": {}}
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
    optimizer_state = _unflatten_optimizer(groups["optimizer"], info["optimizer"]) if "optimizer" in info else None
    return {"model_config": config_from_metadata(metadata), "model": groups["model"], "ema": ema_state,
            "optimizer": optimizer_state, "rng": groups["rng"], "info": info, "path": path}
