"""Training configuration: one typed dataclass with SimpleTuner's key names, and the checks on its values.

Paper: TwinFlow (arXiv:2512.05150), Sec. 4 (training settings). Key names, defaults and the two TwinFlow
errors follow SimpleTuner's TwinFlow guide (`bghira/SimpleTuner` documentation/distillation/TWINFLOW.md and its
config field registry), so the TwinFlow part of a SimpleTuner `config.json` runs here unchanged; twinflow-min's
own keys keep the `twinflow_` prefix. The official TwinFlow code (`src/configs/*.yaml` read by `src/train.py`)
checks nothing; here every value is checked before any work, and each error says how to fix it in one line.
JSON files and command-line flags are read by `config_cli.py` (`resolve_config`, `build_parser`,
`config_table_markdown`, `preset_name`), which this module also serves by name: see `__getattr__` at the end.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake (twin) branch.
(`twinflow_delta_t` and `twinflow_enhanced_range` are times in this convention.)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from twinflow_min.data import TOY_DATASETS
from twinflow_min.model import MODEL_REGISTRY

# Limits quoted from SimpleTuner: target steps 1-8 allowed, 1-4 recommended (field registry / TWINFLOW.md);
# delta_t below 0.5 (field registry max); official value 0.01 (reference 2.1).
TARGET_STEPS_ALLOWED = (1, 8)
TARGET_STEPS_RECOMMENDED_MAX = 4
DELTA_T_OPEN_RANGE = (0.0, 0.5)
GROUP_NAMES = ("e2e", "mul", "any", "adv")  # row groups of the large recipe, official order (reference 2.9)
IMAGE_DATASETS = ("cifar10", "folder")  # datasets that read the `data` path
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # what `device` may name besides "auto" (optionally ":<index>")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix, in one line."""


class ConfigWarning(UserWarning):
    """A value that works but is probably not what was meant (e.g. more than 4 target steps)."""


