"""Training configuration: one typed dataclass with SimpleTuner's key names, and its checks.

Paper: TwinFlow (arXiv:2512.05150), Sec. 4 (training settings). Key names and TwinFlow defaults
follow SimpleTuner's TwinFlow guide (`bghira/SimpleTuner` documentation/distillation/TWINFLOW.md),
so the TwinFlow part of a SimpleTuner `config.json` runs here unchanged; twinflow-min's own keys
keep the `twinflow_` prefix. The official TwinFlow code (`src/configs/*.yaml` read by
`src/train.py`) checks nothing; here every value is checked once, before any work, and each error
is one line that says what is wrong and how to fix it.

One source of truth: a `twinflow_*` key that is a loss option maps onto
`twinflow_min.twinflow.TwinFlowOptions` through TWINFLOW_OPTION_KEYS; its default is
TwinFlowOptions' (except the two SimpleTuner defaults in SIMPLETUNER_DEFAULTS) and its range is
checked by building TwinFlowOptions. The input-sampling keys map onto `sample_training_inputs`
through SAMPLING_KEYS. JSON files and flags are read by `config_cli.py` (`resolve_config`), which
imports this module (never the reverse).
Times (`twinflow_delta_t`, `twinflow_enhanced_range`) follow `twinflow_min/transport.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from twinflow_min.checks import INT64_MAX, is_count, is_real, resolve_device
from twinflow_min.data import TOY_DATASETS
from twinflow_min.model import MODEL_REGISTRY
from twinflow_min.twinflow import (LARGE_ONLY, LOSS_TYPES, RECIPE_NAMES, OptionError,
                                   TwinFlowOptions, sample_training_inputs)
from twinflow_min.twinflow_large import GROUP_NAMES

# SimpleTuner's limits: target steps 1-8 allowed, 1-4 recommended (field registry, TWINFLOW.md).
TARGET_STEPS_ALLOWED = (1, 8)
TARGET_STEPS_RECOMMENDED_MAX = 4
IMAGE_DATASETS = ("cifar10", "folder")  # datasets that read the `data` path
# One micro-batch is held in memory at once (the activations of every row); larger batches come
# from gradient_accumulation_steps. 2**16 rows of the smallest image model take tens of GB.
MAX_MICRO_BATCH = 2**16
# The toy evaluation compares every pair of samples (n**2 distances) and an image evaluation keeps
# every sample; FID is usually measured on 50,000.
MAX_EVAL_SAMPLES = 2**16
LORA_TARGETS = ["qkv", "proj", "fc1", "fc2", "adaLN_modulation"]  # attention, MLP, adaLN of blocks
CONVERT = "python tools/convert_checkpoint.py IN.pt OUT.safetensors --convention sit|repa|dit"
MODEL_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

# Config key -> TwinFlowOptions field (the loss options, built once per run by twinflow_options()).
TWINFLOW_OPTION_KEYS = {
    "twinflow_estimate_order": "estimate_order",
    "twinflow_enhanced_ratio": "enhanced_ratio",
    "twinflow_delta_t": "delta_t",
    "twinflow_target_clamp": "target_clamp",
    "twinflow_adversarial_enabled": "adversarial_enabled",
    "twinflow_adversarial_weight": "adversarial_weight",
    "twinflow_rectify_weight": "rectify_weight",
    "twinflow_consistency_weight": "consistency_weight",
    "twinflow_realvel_weight": "realvel_weight",
    "twinflow_consistency_ratio": "consistency_ratio",
    "twinflow_recipe": "recipe",
    "twinflow_loss_type": "loss_type",
    "twinflow_time_weighting": "time_weighting",
    "twinflow_dist_match_cof": "dist_match_cof",
    "twinflow_rectify_clip": "rectify_clip",
    "twinflow_enhanced_range": "enhanced_range",
}
# Config key -> keyword of `twinflow.sample_training_inputs` (the random inputs of every step).
SAMPLING_KEYS = {
    "twinflow_recipe": "recipe",
    "twinflow_group_proportions": "group_proportions",
    "twinflow_time_dist": "time_dist",
    "twinflow_consistency_ratio": "consistency_ratio",
}
OPTION_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TwinFlowOptions)}
SAMPLING_DEFAULTS = {name: parameter.default for name, parameter
                     in inspect.signature(sample_training_inputs).parameters.items()}
# The only TwinFlow defaults that differ from TwinFlowOptions (which mirrors the official tutorial):
# SimpleTuner trains without the adversarial branch unless asked and bakes CFG 0.5 into the target.
SIMPLETUNER_DEFAULTS = {"twinflow_adversarial_enabled": False, "twinflow_enhanced_ratio": 0.5}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix, one line."""


class ConfigWarning(UserWarning):
    """A note: a value that works but is probably not what was meant (e.g. an unused key)."""


def _field(default, help: str, choices: tuple | None = None):
    """A dataclass field with its one-line help (--help, the README table) and allowed values."""
    if isinstance(default, (list, tuple)):
        factory = {"default_factory": lambda: list(default)}
    else:
        factory = {"default": default}
    return dataclasses.field(**factory, metadata={"help": help, "choices": choices})


