"""train.py's side of `model_type: lora`: the base file's hash, adapters on the loaded model, what
trains, what a checkpoint holds, and resume.

TwinFlow (arXiv:2512.05150) Sec. 4 fine-tunes large pretrained flow models; the official code
does it with LoRA. The adapters, the shared-base EMA teacher (`LoRATeacher`) and the adapter file
format are twinflow_min/lora.py's; this module only connects them to the training loop:

- the base file (`pretrained_model_name_or_path`) is hashed once per run (`lora_base`); on resume
  its sha256 must equal the one in the run's checkpoint;
- `add_adapters` puts adapters on the model `data_sources.build_data_and_model` loaded; afterwards
  only the adapters and the TwinFlow embedders require grad, and `optimized_parameters` gives the
  optimizer just those (full fine-tuning: every parameter, as before);
- a LoRA run's checkpoint is an ordinary training checkpoint (same keys, resume, RNG and data
  states) whose `model.*` and `ema.teacher.*` tensors are only the trainable ones
  (`checkpoint_parts`), with the base file's path and sha256 in its metadata (`lora_metadata`);
  `sample.py` and `tools/merge_lora.py` read it as an adapter file.

Time convention of every model here: see twinflow_min/transport.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from twinflow_min.checks import CheckpointError
from twinflow_min.data_sources import SetupError
from twinflow_min.lora import (
    apply_lora,
    file_sha256,
    has_lora,
    is_adapter_file,
    load_trainable_state_dict,
    lora_metadata,
    read_adapter_info,
    trainable_parameters,
    trainable_state_dict,
)


@dataclass(frozen=True)
class LoRABase:
    """The base file a LoRA run adapts: its path as configured and its hex sha256."""

    path: str
    sha256: str


def lora_base(cfg, resume: dict | None) -> LoRABase | None:
    """The run's base file (hashed here, once per run), or None for full fine-tuning.

    `resume` is train.py's read checkpoint (with "path") or None. Raises SetupError (one line) when
    a LoRA run is resumed with model_type full or the other way round, and when the base file's
    sha256 differs from the one the resumed run was trained on.
    """
    resumed = None if resume is None else resume["path"]
    was_lora = resumed is not None and is_adapter_file(resumed)
    if cfg.model_type != "lora":
        if was_lora:
            raise SetupError(f"--resume {resumed}: this is a LoRA run's checkpoint (its base is "
                             f"not in it); resume it with model_type lora (drop --model_type)")
        return None
    path = cfg.pretrained_model_name_or_path
    if resumed is None:
        return LoRABase(path, file_sha256(path))
    if not was_lora:
        raise SetupError(f"--resume {resumed}: this run fine-tuned every weight (model_type full); "
                         f"resume it with model_type full (drop --model_type)")
    try:
        info = read_adapter_info(resumed)
    except CheckpointError as error:
        raise SetupError(f"--resume {resumed}: {error}") from None
    found = file_sha256(path)
    if found != info.base_sha256:
        raise SetupError(f"--resume {resumed}: base file {path!r} has sha256 {found[:16]}..., but "
                         f"this LoRA run was trained on {info.base_path!r} with sha256 "
                         f"{info.base_sha256[:16]}...; pass that file with --pretrained FILE")
    return LoRABase(path, info.base_sha256)


def add_adapters(cfg, model: nn.Module) -> list[str]:
    """`apply_lora` with the run's lora_* settings (A drawn from a generator seeded with cfg.seed,
    the global RNG untouched); prints one line on what trains; returns the adapted layers.

    Raises SetupError (one line) for a target pattern that matches no linear layer (the line lists
    the model's linear layers) and for a qkv adapter the one-token attention would skip.
    """
    try:
        layers = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                            cfg.lora_target_modules, seed=cfg.seed)
    except ValueError as error:
        raise SetupError(f"lora_target_modules = {cfg.lora_target_modules}: {error}") from None
    trained = sum(parameter.numel() for parameter in trainable_parameters(model))
    total = sum(parameter.numel() for parameter in model.parameters())
    settings = model.lora_settings
    print(f"LoRA: {len(layers)} linear layers adapted (rank {settings.rank}, alpha "
          f"{settings.alpha:g}); {trained:,} of {total:,} parameters train (adapters and the "
          f"TwinFlow embedders)")
    return layers


def optimized_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer gets: a LoRA model's trainable tensors, else every parameter."""
    if has_lora(model):
        return trainable_parameters(model)
    return list(model.parameters())


def checkpoint_parts(model: nn.Module, base: LoRABase) -> dict:
    """`save_checkpoint` keywords of a LoRA run: the trainable tensors as the model state, and the
    LoRA metadata (settings, base path made absolute, base sha256)."""
    return {"model_state": trainable_state_dict(model),
            "extra_metadata": lora_metadata(model, base.path, base.sha256)}


def load_model_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """A checkpoint's `model.*` tensors into `model`: the trainable tensors of a LoRA model
    (CheckpointError when they do not fit), else the whole state dict (strict)."""
    if has_lora(model):
        load_trainable_state_dict(model, state)
        return
    model.load_state_dict(state)