def _field(default, help: str, choices: tuple | None = None):
    """A dataclass field with its one-line help (for --help and the README table) and allowed values."""
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return dataclasses.field(**factory, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Every training setting, with SimpleTuner's defaults where SimpleTuner has the key."""

    # ---- TwinFlow, SimpleTuner names ----
    twinflow_enabled: bool = _field(False, "train with TwinFlow (RCGM + twin trajectories); false = flow matching")
    twinflow_target_step_count: int = _field(2, "sampling steps (NFE) to train for; 1-4 recommended, 1-8 allowed")
    twinflow_estimate_order: int = _field(2, "N: teacher any-step jumps inside the RCGM target (reference 2.1)")
    twinflow_enhanced_ratio: float = _field(0.5, "CFG baked into the target: v + ratio (F_cond - F_uncond); 0 = off")
    twinflow_delta_t: float = _field(0.01, "Δt of the RCGM target, in (0, 0.5); official 0.01")
    twinflow_target_clamp: float = _field(1.0, "clip of the RCGM residual to ±value, > 0; official 1")
    twinflow_require_ema: bool = _field(True, "refuse to run TwinFlow without an EMA teacher (use_ema)")
    twinflow_allow_no_ema_teacher: bool = _field(False, "with use_ema false, let the student be its own teacher")
    twinflow_allow_diff2flow: bool = _field(False, "let epsilon / v-prediction models in through diff2flow")
    twinflow_adversarial_enabled: bool = _field(False, "the fake (twin) branch: L_adv and L_rectify")
    twinflow_adversarial_weight: float = _field(1.0, "weight of L_adv (flow matching on the fake branch)")
    twinflow_rectify_weight: float = _field(1.0, "weight of L_rectify (twin velocity matching, Eq. 9)")
    # ---- TwinFlow, twinflow-min additions ----
    twinflow_consistency_weight: float = _field(1.0, "weight of the 1->0 consistency term (tutorial L_cm)")
    twinflow_realvel_weight: float = _field(1.0, "weight of the real-velocity term F(x_t, t, t) (tutorial)")
    twinflow_recipe: str = _field("tutorial", "loss recipe: official MNIST tutorial or large-scale src",
                                  ("tutorial", "large"))
    twinflow_group_proportions: list[float] = _field([1.0, 1.0, 1.0, 1.0], "large: shares of e2e, mul, any, adv")
    twinflow_time_dist: list[float] = _field([1.0, 1.0, 1.0], "large: t ~ Beta(a, b) * scale as [a, b, scale]")
    twinflow_loss_type: str = _field("l2", "per-sample loss: l2, or Barron alpha=1 (official large)", ("l2", "barron"))
    twinflow_time_weighting: bool = _field(False, "large: the official tan time weight per row")
    twinflow_dist_match_cof: float = _field(0.5, "large: weight of the rectify term (official dist_match_cof)")
    twinflow_rectify_clip: float | None = _field(None, "clip Δv to ±value (official large: 1); none = no clip")
    twinflow_enhanced_range: list[float] = _field([0.0, 1.0], "large: CFG enhancement only where lo < t < hi")
    twinflow_image_free: bool = _field(False, "train on the model's own samples (pretrained model, labels only)")
    # ---- general, SimpleTuner names ----
    use_ema: bool = _field(True, "keep an EMA of the student: the TwinFlow teacher and the sampled model")
    ema_decay: float = _field(0.99, "EMA decay in [0, 1]; 0 = the student itself, 1 = frozen initial model")
    learning_rate: float = _field(1e-4, "AdamW learning rate (peak value when lr_schedule is cosine)")
    train_batch_size: int = _field(64, "samples per micro-batch")
    gradient_accumulation_steps: int = _field(1, "micro-batches per optimizer step")
    mixed_precision: str = _field("no", "autocast dtype on CUDA (ignored on CPU)", ("no", "bf16", "fp16"))
    output_dir: str = _field("outputs", "runs are written to OUTPUT_DIR/<run name>")
    seed: int = _field(0, "seed of the model initialisation and of every training draw")
    max_train_steps: int = _field(1000, "optimizer steps")
    validation_guidance: float = _field(0.0, "CFG scale at validation; TwinFlow samples at 0 (trained in)")
    validation_num_inference_steps: int = _field(2, "sampling steps at validation when TwinFlow is off")
    validation_every: int = _field(500, "validate every N steps; 0 = off")
    checkpointing_steps: int = _field(500, "checkpoint every N steps; 0 = only at the end")
    prediction_type: str = _field("flow_matching", "network output; non-flow needs diff2flow",
                                  ("flow_matching", "epsilon", "v_prediction"))
    diff2flow_enabled: bool = _field(False, "turn an epsilon / v-prediction output into a flow velocity")
    distillation_method: str | None = _field(None, "SimpleTuner's other distillers: leave unset")
    model_family: str = _field("dit", "architecture family", ("dit", "sit"))
    model_type: str = _field("full", "full fine-tuning (LoRA is not implemented)")
    pretrained_model_name_or_path: str | None = _field(None, "local .safetensors file to start from")
    dataset: str = _field("toy:moons", "toy:<name>, cifar10, folder or latents:<path>")
    # ---- general, twinflow-min additions ----
    data: str | None = _field(None, "CIFAR-10 archive or image folder for dataset cifar10 / folder")
    model: str = _field("toy", "model registry name (MODEL_REGISTRY) when no pretrained file is given")
    label_dropout: float = _field(0.1, "chance a label becomes the null class (unconditional branch)")
    adam_beta1: float = _field(0.9, "AdamW beta1")
    adam_beta2: float = _field(0.999, "AdamW beta2")
    weight_decay: float = _field(0.0, "AdamW weight decay")
    lr_schedule: str = _field("constant", "constant, or cosine decay from learning_rate to 0 at max_train_steps",
                              ("constant", "cosine"))
    lr_warmup_steps: int = _field(0, "linear learning-rate warm-up from 0 over the first N steps")
    max_grad_norm: float = _field(1.0, "gradient-norm clipping; 0 = off")
    ema_warmup: bool = _field(True, "official EMA warm-up: decay climbs from 0 to ema_decay (reference 2.10)")
    device: str = _field("auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:1, mps ...")
    compile: bool = _field(False, "torch.compile the student")
    gradient_checkpointing: bool = _field(False, "recompute transformer blocks in backward to save memory")
    resume: str | None = _field(None, "run folder or checkpoint.safetensors to continue from")
    log_every: int = _field(10, "log the loss terms every N steps")
    run_name: str | None = _field(None, "run folder name under output_dir; none = from the dataset")
    eval_samples: int = _field(4000, "samples drawn for the final evaluation")
    validation_nfe: list[int] = _field([1, 2, 4], "sampling steps (NFE) shown at validation and evaluation")

    # ---- views used by train.py ----
    def twinflow_options(self) -> dict:
        """Keyword options of `twinflow_min.twinflow.twinflow_losses` (reference §2)."""
        return dict(
            estimate_order=self.twinflow_estimate_order, delta_t=self.twinflow_delta_t,
            target_clamp=self.twinflow_target_clamp, enhanced_ratio=self.twinflow_enhanced_ratio,
            adversarial_enabled=self.twinflow_adversarial_enabled, adversarial_weight=self.twinflow_adversarial_weight,
            rectify_weight=self.twinflow_rectify_weight, consistency_weight=self.twinflow_consistency_weight,
            realvel_weight=self.twinflow_realvel_weight, recipe=self.twinflow_recipe, loss_type=self.twinflow_loss_type,
            time_weighting=self.twinflow_time_weighting, dist_match_cof=self.twinflow_dist_match_cof,
            rectify_clip=self.twinflow_rectify_clip, enhanced_range=tuple(self.twinflow_enhanced_range),
            # SRC `ema_decay_rate == 1` (frozen teacher) makes the large recipe's RCGM target use the student (2.10)
            frozen_teacher=self.twinflow_recipe == "large" and self.use_ema and self.ema_decay == 1.0,
        )

    def input_sampling_options(self) -> dict:
        """Keyword options of `twinflow_min.twinflow.sample_training_inputs` (reference 2.9)."""
        return dict(recipe=self.twinflow_recipe, group_proportions=tuple(self.twinflow_group_proportions),
                    time_dist=tuple(self.twinflow_time_dist))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict, where: str = "") -> "TrainConfig":
        """Build from a dict (`to_dict`, a checkpoint, JSON): keys and types are checked; `validate` checks the rest."""
        return cls(**check_keys_and_types(values, where))


FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)

# Starting values without --config: only the keys that differ from the dataclass defaults.
PRESETS: dict[str, dict] = {
    "toy": dict(dataset="toy:moons", model="toy", twinflow_enabled=True, twinflow_adversarial_enabled=True,
                twinflow_enhanced_ratio=0.0,  # the toy is unconditional: no labels, no CFG to bake in
                # tuned on a 2-core CPU: ~1.5 min, 1-NFE energy distance 0.0011-0.0015 over training seeds 0-2
                train_batch_size=96, use_ema=True, ema_decay=0.99, learning_rate=2e-3, lr_schedule="cosine",
                max_train_steps=2000, validation_every=0, checkpointing_steps=500),
    "cifar10": dict(dataset="cifar10", model="CIFAR-S/2", twinflow_enabled=True, twinflow_adversarial_enabled=True,
                    twinflow_enhanced_ratio=0.5, train_batch_size=128, learning_rate=1e-4,
                    mixed_precision="no",  # train.py may choose bf16 on CUDA
                    max_train_steps=100_000, validation_every=2000, checkpointing_steps=5000),
}


# ---------------------------------------------------------------- keys and types
def _base_type(hint) -> tuple[object, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None)), True
    return hint, False


def _type_name(hint) -> str:
    base, optional = _base_type(hint)
    name = f"list of {_type_name(typing.get_args(base)[0])}" if typing.get_origin(base) is list else base.__name__
    return f"{name} or none" if optional else name


def _coerce(key: str, value, hint, where: str):
    """`value` as the field's type; ints pass for floats, bools and strings never pass for numbers."""
    base, optional = _base_type(hint)
    if value is None and optional:
        return None
    got = f"got {json.dumps(value) if value is None or isinstance(value, bool) else repr(value)}"
    if typing.get_origin(base) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}{where}: expected a {_type_name(hint)} such as [1, 2], {got}")
        return [_coerce(f"{key}[{index}]", item, typing.get_args(base)[0], where) for index, item in enumerate(value)]
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}{where}: expected true or false, {got}; write the word without quotes")
        return value
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fix = "booleans are not numbers" if isinstance(value, bool) else "write a number without quotes"
            raise ConfigError(f"{key}{where}: expected {'an integer' if base is int else 'a number'}, {got}; {fix}")
        if not math.isfinite(value) or (base is int and value != int(value)):
            raise ConfigError(f"{key}{where}: expected a finite {'integer' if base is int else 'number'}, {got}")
        return base(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}{where}: expected a string, {got}")
    return value