def _twinflow_field(key: str, help: str, choices: tuple | None = None):
    """A field whose default is TwinFlowOptions' / sample_training_inputs' (or SimpleTuner's)."""
    if key in SIMPLETUNER_DEFAULTS:
        return _field(SIMPLETUNER_DEFAULTS[key], help, choices)
    if key in TWINFLOW_OPTION_KEYS:
        return _field(OPTION_DEFAULTS[TWINFLOW_OPTION_KEYS[key]], help, choices)
    return _field(SAMPLING_DEFAULTS[SAMPLING_KEYS[key]], help, choices)


@dataclass
class TrainConfig:
    """Every training setting, with SimpleTuner's defaults where SimpleTuner has the key."""

    # ---- TwinFlow, SimpleTuner names ----
    twinflow_enabled: bool = _field(
        False, "train with TwinFlow (RCGM + twin trajectories); false = flow matching")
    twinflow_target_step_count: int = _field(
        2, "sampling steps (NFE) to train for; 1-4 recommended, 1-8 allowed")
    twinflow_estimate_order: int = _twinflow_field(
        "twinflow_estimate_order", "N teacher jumps in the RCGM target "
        "(docs/math.md#rcgm-target); 0 = official flow-matching mode (large recipe)")
    twinflow_enhanced_ratio: float = _twinflow_field(
        "twinflow_enhanced_ratio",
        "CFG baked into the target: v + ratio (F_cond - F_uncond); 0 = off")
    twinflow_delta_t: float = _twinflow_field(
        "twinflow_delta_t", "Δt of the RCGM target; official 0.01")
    twinflow_target_clamp: float = _twinflow_field(
        "twinflow_target_clamp", "clip of the RCGM residual to ±value; official 1")
    twinflow_require_ema: bool = _field(
        True, "refuse to run TwinFlow without an EMA teacher (use_ema)")
    twinflow_allow_no_ema_teacher: bool = _field(
        False, "with use_ema false, let the student be its own teacher")
    twinflow_allow_diff2flow: bool = _field(
        False, "let epsilon / v-prediction models in through diff2flow")
    twinflow_adversarial_enabled: bool = _twinflow_field(
        "twinflow_adversarial_enabled", "the fake (twin) branch: L_adv, L_rectify and (tutorial "
        "recipe) the 1->0 consistency term")
    twinflow_adversarial_weight: float = _twinflow_field(
        "twinflow_adversarial_weight", "weight of L_adv (flow matching on the fake branch)")
    twinflow_rectify_weight: float = _twinflow_field(
        "twinflow_rectify_weight", "weight of L_rectify (twin velocity matching, paper Eq. 9)")
    # ---- TwinFlow, twinflow-min additions ----
    twinflow_consistency_weight: float = _twinflow_field(
        "twinflow_consistency_weight", "weight of the 1->0 consistency term "
        "(docs/math.md#consistency)")
    twinflow_realvel_weight: float = _twinflow_field(
        "twinflow_realvel_weight", "weight of the real-velocity term F(x_t, t, t) "
        "(docs/math.md#real-velocity)")
    twinflow_consistency_ratio: float = _twinflow_field(
        "twinflow_consistency_ratio", "large: official consistc_ratio in [0, 1], "
        "t_tgt = t - U ratio t; 0 = RCGM off, below 1 = rectify off")
    twinflow_start_step: int = _field(
        0, "plain flow matching before this step; at it the EMA teacher restarts from the "
        "student and TwinFlow switches on")
    twinflow_recipe: str = _twinflow_field(
        "twinflow_recipe", "loss recipe: official MNIST tutorial or large-scale src", RECIPE_NAMES)
    twinflow_group_proportions: list[float] = _twinflow_field(
        "twinflow_group_proportions", "large: shares of the row groups e2e, mul, any, adv")
    twinflow_time_dist: list[float] = _twinflow_field(
        "twinflow_time_dist", "t ~ Beta(a, b) * scale as [a, b, scale]")
    twinflow_loss_type: str = _twinflow_field(
        "twinflow_loss_type", "per-sample loss: l2, or Barron alpha=1 (official large)", LOSS_TYPES)
    twinflow_time_weighting: bool = _twinflow_field(
        "twinflow_time_weighting", "large: the official tan time weight per row")
    twinflow_dist_match_cof: float = _twinflow_field(
        "twinflow_dist_match_cof", "large: weight of the rectify term (official dist_match_cof)")
    twinflow_rectify_clip: float | None = _twinflow_field(
        "twinflow_rectify_clip",
        "clip Δv to ±value (official large: 1); none = the recipe's default")
    twinflow_enhanced_range: list[float] = _twinflow_field(
        "twinflow_enhanced_range", "large: CFG enhancement only where lo < t < hi")
    twinflow_image_free: bool = _field(
        False, "train on the model's own samples (pretrained model, labels only)")
    # ---- general, SimpleTuner names ----
    use_ema: bool = _field(
        True, "keep an EMA of the student: the TwinFlow teacher and the sampled model")
    ema_decay: float = _field(
        0.99, "EMA decay in [0, 1]; 0 = the student itself, 1 = frozen initial model")
    learning_rate: float = _field(
        1e-4, "AdamW learning rate (peak value when lr_schedule is cosine)")
    train_batch_size: int = _field(64, f"samples per micro-batch, 1-{MAX_MICRO_BATCH}")
    gradient_accumulation_steps: int = _field(1, "micro-batches per optimizer step")
    mixed_precision: str = _field(
        "no", "autocast dtype: bf16 on CUDA and CPU, fp16 on CUDA only", ("no", "bf16", "fp16"))
    output_dir: str = _field("outputs", "runs are written to OUTPUT_DIR/<run name>")
    seed: int = _field(0, "seed of the model initialisation and of every training draw")
    max_train_steps: int = _field(1000, "optimizer steps")
    validation_guidance: float = _field(
        0.0, "CFG scale at validation; TwinFlow samples at 0 (trained in)")
    validation_num_inference_steps: int = _field(
        2, "sampling steps at validation when TwinFlow is off")
    validation_every: int = _field(500, "validate every N steps; 0 = off")
    checkpointing_steps: int = _field(500, "checkpoint every N steps; 0 = only at the end")
    prediction_type: str = _field(
        "flow_matching", "network output; non-flow needs diff2flow",
        ("flow_matching", "epsilon", "v_prediction"))
    diff2flow_enabled: bool = _field(
        False, "turn an epsilon / v-prediction output into a flow velocity")
    distillation_method: str | None = _field(None, "SimpleTuner's other distillers: leave unset")
    model_family: str = _field(
        "dit", "architecture family (class-conditional DiT / SiT)", ("dit", "sit"))
    model_type: str = _field(
        "full", "full fine-tuning, or LoRA adapters on a pretrained model", ("full", "lora"))
    lora_rank: int = _field(16, "model_type lora: rank of each adapter")
    lora_alpha: float | None = _field(
        None, "model_type lora: the update is scaled by alpha / rank; none = rank")
    lora_dropout: float = _field(0.0, "model_type lora: dropout on the adapter input, in [0, 1)")
    lora_target_modules: list[str] = _field(LORA_TARGETS, "model_type lora: linear layers to adapt")
    pretrained_model_name_or_path: str | None = _field(
        None, "local .safetensors file to start from")
    dataset: str = _field("toy:moons", "toy:<name>, cifar10, folder or latents:<path>")
    # ---- general, twinflow-min additions ----
    data: str | None = _field(
        None, "CIFAR-10 archive or image folder for dataset cifar10 / folder")
    data_check_md5: bool = _field(
        True, "check the md5 sums of official CIFAR-10 files; false for a re-packed copy")
    model: str = _field(
        "toy", "model registry name (MODEL_REGISTRY) when no pretrained file is given")
    label_dropout: float = _field(
        0.1, "chance a label becomes the null class (unconditional branch)")
    adam_beta1: float = _field(0.9, "AdamW beta1")
    adam_beta2: float = _field(0.999, "AdamW beta2")
    weight_decay: float = _field(0.0, "AdamW weight decay")
    lr_schedule: str = _field(
        "constant", "constant, or cosine decay from learning_rate to 0 at lr_decay_steps",
        ("constant", "cosine"))
    lr_warmup_steps: int = _field(0, "linear learning-rate warm-up from 0 over the first N steps")
    lr_decay_steps: int | None = _field(
        None, "length of the cosine schedule; none = max_train_steps (resolved and saved with "
        "the run, so a resume with more steps keeps the schedule)")
    max_grad_norm: float = _field(1.0, "gradient-norm clipping; 0 = off")
    ema_warmup: bool = _field(
        True, "official EMA warm-up: decay climbs from 0 to ema_decay (docs/math.md#ema-teacher)")
    device: str = _field("auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:1, mps ...")
    compile: bool = _field(False, "torch.compile the student")
    gradient_checkpointing: bool = _field(
        False, "recompute transformer blocks in backward to save memory")
    resume: str | None = _field(None, "run folder or checkpoint.safetensors to continue from")
    log_every: int = _field(10, "log the loss terms every N steps")
    run_name: str | None = _field(
        None, "run folder name under output_dir; none = from the dataset")
    eval_samples: int = _field(
        4000, f"samples drawn for the final evaluation, 0-{MAX_EVAL_SAMPLES}; 0 = skip it")
    validation_nfe: list[int] = _field(
        [1, 2, 4], "sampling steps (NFE) shown at validation and evaluation")

    # ---- views used by train.py ----
    def twinflow_options(self) -> TwinFlowOptions:
        """The loss options of `twinflow_losses(..., options=)`, built and checked once per run.

        Raises ConfigError naming the config key when TwinFlowOptions refuses a value.
        """
        values = {option: getattr(self, key) for key, option in TWINFLOW_OPTION_KEYS.items()}
        values["enhanced_range"] = tuple(self.twinflow_enhanced_range)
        if self.twinflow_recipe == "large":  # SRC `ema_decay_rate == 1` (docs/math.md#ema-teacher)
            frozen = self.use_ema and self.ema_decay == 1.0
            values["rcgm_teacher_is_student"] = frozen
            values["enhance_around_null"] = frozen and self.twinflow_image_free
        try:
            return TwinFlowOptions(**values)
        except OptionError as error:
            raise _config_error_of(self, error) from None

    def input_sampling_options(self) -> dict:
        """Keywords of `twinflow.sample_training_inputs` (docs/math.md#large-recipe)."""
        values = {keyword: getattr(self, key) for key, keyword in SAMPLING_KEYS.items()}
        values["group_proportions"] = tuple(values["group_proportions"])
        values["time_dist"] = tuple(values["time_dist"])
        return values

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict, where: str = "") -> "TrainConfig":
        """Build from a dict (to_dict, a checkpoint, JSON); keys and types checked, not ranges."""
        return cls(**check_keys_and_types(values, where))


FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)
CONFIG_KEY_OF_OPTION = {option: key for key, option in TWINFLOW_OPTION_KEYS.items()}


def default_of(key: str):
    """The dataclass default of a key (a fresh list for list keys)."""
    field = FIELDS[key]
    if field.default is dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _config_error_of(cfg: TrainConfig, error: OptionError) -> ConfigError:
    """TwinFlowOptions' refusal of an option, re-worded with the config key and value."""
    key = CONFIG_KEY_OF_OPTION.get(error.option)
    if key is None:  # an option the config derives (rcgm_teacher_is_student, ...): name it
        return ConfigError(f"{error} (derived from the config)")
    return ConfigError(f"{key} = {getattr(cfg, key)!r} {error.rule}")


# Starting values without --config: only the keys that differ from the dataclass defaults.
PRESETS: dict[str, dict] = {
    "toy": dict(
        dataset="toy:moons", model="toy", twinflow_enabled=True, twinflow_adversarial_enabled=True,
        twinflow_enhanced_ratio=0.0,  # the toy is unconditional: no labels, no CFG to bake in
        # tuned on a 2-core CPU: ~1.5 min, 1-NFE energy distance 0.0011-0.0015 over seeds 0-2
        train_batch_size=96, use_ema=True, ema_decay=0.99, learning_rate=2e-3,
        lr_schedule="cosine", max_train_steps=2000, validation_every=0, checkpointing_steps=500),
    "cifar10": dict(
        dataset="cifar10", model="CIFAR-S/2", twinflow_enabled=True,
        twinflow_adversarial_enabled=True, twinflow_enhanced_ratio=0.5, train_batch_size=128,
        learning_rate=1e-4, mixed_precision="no",  # train.py may choose bf16 on CUDA
        max_train_steps=100_000, validation_every=2000, checkpointing_steps=5000),
}


