"""LoRA adapters for TwinFlow fine-tuning of pretrained DiT / SiT; an EMA teacher sharing the base.

TwinFlow (arXiv:2512.05150) Sec. 4 fine-tunes large pretrained flow models; the official code trains
them with LoRA. An adapted linear layer computes (LoRA, Hu et al. 2021, Eq. 3)

    W x + b + (alpha / rank) * B A dropout(x),    A: (rank, in), B: (out, rank),

with A initialised like nn.Linear's weight and B at zero, so a fresh adapter leaves every output
bit-identical. Base tensors keep their state-dict keys (`blocks.0.attn.qkv.weight`); the adapter
adds `blocks.0.attn.qkv.lora_A` and `blocks.0.attn.qkv.lora_B`.

What trains: the adapters, plus, in full, the TwinFlow additions a pretrained file lacks:
`t_tgt_embedder.*` and `t_sign_embedder.*` (model.py). Everything else has requires_grad False.

Target patterns (`apply_lora`): a pattern is one or more dotted name components; it matches an
`nn.Linear` whose dotted name contains those components as a contiguous run of whole components.
"qkv" matches `blocks.3.attn.qkv`, "attn.proj" matches `blocks.3.attn.proj`, "adaLN_modulation"
matches the Linears `blocks.i.adaLN_modulation.1` and `final_layer.adaLN_modulation.1`. "proj" does
not match `x_embedder.proj` of an image model (a Conv2d) but does in a vector-data model (a Linear).
Linears inside the TwinFlow embedders are never adapted: they train in full. The default targets
("qkv", "proj", "fc1", "fc2", "adaLN_modulation") adapt, for every block i, `blocks.i.attn.qkv`,
`blocks.i.attn.proj`, `blocks.i.mlp.fc1`, `blocks.i.mlp.fc2`, `blocks.i.adaLN_modulation.1`, and
`final_layer.adaLN_modulation.1`; the patch embedding, position table, `t_embedder`, label table and
`final_layer.linear` stay frozen as they are.

The teacher (`LoRATeacher`) is an EMA over only the trainable tensors (ema.py's `EMATeacher`
update and official warm-up, docs/math.md#ema-teacher); its forward runs the one shared frozen base
with the EMA values through `torch.func.functional_call`, so there is no second copy of the base.

Files (`save_adapter`): only trainable tensors, as `model.<name>` and, with a teacher,
`ema.teacher.<name>` (the training-checkpoint key scheme), plus metadata holding the base file's
path and sha256, rank, alpha, dropout, targets and adapted layers. `load_adapter` refuses a base
whose sha256 differs.

Time convention of every model here: see twinflow_min/transport.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as functional
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from twinflow_min.checkpoint import (
    LORA_METADATA_KEY,
    TWINFLOW_PREFIXES,
    load_pretrained,
    read_header,
)
from twinflow_min.checks import CheckpointError, is_count, is_real
from twinflow_min.ema import EMATeacher
from twinflow_min.model import METADATA_KEY, config_from_metadata, config_to_metadata
from twinflow_min.train_state import FORMAT_KEY

DEFAULT_TARGETS = ("qkv", "proj", "fc1", "fc2", "adaLN_modulation")
ADAPTER_NAMES = ("lora_A", "lora_B")
ADAPTER_FORMAT = "twinflow-min-lora-adapter-1"  # FORMAT_KEY of a file written by save_adapter
EMA_METADATA_KEY = "twinflow_min.lora_ema"  # JSON: the teacher's decay and warm-up state
MODEL_PREFIX = "model."  # file keys of the trainable tensors (as in training checkpoints)
EMA_PREFIX = "ema.teacher."  # file keys of the teacher values (EMATeacher.state_dict()["teacher"])
HASH_CHUNK_BYTES = 1 << 20
WEIGHT_CHOICES = ("auto", "ema", "model")
NOT_ARCHITECTURE = ("gradient_checkpointing",)  # DiTConfig fields that may differ from the base's
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # the process umask, read once at import (reading it means setting it)


# ----------------------------------------------------------------------------------------- layer
class LoRALinear(nn.Module):
    """`W x + b + (alpha / rank) * B A dropout(x)` around a frozen linear layer (LoRA Eq. 3).

    x: (..., in_features) -> (..., out_features). `weight` and `bias` are the base layer's own
    Parameters (shared, not copied), so their state-dict keys do not change. `lora_A` (rank, in) is
    initialised like nn.Linear's weight, kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(in)),
    drawn from the CPU `generator`; `lora_B` (out, rank) starts at zero.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 generator: torch.Generator):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        dtype, device = base.weight.dtype, base.weight.device
        lora_A = torch.empty(rank, self.in_features, dtype=dtype)  # CPU, like the generator
        nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(lora_A.to(device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=dtype, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = functional.linear(x, self.weight, self.bias)  # (..., out)
        low_rank = functional.linear(self.dropout(x), self.lora_A)  # (..., rank)
        return out + self.scaling * functional.linear(low_rank, self.lora_B)  # (..., out)

    def merged_weight(self) -> Tensor:
        """W + (alpha / rank) B A: (out, in), summed in at least float32, returned in W's dtype."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        delta = self.scaling * (self.lora_B.to(dtype) @ self.lora_A.to(dtype))  # (out, in)
        return (self.weight.to(dtype) + delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, alpha={self.alpha:g}")


@dataclass
class LoRASettings:
    """What `apply_lora` did; kept as `model.lora_settings` and written into adapter files."""

    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]
    layers: list[str]  # the adapted Linear layers, in module order


# ----------------------------------------------------------------------------------------- patterns
def _matches(name: str, pattern: str) -> bool:
    """True when `pattern`'s components are a contiguous run of whole components of `name`."""
    parts, wanted = name.split("."), pattern.split(".")
    width = len(wanted)
    return any(parts[i:i + width] == wanted for i in range(len(parts) - width + 1))


def _adaptable_linears(model: nn.Module) -> list[str]:
    """Names of the nn.Linear layers open to LoRA: all but those in the fully trained embedders."""
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and not (name + ".").startswith(TWINFLOW_PREFIXES)]


def _describe_layers(names: list[str]) -> str:
    """One line: 'blocks.N.attn.qkv, ..., final_layer.linear (N = 0..11)'."""
    generic = dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.N.", name) for name in names)
    blocks = sorted({int(name.split(".")[1]) for name in names if re.match(r"blocks\.\d+\.", name)})
    suffix = f" (N = {blocks[0]}..{blocks[-1]})" if blocks else ""
    return ", ".join(generic) + suffix


def _check_lora_arguments(rank, alpha, dropout, target_modules) -> list[str]:
    if not is_count(rank):
        raise ValueError(f"lora rank must be an integer >= 1, got {rank!r}")
    if alpha is not None and not (is_real(alpha) and alpha > 0):
        raise ValueError(f"lora alpha must be a number > 0 (or None = rank), got {alpha!r}")
    if not (is_real(dropout) and 0.0 <= dropout < 1.0):
        raise ValueError(f"lora dropout must be a number in [0, 1), got {dropout!r}")
    if isinstance(target_modules, str) or not isinstance(target_modules, (list, tuple)):
        raise ValueError(f"lora target modules must be a list of module-name patterns such as "
                         f"{list(DEFAULT_TARGETS)}, got {target_modules!r}")
    bad = [p for p in target_modules if not isinstance(p, str) or "" in p.split(".")]
    if not target_modules or bad:
        raise ValueError(f"lora target modules must be a non-empty list of dotted module-name "
                         f"patterns such as {list(DEFAULT_TARGETS)}; bad: {bad or 'empty list'}")
    return list(target_modules)


def _one_token(model: nn.Module) -> bool:
    """True for a DiT whose samples are one token: vector data, or input_size == patch_size."""
    config = getattr(model, "config", None)
    if getattr(config, "data_dim", 0) > 0:
        return True
    return getattr(config, "input_size", 0) == getattr(config, "patch_size", -1)


def _skipped_qkv(model: nn.Module, layers: list[str]) -> str | None:
    """The first adapted `qkv` whose parent never calls it on one token, else None.

    model.py's Attention reads `qkv.weight` directly for a single token, so an adapter there would
    be silently ignored. Checked by running each such parent on one token, watching for the call.
    """
    if not _one_token(model):
        return None
    for name in layers:
        parent_name, _, leaf = name.rpartition(".")
        if leaf != "qkv":
            continue
        parent, layer = model.get_submodule(parent_name), model.get_submodule(name)
        entered = []
        handle = layer.register_forward_hook(lambda *_: entered.append(True))
        weight = layer.weight
        probe = torch.zeros(1, 1, layer.in_features, dtype=weight.dtype, device=weight.device)
        try:
            with torch.no_grad():
                parent(probe)
        finally:
            handle.remove()
        if not entered:
            return name
    return None


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


# ----------------------------------------------------------------------------------------- apply
def has_lora(model: nn.Module) -> bool:
    """True when `model` holds at least one LoRALinear."""
    return any(isinstance(module, LoRALinear) for module in model.modules())


def apply_lora(model: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
               target_modules=DEFAULT_TARGETS, *, seed: int = 0) -> list[str]:
    """Wrap the matching nn.Linear layers of `model` in LoRALinear, in place; return their names.

    rank >= 1; alpha > 0, or None for alpha = rank (scale 1); dropout in [0, 1), on the adapter
    input only; target_modules: patterns, matched as the module docstring says. The A matrices are
    drawn in layer order from a CPU generator seeded with `seed` (the global RNG is untouched).
    Afterwards only `trainable_names(model)` (adapters, `t_tgt_embedder`, `t_sign_embedder`) require
    grad, and `model.lora_settings` holds a LoRASettings.

    Raises ValueError (one line) for bad arguments, a model that already has adapters, a pattern
    that matches no adaptable Linear (listing the model's linear layers), and a qkv adapter that
    model.py's one-token attention shortcut would skip (the model is then left as it was).
    """
    target_modules = _check_lora_arguments(rank, alpha, dropout, target_modules)
    if not isinstance(model, nn.Module):
        raise ValueError(f"apply_lora needs an nn.Module, got {type(model).__name__}")
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters; apply_lora once per model")
    candidates = _adaptable_linears(model)
    unmatched = [p for p in target_modules if not any(_matches(name, p) for name in candidates)]
    if unmatched:
        raise ValueError(f"lora target pattern(s) {unmatched} match no linear layer (patterns "
                         f"match whole name components); this model's linear layers: "
                         f"{_describe_layers(candidates)}")
    layers = [name for name in candidates if any(_matches(name, p) for p in target_modules)]
    alpha = float(rank if alpha is None else alpha)
    generator = torch.Generator().manual_seed(seed)
    for name in layers:
        layer = LoRALinear(model.get_submodule(name), rank, alpha, dropout, generator)
        _replace(model, name, layer)
    skipped = _skipped_qkv(model, layers)
    if skipped is not None:
        for name in layers:  # put the plain layers back before reporting
            _replace(model, name, _plain_linear(model.get_submodule(name), merge=False))
        raise ValueError(f"this model has one token per sample and its attention reads "
                         f"{skipped}'s weights directly (model.py Attention.forward), so a qkv "
                         f"adapter would be ignored: leave 'qkv' out of lora_target_modules")
    trainable = set(trainable_names(model))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    model.lora_settings = LoRASettings(rank, alpha, float(dropout), target_modules, layers)
    return layers


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the tensors a LoRA run trains, in `named_parameters` order: every `lora_A`,
    `lora_B` and the TwinFlow embedders `t_tgt_embedder.*`, `t_sign_embedder.*` (decided by the
    structure, not by requires_grad flags)."""
    adapters = {f"{name}.{leaf}" for name, module in model.named_modules()
                if isinstance(module, LoRALinear) for leaf in ADAPTER_NAMES}
    return [name for name, _ in model.named_parameters()
            if name in adapters or name.startswith(TWINFLOW_PREFIXES)]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The Parameters of `trainable_names`: what the optimizer and gradient clipping should get."""
    parameters = dict(model.named_parameters())
    return [parameters[name] for name in trainable_names(model)]


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """{name: detached tensor} of the trainable tensors only (no base tensor)."""
    parameters = dict(model.named_parameters())
    return {name: parameters[name].detach() for name in trainable_names(model)}


def load_trainable_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy `state` into the trainable tensors. Its keys must be exactly `trainable_names(model)`
    and its shapes the model's; CheckpointError (one line, first differences) otherwise."""
    names = trainable_names(model)
    missing, unexpected = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or unexpected:
        raise CheckpointError(f"the adapter tensors do not fit this model (rank, targets or base "
                              f"differ): missing {missing[:3]}, unexpected {unexpected[:3]}")
    parameters = dict(model.named_parameters())
    wrong = [f"{name} {tuple(state[name].shape)} vs {tuple(parameters[name].shape)}"
             for name in names if state[name].shape != parameters[name].shape]
    if wrong:
        raise CheckpointError(f"adapter tensor shapes do not fit this model: {wrong[:3]}")
    with torch.no_grad():
        for name in names:
            parameters[name].copy_(state[name])


# ----------------------------------------------------------------------------------------- merge
def _plain_linear(layer: LoRALinear, merge: bool) -> nn.Linear:
    """nn.Linear with the layer's bias and weight: W itself, or W + (alpha / rank) B A (merge)."""
    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                      device="meta")  # meta: no initialisation, no RNG draw
    plain.weight = (nn.Parameter(layer.merged_weight(), requires_grad=layer.weight.requires_grad)
                    if merge else layer.weight)
    plain.bias = layer.bias
    return plain


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight, W <- W + (alpha / rank) B A, in place, and put a plain
    nn.Linear back; returns `model`, whose state-dict keys are then those of a model without LoRA.
    The sum is formed in at least float32; requires_grad flags are kept. ValueError without
    adapters.
    """
    layers = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    if not layers:
        raise ValueError("merge_lora: the model has no LoRA adapters (apply_lora or load_adapter)")
    for name in layers:
        _replace(model, name, _plain_linear(model.get_submodule(name), merge=True))
    model.__dict__.pop("lora_settings", None)
    return model


# ----------------------------------------------------------------------------------------- teacher
def _parameter_view(model: nn.Module, names: list[str]) -> nn.Module:
    """A bare module tree that holds `model`'s Parameters `names` (the same objects), same names."""
    root = nn.Module()
    for name in names:
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if part not in node._modules:
                node.add_module(part, nn.Module())
            node = node._modules[part]
        node.register_parameter(leaf, model.get_parameter(name))
    return root