def _unknown_key_error(key: str, where: str, prefix: str = "") -> ConfigError:
    close = difflib.get_close_matches(key.replace("-", "_"), list(FIELDS), n=1)
    hint = f"did you mean {prefix}{close[0]}? " if close else ""
    return ConfigError(f"unknown key {prefix}{key}{where}; {hint}(`python train.py --help` lists every key)")


def check_keys_and_types(values: dict, where: str = "") -> dict:
    """Refuse unknown keys (naming the closest valid one) and wrong types; SimpleTuner's `--key` spelling is fine."""
    checked = {}
    for raw_key, value in values.items():
        key = raw_key.removeprefix("--")
        if key not in FIELDS:
            raise _unknown_key_error(key, where)
        checked[key] = _coerce(key, value, HINTS[key], where)
    return checked


# ---------------------------------------------------------------- validation
def _require(cfg: TrainConfig, key: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {getattr(cfg, key)!r} {rule}")


def _check_dataset(cfg: TrainConfig) -> None:
    spec, needs_images = cfg.dataset, not cfg.twinflow_image_free
    if spec.startswith("toy:"):
        _require(cfg, "dataset", spec[4:] in TOY_DATASETS, f"is not a toy; use toy:<{'|'.join(TOY_DATASETS)}>")
    elif spec in IMAGE_DATASETS:
        _require(cfg, "data", cfg.data is not None or not needs_images, f"but dataset {spec} reads its images from "
                 f"`data`: give the path, e.g. --data cifar-10-python.tar.gz (image-free training needs none)")
        _require(cfg, "data", cfg.data is None or Path(cfg.data).exists(), "does not exist; give an existing path")
    elif spec.startswith("latents:"):
        _require(cfg, "dataset", Path(spec[8:]).is_file(), "names no existing file; use latents:<path of the file>")
    elif spec.replace("-", "_") == "image_free":
        raise ConfigError("dataset = 'image_free' is a flag, not a dataset: set twinflow_image_free: true "
                          "(--image-free)")
    else:
        raise ConfigError(f"dataset = {spec!r} is not understood; use toy:<name>, cifar10, folder or latents:<path>")


def _check_pretrained(cfg: TrainConfig) -> None:
    path = cfg.pretrained_model_name_or_path
    _require(cfg, "twinflow_image_free", not cfg.twinflow_image_free or path is not None,
             "trains a pretrained model on its own samples: set pretrained_model_name_or_path (--pretrained FILE)")
    convert = "python tools/convert_checkpoint.py IN.pt OUT.safetensors --convention sit|repa|dit"
    _require(cfg, "pretrained_model_name_or_path", path is None or (Path(path).suffix == ".safetensors"
             and Path(path).is_file()), f"is not an existing local .safetensors file (nothing is downloaded); "
             f"convert a .pt with {convert}")


def _check_model(cfg: TrainConfig) -> None:
    """The registry model trained from scratch (no pretrained file) must exist and fit the data."""
    toy = cfg.dataset.startswith("toy:")
    if cfg.model not in MODEL_REGISTRY:
        close = difflib.get_close_matches(cfg.model, list(MODEL_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"model = {cfg.model!r} is not in MODEL_REGISTRY; {hint}known: {', '.join(MODEL_REGISTRY)}")
    fits = ("data_dim" in MODEL_REGISTRY[cfg.model]) == toy  # the vector model for 2-D points, image models else
    _require(cfg, "model", fits, f"does not fit dataset {cfg.dataset!r}; use "
             f"{'model: toy' if toy else 'an image model, e.g. model: CIFAR-S/2'}")


# (key, test of its value, what the value must be): checked in order, the first failure raises ConfigError.
LOW, HIGH = TARGET_STEPS_ALLOWED
RULES = (
    *((key, lambda v: v >= 0, "must not be negative") for key in (
        "twinflow_enhanced_ratio", "twinflow_adversarial_weight", "twinflow_rectify_weight", "seed",
        "twinflow_consistency_weight", "twinflow_realvel_weight", "twinflow_dist_match_cof", "weight_decay",
        "max_grad_norm", "validation_guidance", "validation_every", "checkpointing_steps", "eval_samples",
        "lr_warmup_steps")),
    *((key, lambda v: v >= 1, "must be at least 1") for key in (
        "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "log_every",
        "validation_num_inference_steps")),
    *((key, lambda v: 0 <= v < 1, "must lie in [0, 1)") for key in ("label_dropout", "adam_beta1", "adam_beta2")),
    ("learning_rate", lambda v: v > 0, "must be > 0, e.g. 1e-4"),
    ("ema_decay", lambda v: 0 <= v <= 1, "must lie in [0, 1] (0 = the student itself, 1 = a frozen copy)"),
    ("twinflow_rectify_clip", lambda v: v is None or v > 0, "must be > 0, or none for no clip"),
    ("twinflow_group_proportions", lambda v: len(v) == len(GROUP_NAMES) and min(v) >= 0,
     f"must be 4 shares >= 0, for the groups {', '.join(GROUP_NAMES)}"),
    ("twinflow_group_proportions", lambda v: sum(v) > 0, "are all zero; give at least one group a share > 0"),
    ("twinflow_time_dist", lambda v: len(v) == 3 and v[0] > 0 and v[1] > 0 and 0 < v[2] <= 1,
     "must be [a, b, scale] with Beta parameters a, b > 0 and 0 < scale <= 1 (official [1, 1, 1])"),
    ("twinflow_enhanced_range", lambda v: len(v) == 2 and 0 <= v[0] < v[1] <= 1,
     "must be [lo, hi] ascending within [0, 1] (official [0, 1])"),
    ("validation_nfe", lambda v: len(v) > 0 and min(v) >= 1, "must list step counts >= 1, e.g. [1, 2, 4]"),
    ("output_dir", lambda v: v.strip() != "", "must name a folder"),
    ("device", lambda v: v == "auto" or v.split(":")[0] in DEVICE_TYPES, "is not a device; use auto, cpu or cuda"),
    ("resume", lambda v: v is None or Path(v).exists(), "does not exist; give a run folder or its checkpoint"),
)
TWINFLOW_RULES = (  # only when twinflow_enabled
    ("twinflow_target_step_count", lambda v: LOW <= v <= HIGH, f"is outside {LOW}-{HIGH}; TwinFlow samples in 1-4"),
    ("twinflow_estimate_order", lambda v: v >= 1, "must be at least 1 (official 2)"),
    ("twinflow_delta_t", lambda v: DELTA_T_OPEN_RANGE[0] < v < DELTA_T_OPEN_RANGE[1], "must lie in (0, 0.5); "
     "official 0.01"),
    ("twinflow_target_clamp", lambda v: v > 0, "must be > 0; the official clip is 1.0"),
)
# Options only the large recipe reads (official SRC; TUT has none): with twinflow_recipe "tutorial" the loss
# (twinflow.TwinFlowOptions) and the input sampler (twinflow.sample_training_inputs) refuse any other value.
LARGE_ONLY_DEFAULTS = {key: getattr(TrainConfig(), key) for key in (
    "twinflow_time_weighting", "twinflow_dist_match_cof", "twinflow_enhanced_range", "twinflow_group_proportions")}
ADV_GROUP = GROUP_NAMES.index("adv")


def _check_twinflow(cfg: TrainConfig) -> list[str]:
    for key, test, rule in TWINFLOW_RULES:
        _require(cfg, key, test(getattr(cfg, key)), rule)
    if not cfg.use_ema and cfg.twinflow_require_ema and not cfg.twinflow_allow_no_ema_teacher:
        raise ConfigError("use_ema = False, but TwinFlow needs an EMA teacher: set use_ema: true, or accept the "
                          "student as teacher: twinflow_allow_no_ema_teacher: true (or twinflow_require_ema: false)")
    large = cfg.twinflow_recipe == "large"
    for key, default in LARGE_ONLY_DEFAULTS.items():  # else training raises at step 1
        _require(cfg, key, large or getattr(cfg, key) == default, f'only applies to twinflow_recipe: "large"; '
                 f'set that, or reset {key}: {json.dumps(default)}')
    _require(cfg, "twinflow_adversarial_enabled", not large or cfg.twinflow_adversarial_enabled
             or cfg.twinflow_group_proportions[ADV_GROUP] == 0, "but the large recipe's adv rows need it "
             "(twinflow_group_proportions[3] > 0): set twinflow_adversarial_enabled: true, or drop the adv rows "
             "with twinflow_group_proportions: [1, 1, 1, 0] (the RCGM recipe)")
    _require(cfg, "twinflow_enhanced_ratio", cfg.twinflow_enhanced_ratio == 0 or not cfg.dataset.startswith("toy:"),
             f"needs class labels, but {cfg.dataset} is unconditional; set twinflow_enhanced_ratio: 0.0")
    groups = sum(share > 0 for share in cfg.twinflow_group_proportions)
    _require(cfg, "train_batch_size", cfg.twinflow_recipe != "large" or cfg.train_batch_size >= groups,
             f"is below the {groups} row groups of the large recipe; use at least {groups} or zero a group proportion")
    steps, most = cfg.twinflow_target_step_count, TARGET_STEPS_RECOMMENDED_MAX
    if steps > most:
        return [f"twinflow_target_step_count = {steps} is above the 1-{most} steps TwinFlow is built for"]
    return []


def validate(cfg: TrainConfig) -> list[str]:
    """Raise ConfigError for the first value that cannot work; return warnings for values that look wrong."""
    check_keys_and_types(cfg.to_dict())  # a TrainConfig built in Python has not been through the JSON/CLI checks
    if cfg.model_type == "lora":
        raise ConfigError("model_type = 'lora': LoRA is not implemented in twinflow-min yet; use model_type: full")
    _require(cfg, "model_type", cfg.model_type == "full", "is unknown; use model_type: full")
    for key, field in FIELDS.items():
        choices = field.metadata["choices"]
        _require(cfg, key, not choices or getattr(cfg, key) in choices, f"is not one of {', '.join(choices or ())}")
    # SimpleTuner's TwinFlow rules: flow matching (or an explicit diff2flow bridge), no second distiller
    if cfg.prediction_type != "flow_matching" and cfg.twinflow_enabled:
        _require(cfg, "prediction_type", cfg.diff2flow_enabled and cfg.twinflow_allow_diff2flow, "but TwinFlow "
                 "requires prediction_type=flow_matching; to bridge a diffusion model set diff2flow_enabled: true "
                 "and twinflow_allow_diff2flow: true")
    _require(cfg, "prediction_type", cfg.prediction_type == "flow_matching" or cfg.diff2flow_enabled,
             "cannot train here: twinflow-min trains flow matching; set diff2flow_enabled: true to bridge it")
    _require(cfg, "distillation_method", cfg.distillation_method is None, "cannot be used: TwinFlow is its own "
             "distillation and twinflow-min has no other; set distillation_method: null "
             f"{'(or unset twinflow_enabled)' if cfg.twinflow_enabled else 'and twinflow_enabled: true'}")
    for key, test, rule in RULES:
        _require(cfg, key, test(getattr(cfg, key)), rule)
    _check_pretrained(cfg)
    _check_dataset(cfg)
    if cfg.pretrained_model_name_or_path is None:
        _check_model(cfg)
    return _check_twinflow(cfg) if cfg.twinflow_enabled else []



# ---------------------------------------------------------------- command line (lives in config_cli.py)
CLI_NAMES = ("ALIASES", "build_parser", "config_table_markdown", "preset_name", "resolve_config")


def __getattr__(name: str):
    """`from twinflow_min.config import resolve_config` (and the other CLI_NAMES) keeps working.

    config_cli imports this module at its top; importing config_cli here only when one of its names is first
    asked for (PEP 562) means neither module ever runs while the other is half-initialised, in either import order.
    """
    if name not in CLI_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from twinflow_min import config_cli
    return getattr(config_cli, name)