# ---------------------------------------------------------------- keys and types
def base_type(hint) -> tuple[object, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None)), True
    return hint, False


def type_name(hint) -> str:
    """The type as --help and the README table name it, e.g. "list of float", "int or none"."""
    base, optional = base_type(hint)
    if typing.get_origin(base) is list:
        name = f"list of {type_name(typing.get_args(base)[0])}"
    else:
        name = base.__name__
    return f"{name} or none" if optional else name


def _shown(value) -> str:
    """A value as the user wrote it: JSON words for null / true / false, repr otherwise."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return repr(value)


def _coerce_number(key: str, value, base, where: str):
    """An int or float field's value: no bools or strings, finite, ints within 64 bits."""
    kind = "an integer" if base is int else "a number"
    got = f"got {_shown(value)}"
    if not is_real(value, allow_inf=True):
        in_json = "command line" not in where  # JSON: a quoted "1e-4" is a string
        example = "e.g. 500" if base is int else "e.g. 1e-4"
        fix = "write a number without quotes" if in_json else f"write a decimal number, {example}"
        fix = "booleans are not numbers" if isinstance(value, bool) else fix
        raise ConfigError(f"{key}{where}: expected {kind}, {got}; {fix}")
    if not is_real(value):
        raise ConfigError(f"{key}{where}: expected a finite {kind.split()[-1]}, {got}")
    if base is int and value != int(value):
        raise ConfigError(f"{key}{where}: expected an integer, {got}")
    if base is int and abs(value) > INT64_MAX:
        raise ConfigError(f"{key}{where}: {got}, beyond the 64-bit integers torch can hold "
                          f"(at most 2**63 - 1 = {INT64_MAX})")
    return base(value)


def _coerce(key: str, value, hint, where: str):
    """`value` as the field's type; ints pass for floats, bools and strings never for numbers."""
    base, optional = base_type(hint)
    if value is None and optional:
        return None
    got = f"got {_shown(value)}"
    if typing.get_origin(base) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}{where}: expected a {type_name(hint)} such as [1, 2], {got}")
        item_hint = typing.get_args(base)[0]
        return [_coerce(f"{key}[{index}]", item, item_hint, where)
                for index, item in enumerate(value)]
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}{where}: expected true or false, {got}; "
                              "write the word without quotes")
        return value
    if base in (int, float):
        return _coerce_number(key, value, base, where)
    if not isinstance(value, str):
        raise ConfigError(f"{key}{where}: expected a string, {got}")
    return value