class LoRATeacherModule(nn.Module):
    """F^-(x_t, t, t_tgt, y): the shared student network run with the teacher's trainable tensors.

    Holds no base tensor: `forward` is `torch.func.functional_call(student, values, ...)`, which
    puts the teacher values in place of the student's adapters and embedders for the one call. The
    student runs in this module's train / eval mode during the call (dropout follows it), then gets
    its own mode back. `values` is a function returning {trainable name: tensor}.
    """

    def __init__(self, student: nn.Module, values):
        super().__init__()
        self.__dict__["_student"] = student  # not a submodule: the base is shared, not owned
        self._values = values

    @property
    def config(self):
        """The student's model config (sampling and validation read it)."""
        return self._student.config

    def forward(self, x_t: Tensor, t: Tensor, t_tgt: Tensor | None = None,
                y: Tensor | None = None) -> Tensor:
        student = self._student
        student_mode = student.training
        if student_mode != self.training:
            student.train(self.training)
        try:
            return torch.func.functional_call(student, self._values(), (x_t, t, t_tgt, y))
        finally:
            if student_mode != self.training:
                student.train(student_mode)


class LoRATeacher:
    """The TwinFlow EMA teacher of a LoRA model, over its trainable tensors; used like EMATeacher.

    0 < decay < 1: theta_ema <- d theta_ema + (1 - d) theta on `trainable_names(model)`, d warmed up
    as d <- d + (1 - d)(decay - d) / 2 from 0 (docs/math.md#ema-teacher): an `EMATeacher` over a
    module that holds just those tensors, so the schedule is ema.py's own.
    decay 0: the teacher is the student.
    decay 1 (the official "no teacher" LoRA setting): the base with the adapters off (B = 0 in the
    teacher values), the TwinFlow embedders frozen at their values when the teacher is built; in a
    fresh run that is their initialisation (sign table zero, target-time branch gated by t - t_tgt),
    with which F(x_t, t, t) is exactly the pretrained network. Letting them train would make the
    teacher move, which decay 1 excludes.
    `.teacher` is the callable F^-(x_t, t, t_tgt, y); `.update(model)` once per optimizer step;
    `state_dict()` is EMATeacher's ({"teacher": {trainable name: tensor}, "decay", "decay_used",
    "warmup", "num_updates"}). Raises ValueError for a model without adapters or a bad decay.
    """

    def __init__(self, model: nn.Module, decay: float = 0.99, warmup: bool = True):
        if not isinstance(model, nn.Module) or not has_lora(model):
            raise ValueError("LoRATeacher needs a model with LoRA adapters (apply_lora first); "
                             "for full fine-tuning use EMATeacher")
        self._model = model
        self._ema = EMATeacher(_parameter_view(model, trainable_names(model)), decay, warmup)
        if self._ema.decay >= 1.0:
            with torch.no_grad():
                for name, value in self._ema.teacher.named_parameters():
                    if name.endswith(".lora_B"):
                        value.zero_()  # adapters off: the teacher is the base network
        self._module = LoRATeacherModule(model, self._teacher_values)
        self._module.train(model.training)

    def _teacher_values(self) -> dict[str, Tensor]:
        return dict(self._ema.teacher.named_parameters())

    @property
    def decay(self) -> float:
        return self._ema.decay

    @property
    def decay_used(self) -> float:
        """The decay the next update applies (warm-up state)."""
        return self._ema.decay_used

    @property
    def num_updates(self) -> int:
        return self._ema.num_updates

    @property
    def teacher(self) -> nn.Module:
        """The student itself for decay 0, else the LoRATeacherModule running the teacher values."""
        return self._model if self._ema.decay == 0.0 else self._module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model`'s trainable tensors; the teacher takes `model`'s mode."""
        if model is not self._model:
            self._model = model
            self._module.__dict__["_student"] = model
        self._ema.update(_parameter_view(model, trainable_names(model)))
        self._module.train(model.training)

    def state_dict(self) -> dict[str, Any]:
        return self._ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ema.load_state_dict(state)


# ----------------------------------------------------------------------------------------- files
def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lora_metadata(model: nn.Module, base_path: str | os.PathLike,
                  base_sha256: str | None = None) -> dict[str, str]:
    """Safetensors metadata of a LoRA model: LORA_METADATA_KEY (JSON of its LoRASettings, base_path
    made absolute, base_sha256) and METADATA_KEY (the model config). Hashes the base file unless
    `base_sha256` is given (a SiT-XL/2 file takes seconds: hash once per run). Raises ValueError for
    a model without LoRA settings, CheckpointError for a missing base file."""
    settings = getattr(model, "lora_settings", None)
    if not isinstance(settings, LoRASettings):
        raise ValueError("the model has no LoRA settings: build it with apply_lora or load_adapter")
    base_path = os.path.abspath(os.fspath(base_path))
    if not os.path.isfile(base_path):
        raise CheckpointError(f"base file {base_path!r} does not exist")
    description = dict(asdict(settings), base_path=base_path,
                       base_sha256=base_sha256 or file_sha256(base_path))
    return {LORA_METADATA_KEY: json.dumps(description), **config_to_metadata(model.config)}


def adapter_tensors(model: nn.Module, teacher: LoRATeacher | None = None) -> dict[str, Tensor]:
    """An adapter file's tensors: `model.<name>` for the trainable tensors and, when the teacher
    keeps values (decay > 0), `ema.teacher.<name>`; contiguous CPU copies."""
    tensors = {MODEL_PREFIX + name: value.to("cpu").contiguous().clone()
               for name, value in trainable_state_dict(model).items()}
    if teacher is not None:
        for name, value in teacher.state_dict().get("teacher", {}).items():
            tensors[EMA_PREFIX + name] = value.detach().to("cpu").contiguous().clone()
    return tensors


def save_file_atomic(tensors: dict[str, Tensor], path: str | os.PathLike,
                     metadata: dict[str, str]) -> None:
    """safetensors `save_file` into a temporary file beside `path`, then os.replace: an interrupted
    write never leaves a half-written file (and keeps an earlier one intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_adapter(path: str | os.PathLike, model: nn.Module, base_path: str | os.PathLike, *,
                 teacher: LoRATeacher | None = None, base_sha256: str | None = None,
                 extra_metadata: dict[str, str] | None = None) -> Path:
    """Atomically write an adapter file and return its path.

    Tensors: `adapter_tensors(model, teacher)` (never a base tensor). Metadata: FORMAT_KEY =
    ADAPTER_FORMAT, `lora_metadata(model, base_path, base_sha256)`, with a teacher its scalar state
    under EMA_METADATA_KEY, and `extra_metadata`. An existing file at `path` is replaced: the
    command lines decide whether that is allowed. Errors as `lora_metadata`.
    """
    metadata = {FORMAT_KEY: ADAPTER_FORMAT, **lora_metadata(model, base_path, base_sha256)}
    if teacher is not None:
        scalars = {k: v for k, v in teacher.state_dict().items() if k != "teacher"}
        metadata[EMA_METADATA_KEY] = json.dumps(scalars)
    metadata.update(extra_metadata or {})
    path = Path(path)
    save_file_atomic(adapter_tensors(model, teacher), path, metadata)
    return path


@dataclass
class AdapterInfo:
    """What `read_adapter_info` / `load_adapter` found in an adapter file."""

    path: str
    base_path: str  # named in the metadata; after load_adapter, the base file actually used
    base_sha256: str
    settings: LoRASettings
    weights: list[str]  # weight sets in the file: "model", and "ema" when a teacher was saved
    used: str = ""  # the set load_adapter loaded
    ema: dict = field(default_factory=dict)  # the teacher's scalars (decay, decay_used, ...)
    metadata: dict = field(default_factory=dict)


def read_adapter_info(path: str | os.PathLike) -> AdapterInfo:
    """An adapter file's settings, base path and sha256 and weight sets, from its header only.

    Accepts `save_adapter` files and any safetensors file with LORA_METADATA_KEY metadata whose
    tensors follow the same keys (a LoRA training checkpoint). Raises CheckpointError (one line) for
    a missing, truncated or non-safetensors file, or one without LoRA metadata.
    """
    path = os.fspath(path)
    try:
        shapes, _, metadata = read_header(path)
    except ValueError as error:  # checkpoint.CheckpointError
        raise CheckpointError(str(error)) from None
    if LORA_METADATA_KEY not in metadata:
        raise CheckpointError(f"{path!r} is not a LoRA adapter (no {LORA_METADATA_KEY!r} "
                              f"metadata); a plain model file loads with load_pretrained")
    try:
        description = json.loads(metadata[LORA_METADATA_KEY])
        base_path, base_sha256 = description.pop("base_path"), description.pop("base_sha256")
        settings = LoRASettings(**description)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path!r} has damaged LoRA metadata ({error})") from None
    has_ema = any(key.startswith(EMA_PREFIX) for key in shapes)
    ema = json.loads(metadata[EMA_METADATA_KEY]) if EMA_METADATA_KEY in metadata else {}
    return AdapterInfo(path=path, base_path=base_path, base_sha256=base_sha256, settings=settings,
                       weights=["model", "ema"] if has_ema else ["model"], ema=ema,
                       metadata=dict(metadata))


def is_adapter_file(path: str | os.PathLike) -> bool:
    """True when `path` is a safetensors file with LoRA metadata (a `save_adapter` file or a LoRA
    run's training checkpoint). False for every other file, also one that cannot be read: the
    loader that reads it next says why."""
    try:
        return LORA_METADATA_KEY in read_header(os.fspath(path))[2]
    except (ValueError, OSError):  # checkpoint.CheckpointError is a ValueError
        return False


def read_teacher_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The teacher state saved in an adapter file, in `LoRATeacher.state_dict()` form (for
    `load_state_dict`), or None when the file was written without a teacher."""
    info = read_adapter_info(path)
    if not info.ema:
        return None
    state = dict(info.ema)
    if "ema" in info.weights:
        with safe_open(info.path, framework="pt") as handle:
            state["teacher"] = {key[len(EMA_PREFIX):]: handle.get_tensor(key)
                                for key in handle.keys() if key.startswith(EMA_PREFIX)}
    return state


def check_base(info: AdapterInfo, base_path: str | os.PathLike | None = None) -> str:
    """The base file to use (`base_path`, else the metadata's), once its sha256 equals the
    adapter's; CheckpointError (one line) when it is missing or differs."""
    chosen = os.fspath(base_path) if base_path is not None else info.base_path
    if not os.path.isfile(chosen):
        fix = "check --base FILE" if base_path is not None else "give its place with --base FILE"
        raise CheckpointError(f"base file {chosen!r} of adapter {info.path!r} is not there: {fix} "
                              f"(sha256 {info.base_sha256[:16]}...)")
    found = file_sha256(chosen)
    if found != info.base_sha256:
        raise CheckpointError(f"base file {chosen!r} has sha256 {found[:16]}..., but adapter "
                              f"{info.path!r} was trained on one with sha256 "
                              f"{info.base_sha256[:16]}... ({info.base_path!r}): pass that "
                              f"file with --base FILE")
    return chosen


def _architecture(fields: dict) -> dict:
    return {key: value for key, value in fields.items() if key not in NOT_ARCHITECTURE}


def load_adapter(path: str | os.PathLike, base_path: str | os.PathLike | None = None, *,
                 weights: str = "auto", dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", **overrides) -> tuple[nn.Module, AdapterInfo]:
    """(model with adapters, info) from an adapter file.

    The base is `base_path`, else the path in the metadata, and must have the recorded sha256; it is
    read by `load_pretrained(base, dtype=dtype, **overrides)` (DiTConfig overrides such as
    gradient_checkpointing), then `apply_lora` with the file's settings, then the file's trainable
    tensors: weights "model" (the student), "ema" (the teacher values) or "auto" (ema when present).
    The model is returned in training mode on `device`, with the adapters not merged.
    Raises CheckpointError (one line) for a missing or different base, a weight set the file lacks,
    and adapter tensors or a model config that do not fit the base; ValueError for a bad `weights`.
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    info = read_adapter_info(path)
    used = ("ema" if "ema" in info.weights else "model") if weights == "auto" else weights
    if used not in info.weights:
        raise CheckpointError(f"{info.path!r} holds no {used!r} weights (it has {info.weights})")
    info.base_path = check_base(info, base_path)
    try:
        model, _ = load_pretrained(info.base_path, dtype=dtype, **overrides)
    except ValueError as error:  # checkpoint.CheckpointError
        raise CheckpointError(str(error)) from None
    if METADATA_KEY in info.metadata:
        saved = _architecture({**asdict(config_from_metadata(info.metadata)), **overrides})
        if saved != _architecture(asdict(model.config)):
            raise CheckpointError(f"adapter {info.path!r} was trained on a model config other than "
                                  f"the one base {info.base_path!r} loads as")
    s = info.settings
    layers = apply_lora(model, s.rank, s.alpha, s.dropout, s.target_modules)
    if layers != s.layers:
        raise CheckpointError(f"adapter {info.path!r} adapts {len(s.layers)} layers, but its "
                              f"targets match {len(layers)} in base {info.base_path!r}")
    prefix = EMA_PREFIX if used == "ema" else MODEL_PREFIX
    with safe_open(info.path, framework="pt") as handle:
        state = {key[len(prefix):]: handle.get_tensor(key).to(dtype)
                 for key in handle.keys() if key.startswith(prefix)}
    load_trainable_state_dict(model, state)
    info.used = used
    return model.to(device), info