def unknown_key_error(key: str, where: str, prefix: str = "") -> ConfigError:
    """One line naming an unknown key and the closest valid one."""
    close = difflib.get_close_matches(key.replace("-", "_"), list(FIELDS), n=1)
    hint = f"did you mean {prefix}{close[0]}? " if close else ""
    return ConfigError(f"unknown key {prefix}{key}{where}; {hint}"
                       "(`python train.py --help` lists every key)")


def check_keys_and_types(values: dict, where: str = "") -> dict:
    """Refuse unknown keys (naming the closest valid one) and wrong types; `--key` is fine."""
    checked = {}
    for raw_key, value in values.items():
        key = raw_key.removeprefix("--")
        if key not in FIELDS:
            raise unknown_key_error(key, where)
        checked[key] = _coerce(key, value, HINTS[key], where)
    return checked


# ---------------------------------------------------------------- value rules
# (key, test of its value, what the value must be): checked in order, the first failure raises.
# Types are already checked (`_coerce`): ints are 64-bit integers, floats finite numbers.
COUNT_RULE = f"from {{}} to 2**63 - 1 = {INT64_MAX}"
NON_NEGATIVE_NUMBERS = ("weight_decay", "max_grad_norm", "validation_guidance")
NON_NEGATIVE_COUNTS = ("seed", "validation_every", "checkpointing_steps", "lr_warmup_steps",
                       "twinflow_start_step")
POSITIVE_COUNTS = ("gradient_accumulation_steps", "max_train_steps", "log_every",
                   "validation_num_inference_steps", "lora_rank")
UNIT_INTERVAL = ("label_dropout", "adam_beta1", "adam_beta2", "lora_dropout")
GROUPS_RULE = f"must be 4 shares >= 0, for the groups {', '.join(GROUP_NAMES)}"
TIME_DIST_RULE = ("must be [a, b, scale] with Beta parameters a, b > 0 and 0 < scale <= 1 "
                  "(official [1, 1, 1])")
NFE_RULE = "must list step counts >= 1, e.g. [1, 2, 4]"
RULES = (
    *((key, lambda v: v >= 0, "must not be negative") for key in NON_NEGATIVE_NUMBERS),
    *((key, lambda v: is_count(v, minimum=0), f"must be an integer {COUNT_RULE.format(0)}")
      for key in NON_NEGATIVE_COUNTS),
    *((key, lambda v: is_count(v, minimum=1),
       f"must be at least 1 (an integer {COUNT_RULE.format(1)})") for key in POSITIVE_COUNTS),
    ("train_batch_size", lambda v: v >= 1, "must be at least 1"),
    ("train_batch_size", lambda v: v <= MAX_MICRO_BATCH,
     f"is above {MAX_MICRO_BATCH}: one micro-batch is held in memory at once; reach larger "
     "batches with gradient_accumulation_steps"),
    ("eval_samples", lambda v: 0 <= v <= MAX_EVAL_SAMPLES,
     f"must lie in 0-{MAX_EVAL_SAMPLES} (0 skips the final evaluation; the toy metric compares "
     "every pair of samples)"),
    ("lr_decay_steps", lambda v: v is None or is_count(v, minimum=1),
     f"must be none (= max_train_steps) or an integer {COUNT_RULE.format(1)}"),
    *((key, lambda v: 0 <= v < 1, "must lie in [0, 1)") for key in UNIT_INTERVAL),
    ("learning_rate", lambda v: v > 0, "must be > 0, e.g. 1e-4"),
    ("ema_decay", lambda v: 0 <= v <= 1,
     "must lie in [0, 1] (0 = the student itself, 1 = a frozen copy)"),
    ("lora_alpha", lambda v: v is None or v > 0, "must be > 0, or none for alpha = lora_rank"),
    ("lora_target_modules", lambda v: len(v) > 0,
     f"must name at least one layer, e.g. {LORA_TARGETS}"),
    ("lora_target_modules", lambda v: all(name.strip() for name in v),
     "must not hold an empty name"),
    ("twinflow_group_proportions", lambda v: len(v) == len(GROUP_NAMES), GROUPS_RULE),
    ("twinflow_group_proportions", lambda v: min(v) >= 0, GROUPS_RULE),
    ("twinflow_group_proportions", lambda v: sum(v) > 0,
     "are all zero; give at least one group a share > 0"),
    ("twinflow_time_dist", lambda v: len(v) == 3, TIME_DIST_RULE),
    ("twinflow_time_dist", lambda v: min(v[0], v[1]) > 0, TIME_DIST_RULE),
    ("twinflow_time_dist", lambda v: 0 < v[2] <= 1, TIME_DIST_RULE),
    ("validation_nfe", lambda v: len(v) > 0, NFE_RULE),
    ("validation_nfe", lambda v: min(v) >= 1, NFE_RULE),
    ("output_dir", lambda v: v.strip() != "", "must name a folder"),
    ("resume", lambda v: v is None or Path(v).exists(),
     "does not exist; give a run folder or its checkpoint"),
)
LOW, HIGH = TARGET_STEPS_ALLOWED
# Keys only TwinFlow reads: set away from their default while twinflow_enabled is false -> a note.
TWINFLOW_ONLY = tuple(key for key in FIELDS if key.startswith("twinflow_")
                      and key not in ("twinflow_enabled", "twinflow_image_free"))
LORA_KEYS = tuple(key for key in FIELDS if key.startswith("lora_"))
# keys read only by the fake (twin) branch, per recipe: twinflow_adversarial_enabled false leaves
# them unused (the tutorial recipe's 1 -> 0 consistency term is part of its fake branch)
FAKE_BRANCH_KEYS = {
    "tutorial": ("twinflow_adversarial_weight", "twinflow_rectify_weight", "twinflow_rectify_clip",
                 "twinflow_consistency_weight"),
    "large": ("twinflow_adversarial_weight", "twinflow_rectify_weight", "twinflow_rectify_clip",
              "twinflow_dist_match_cof"),
}


# ---------------------------------------------------------------- validation
def _require(cfg: TrainConfig, key: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {getattr(cfg, key)!r} {rule}")


def _not_used(keys: list[str]) -> str:
    return f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'} not used"


def _changed(cfg: TrainConfig, keys) -> list[str]:
    return [key for key in keys if getattr(cfg, key) != default_of(key)]


def _check_choices(cfg: TrainConfig) -> None:
    families = FIELDS["model_family"].metadata["choices"]
    _require(cfg, "model_family", cfg.model_family in families,
             "is not supported: this project trains class-conditional DiT/SiT models; "
             "use model_family: dit (or sit)")
    for key, field in FIELDS.items():
        choices = field.metadata["choices"]
        if choices:
            _require(cfg, key, getattr(cfg, key) in choices,
                     f"is not one of: {', '.join(choices)}")


def _check_prediction(cfg: TrainConfig) -> None:
    """SimpleTuner's TwinFlow rules: flow matching (or a diff2flow bridge), no second distiller."""
    flow = cfg.prediction_type == "flow_matching"
    bridged = cfg.diff2flow_enabled and cfg.twinflow_allow_diff2flow
    twinflow_refuses = cfg.twinflow_enabled and not flow
    _require(cfg, "prediction_type", bridged or not twinflow_refuses,
             "but TwinFlow requires prediction_type=flow_matching; to bridge a diffusion model "
             "set diff2flow_enabled: true and twinflow_allow_diff2flow: true")
    _require(cfg, "prediction_type", flow or cfg.diff2flow_enabled,
             "cannot train here: twinflow-min trains flow matching; "
             "set diff2flow_enabled: true to bridge it")
    fix = "(or unset twinflow_enabled)" if cfg.twinflow_enabled else "and twinflow_enabled: true"
    _require(cfg, "distillation_method", cfg.distillation_method is None,
             "cannot be used: TwinFlow is its own distillation and twinflow-min has no other; "
             f"set distillation_method: null {fix}")


def _check_device(cfg: TrainConfig) -> None:
    try:
        resolve_device(cfg.device)
    except ValueError as error:  # one line listing the devices this machine has
        raise ConfigError(str(error)) from None


def _check_pretrained(cfg: TrainConfig) -> None:
    path = cfg.pretrained_model_name_or_path
    has_file = path is not None
    _require(cfg, "twinflow_image_free", has_file or not cfg.twinflow_image_free,
             "trains a pretrained model on its own samples: set pretrained_model_name_or_path "
             "(--pretrained FILE)")
    _require(cfg, "model_type", has_file or cfg.model_type != "lora",
             "adapts a pretrained model: set pretrained_model_name_or_path (--pretrained "
             "FILE.safetensors), or use model_type: full to train from scratch")
    if not has_file:
        return
    file = Path(path)
    key = "pretrained_model_name_or_path"
    _require(cfg, key, not file.is_dir(), "is a folder; give the .safetensors file itself")
    hub_like = len(file.parts) == 2  # "org/name"
    hub_like = hub_like and file.suffix not in MODEL_FILE_SUFFIXES
    hub_like = hub_like and not file.is_absolute()
    hub_like = hub_like and not file.exists()
    if hub_like:
        raise ConfigError(f"{key} = {path!r} looks like a hub name, but nothing is downloaded: "
                          f"convert a release with {CONVERT} and give that local .safetensors file")
    _require(cfg, key, file.exists(), "does not exist; give a local .safetensors file (nothing is "
             f"downloaded: convert a release with {CONVERT})")
    _require(cfg, key, file.suffix == ".safetensors",
             f"is not a .safetensors file; convert it with {CONVERT}")


def _check_dataset(cfg: TrainConfig) -> None:
    spec = cfg.dataset
    if spec.startswith("toy:"):
        _require(cfg, "dataset", spec[4:] in TOY_DATASETS,
                 f"is not a toy; use toy:<{'|'.join(TOY_DATASETS)}>")
    elif spec in IMAGE_DATASETS:
        _check_data_path(cfg)
    elif spec.startswith("latents:"):
        _require(cfg, "dataset", Path(spec[8:]).is_file(),
                 "names no existing file; use latents:<path of the file>")
    elif spec.replace("-", "_") == "image_free":
        raise ConfigError("dataset = 'image_free' is a flag, not a dataset: "
                          "set twinflow_image_free: true (--image-free)")
    else:
        raise ConfigError(f"dataset = {spec!r} is not understood; "
                          "use toy:<name>, cifar10, folder or latents:<path>")
    _check_data_is_read(cfg)


def _check_data_path(cfg: TrainConfig) -> None:
    """dataset cifar10 / folder: `data` names an existing path (image-free training needs none)."""
    if cfg.twinflow_image_free:
        return
    _require(cfg, "data", cfg.data is not None,
             f"but dataset {cfg.dataset} reads its images from `data`: give the path, e.g. "
             "--data cifar-10-python.tar.gz (image-free training needs none)")
    _require(cfg, "data", Path(cfg.data).exists(), "does not exist; give an existing path")


def _check_data_is_read(cfg: TrainConfig) -> None:
    """A `data` path that nothing would read is refused (the user expected it to be trained on)."""
    if cfg.data is None:
        return
    if cfg.twinflow_image_free:
        raise ConfigError(f"data = {cfg.data!r} is not read: twinflow_image_free trains on the "
                          "model's own samples; drop --data (or set twinflow_image_free: false)")
    if cfg.dataset not in IMAGE_DATASETS:
        raise ConfigError(f"data = {cfg.data!r} is not read by dataset {cfg.dataset!r}; drop "
                          f"--data, or use --dataset {' or '.join(IMAGE_DATASETS)} to train on it")


def _check_model(cfg: TrainConfig) -> None:
    """The registry model trained from scratch (no pretrained file) must exist and fit the data."""
    toy = cfg.dataset.startswith("toy:")
    if cfg.model not in MODEL_REGISTRY:
        close = difflib.get_close_matches(cfg.model, list(MODEL_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"model = {cfg.model!r} is not in MODEL_REGISTRY; {hint}"
                          f"known: {', '.join(MODEL_REGISTRY)}")
    vector_model = "data_dim" in MODEL_REGISTRY[cfg.model]  # 2-D points; image models otherwise
    fix = "model: toy" if toy else "an image model, e.g. model: CIFAR-S/2"
    _require(cfg, "model", vector_model == toy, f"does not fit dataset {cfg.dataset!r}; use {fix}")


def _unused_notes(cfg: TrainConfig, written=None) -> list[str]:
    """Keys set away from their default that this config never reads: one note per kind.

    `written`: the keys the user wrote (file or flags); None counts every key. A preset's own values
    (e.g. the toy preset's adversarial settings) are not the user's and get no note."""
    notes = []

    def written_changes(keys):
        return [key for key in _changed(cfg, keys) if written is None or key in written]

    lora = written_changes(LORA_KEYS)
    if lora and cfg.model_type != "lora":
        notes.append(f"model_type is full: {_not_used(lora)} (set model_type: lora for adapters)")
    reads_files = cfg.dataset in IMAGE_DATASETS and not cfg.twinflow_image_free
    if not cfg.data_check_md5 and not reads_files:
        notes.append(f"data_check_md5 is not used: dataset {cfg.dataset!r} reads no CIFAR-10 file")
    twinflow = written_changes(TWINFLOW_ONLY)
    if twinflow and not cfg.twinflow_enabled:
        notes.append(f"twinflow_enabled is false (plain flow matching): {_not_used(twinflow)}; "
                     "set twinflow_enabled: true to train with TwinFlow")
        return notes
    fake_branch = written_changes(FAKE_BRANCH_KEYS.get(cfg.twinflow_recipe, ()))
    if fake_branch and not cfg.twinflow_adversarial_enabled:
        notes.append("twinflow_adversarial_enabled is false (no fake branch): "
                     f"{_not_used(fake_branch)}; "
                     "set twinflow_adversarial_enabled: true to train it")
    return notes


def _check_large_only(cfg: TrainConfig) -> None:
    """Options only the large recipe (official SRC) reads are refused with the tutorial recipe."""
    if cfg.twinflow_recipe == "large":
        return
    large_only = [key for key, option in TWINFLOW_OPTION_KEYS.items() if option in LARGE_ONLY]
    large_only.append("twinflow_group_proportions")  # sample_training_inputs: large recipe only
    changed = _changed(cfg, large_only)
    if not changed:
        return
    key = changed[0]
    raise ConfigError(f'{key} = {getattr(cfg, key)!r} only applies to twinflow_recipe: "large"; '
                      f"set that, or reset {key}: {json.dumps(default_of(key))}")


def _check_teacher(cfg: TrainConfig) -> None:
    """An EMA teacher (or the explicit opt-out), and one that can learn (issue 11 item 8)."""
    no_teacher_ok = cfg.twinflow_allow_no_ema_teacher or not cfg.twinflow_require_ema
    if not cfg.use_ema and not no_teacher_ok:
        raise ConfigError("use_ema = False, but TwinFlow needs an EMA teacher: set use_ema: true, "
                          "or accept the student as teacher: twinflow_allow_no_ema_teacher: true "
                          "(or twinflow_require_ema: false)")
    if cfg.pretrained_model_name_or_path is not None:
        return
    frozen = cfg.use_ema and cfg.ema_decay == 1.0
    frozen_at_zero = frozen and cfg.twinflow_start_step == 0  # no flow-matching phase before
    _require(cfg, "ema_decay", not frozen_at_zero,
             "freezes the teacher at its initial weights, and a model trained from scratch starts "
             "by outputting zeros (zero-initialised last layer), so every TwinFlow target stays "
             "zero; use ema_decay < 1 (e.g. 0.99), a pretrained model, or twinflow_start_step > 0")
    null_untrained = cfg.label_dropout == 0
    null_untrained = null_untrained and cfg.twinflow_enhanced_ratio > 0  # CFG target needs it
    _require(cfg, "label_dropout", not null_untrained,
             "never trains the null class, but twinflow_enhanced_ratio > 0 builds the CFG target "
             "from it (docs/math.md#cfg-target); set label_dropout: 0.1, "
             "or twinflow_enhanced_ratio: 0")


def _check_large_batch(cfg: TrainConfig) -> None:
    """Large recipe: each optimizer step holds a row of every group with a positive share."""
    groups = sum(share > 0 for share in cfg.twinflow_group_proportions)
    rows = cfg.train_batch_size * cfg.gradient_accumulation_steps
    if rows >= groups:
        return
    raise ConfigError(
        f"train_batch_size = {cfg.train_batch_size} x gradient_accumulation_steps = "
        f"{cfg.gradient_accumulation_steps} gives {rows} rows per optimizer step, below the "
        f"{groups} row groups of the large recipe (micro-batches smaller than that take the "
        "groups in turn); raise either, or zero a group proportion")


def _check_twinflow(cfg: TrainConfig) -> list[str]:
    steps = cfg.twinflow_target_step_count
    _require(cfg, "twinflow_target_step_count", LOW <= steps <= HIGH,
             f"is outside {LOW}-{HIGH}; TwinFlow samples in 1-4")
    _check_large_only(cfg)
    cfg.twinflow_options()  # TwinFlowOptions checks every loss option; errors name the config key
    large = cfg.twinflow_recipe == "large"
    adv_rows = cfg.twinflow_group_proportions[GROUP_NAMES.index("adv")] > 0
    adv_rows = adv_rows and large
    _require(cfg, "twinflow_adversarial_enabled", cfg.twinflow_adversarial_enabled or not adv_rows,
             "but the large recipe's adv rows need it (twinflow_group_proportions[3] > 0): set "
             "twinflow_adversarial_enabled: true, or drop the adv rows with "
             "twinflow_group_proportions: [1, 1, 1, 0] (the RCGM recipe)")
    unconditional = cfg.dataset.startswith("toy:")
    unconditional = unconditional and not cfg.twinflow_image_free  # image-free: the model's labels
    contrasts_labels = cfg.twinflow_enhanced_ratio > 0
    _require(cfg, "twinflow_enhanced_ratio", not (contrasts_labels and unconditional),
             f"needs class labels, but {cfg.dataset} is unconditional; "
             "set twinflow_enhanced_ratio: 0.0")
    _require(cfg, "twinflow_start_step", cfg.twinflow_start_step < cfg.max_train_steps,
             f"is not below max_train_steps = {cfg.max_train_steps}: TwinFlow would never switch "
             "on; use a smaller start step or more steps")
    _check_teacher(cfg)
    if large:
        _check_large_batch(cfg)
    if steps > TARGET_STEPS_RECOMMENDED_MAX:
        return [f"twinflow_target_step_count = {steps} is above the "
                f"1-{TARGET_STEPS_RECOMMENDED_MAX} steps TwinFlow is built for"]
    return []


def validate(cfg: TrainConfig, written=None) -> list[str]:
    """Raise ConfigError for the first value that cannot work; return notes (one line each).

    `written`: the keys the user wrote, so that notes name only those (None: every key)."""
    check_keys_and_types(cfg.to_dict())  # a TrainConfig built in Python skipped the JSON/CLI door
    _check_choices(cfg)
    _check_prediction(cfg)
    for key, test, rule in RULES:
        _require(cfg, key, test(getattr(cfg, key)), rule)
    _check_device(cfg)
    _check_pretrained(cfg)
    _check_dataset(cfg)
    if cfg.pretrained_model_name_or_path is None:
        _check_model(cfg)
    notes = _unused_notes(cfg, written)
    if cfg.twinflow_enabled:
        return notes + _check_twinflow(cfg)
    _require(cfg, "twinflow_start_step", cfg.twinflow_start_step == 0,
             "switches TwinFlow on at that step, but twinflow_enabled is false; "
             "set twinflow_enabled: true (or drop twinflow_start_step)")
    return notes
