"""Tests of twinflow_min/config.py and config_cli.py: JSON (SimpleTuner keys) + flags -> config.

Expected defaults and key names are written here from the briefs and SimpleTuner's TwinFlow guide
(documentation/distillation/TWINFLOW.md), not read back from the code under test. A loss option's
range lives in TwinFlowOptions alone: those refusals are compared with TwinFlowOptions' own rule.
Time convention: see twinflow_min/transport.py.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from twinflow_min.config import PRESETS, ConfigError, ConfigWarning, TrainConfig, validate
from twinflow_min.config_cli import build_parser, config_table_markdown, resolve_config
from twinflow_min.twinflow import OptionError, TwinFlowOptions

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "example-simpletuner-twinflow.json"

# The dataclass defaults, copied from the brief (SimpleTuner's values where it has the key).
BRIEF_DEFAULTS = dict(
    twinflow_enabled=False, twinflow_target_step_count=2, twinflow_estimate_order=2,
    twinflow_enhanced_ratio=0.5, twinflow_delta_t=0.01, twinflow_target_clamp=1.0,
    twinflow_require_ema=True, twinflow_allow_no_ema_teacher=False, twinflow_allow_diff2flow=False,
    twinflow_adversarial_enabled=False, twinflow_adversarial_weight=1.0,
    twinflow_rectify_weight=1.0, twinflow_consistency_weight=1.0, twinflow_realvel_weight=1.0,
    twinflow_recipe="tutorial", twinflow_group_proportions=[1, 1, 1, 1],
    twinflow_time_dist=[1.0, 1.0, 1.0], twinflow_loss_type="l2", twinflow_time_weighting=False,
    twinflow_dist_match_cof=0.5, twinflow_rectify_clip=None, twinflow_enhanced_range=[0.0, 1.0],
    twinflow_image_free=False, use_ema=True, ema_decay=0.99, learning_rate=1e-4,
    train_batch_size=64, gradient_accumulation_steps=1, mixed_precision="no",
    output_dir="outputs", seed=0, max_train_steps=1000, validation_guidance=0.0,
    validation_num_inference_steps=2, validation_every=500, checkpointing_steps=500,
    prediction_type="flow_matching", diff2flow_enabled=False, distillation_method=None,
    model_family="dit", model_type="full", pretrained_model_name_or_path=None,
    dataset="toy:moons", data=None, model="toy", label_dropout=0.1, adam_beta1=0.9,
    adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0, ema_warmup=True, device="auto",
    compile=False, gradient_checkpointing=False, resume=None, log_every=10, run_name=None,
    eval_samples=4000, validation_nfe=[1, 2, 4],
    lr_schedule="constant", lr_warmup_steps=0,  # constant learning rate, no warm-up unless asked
    # keys of issues 11, 13, 14 and 19 (values from their briefs; consistency ratio 1 = official)
    twinflow_consistency_ratio=1.0, twinflow_start_step=0, lr_decay_steps=None,
    data_check_md5=True, lora_rank=16, lora_alpha=None, lora_dropout=0.0,
    lora_target_modules=["qkv", "proj", "fc1", "fc2", "adaLN_modulation"],
)

# Keys of the "Quick Config" and "Adversarial Branch" sections of SimpleTuner's TwinFlow guide.
SIMPLETUNER_GUIDE_KEYS = (
    "model_family", "model_type", "pretrained_model_name_or_path", "output_dir",
    "distillation_method", "use_ema", "twinflow_enabled", "twinflow_target_step_count",
    "twinflow_estimate_order", "twinflow_enhanced_ratio", "twinflow_delta_t",
    "twinflow_target_clamp", "learning_rate", "train_batch_size", "gradient_accumulation_steps",
    "mixed_precision", "validation_guidance", "validation_num_inference_steps", "prediction_type",
    "diff2flow_enabled", "twinflow_allow_diff2flow", "twinflow_require_ema",
    "twinflow_allow_no_ema_teacher", "twinflow_adversarial_enabled", "twinflow_adversarial_weight",
    "twinflow_rectify_weight",
)


def write_config(tmp_path: Path, **changes) -> str:
    """The example config with `changes` (None is written as JSON null; ... drops the key)."""
    values = json.loads(EXAMPLE.read_text())
    values.update(changes)
    values = {key: value for key, value in values.items() if value is not ...}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return str(path)


def from_file(tmp_path: Path, **changes):
    return resolve_config(["--config", write_config(tmp_path, **changes)])


def refused(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as error:
        resolve_config(argv)
    message = str(error.value)
    assert "\n" not in message  # one line, as train.py prints it
    return message


# ---------------------------------------------------------------- defaults, example, presets
def test_dataclass_defaults_match_the_brief():
    defaults = dataclasses.asdict(TrainConfig())
    assert set(defaults) == set(BRIEF_DEFAULTS)
    assert defaults == BRIEF_DEFAULTS


def test_example_simpletuner_config_is_accepted_and_read_as_written():
    written = json.loads(EXAMPLE.read_text())
    cfg = resolve_config(["--config", str(EXAMPLE)])
    assert {key: getattr(cfg, key) for key in written} == written
    assert cfg.twinflow_enabled and cfg.twinflow_adversarial_enabled
    assert cfg.twinflow_enhanced_ratio == 0.0
    assert cfg.label_dropout == BRIEF_DEFAULTS["label_dropout"]  # missing from the file: default


def test_every_simpletuner_guide_key_is_a_field():
    assert set(SIMPLETUNER_GUIDE_KEYS) <= {field.name for field in dataclasses.fields(TrainConfig)}


def test_simpletuner_double_dash_keys_are_accepted(tmp_path):
    path = tmp_path / "dashed.json"
    dashed = {"--twinflow_enabled": True, "--twinflow_enhanced_ratio": 0.0, "--seed": 7}
    path.write_text(json.dumps(dashed))
    cfg = resolve_config(["--config", str(path)])
    assert (cfg.twinflow_enabled, cfg.twinflow_enhanced_ratio, cfg.seed) == (True, 0.0, 7)


def test_toy_preset_without_config():
    cfg = resolve_config([])
    assert cfg.dataset == "toy:moons" and cfg.model == "toy"
    twinflow = (cfg.twinflow_enabled, cfg.twinflow_adversarial_enabled, cfg.twinflow_enhanced_ratio)
    assert twinflow == (True, True, 0.0)
    cadence = (cfg.train_batch_size, cfg.use_ema, cfg.validation_every, cfg.checkpointing_steps)
    assert cadence == (96, True, 0, 500)
    assert (cfg.max_train_steps, cfg.learning_rate, cfg.lr_schedule) == (2000, 2e-3, "cosine")
    assert resolve_config(["--toy", "spirals"]).dataset == "toy:spirals"


def test_cifar10_preset_from_the_dataset(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"")  # existence is all the config checks
    cfg = resolve_config(["--dataset", "cifar10", "--data", str(archive)])
    assert (cfg.model, cfg.train_batch_size, cfg.learning_rate) == ("CIFAR-S/2", 128, 1e-4)
    assert cfg.twinflow_enhanced_ratio == 0.5
    cadence = (cfg.max_train_steps, cfg.validation_every, cfg.checkpointing_steps)
    assert cadence == (100_000, 2000, 5000)
    assert cfg.twinflow_enabled and cfg.twinflow_adversarial_enabled
    assert cfg.mixed_precision == "no"


def test_pretrained_image_free_needs_no_data(tmp_path):
    weights = tmp_path / "sit-b-2.safetensors"
    weights.write_bytes(b"")
    cfg = resolve_config(["--pretrained", str(weights), "--image-free"])
    assert cfg.twinflow_image_free and cfg.pretrained_model_name_or_path == str(weights)
    assert cfg.dataset == PRESETS["cifar10"]["dataset"] and cfg.data is None


def test_config_file_does_not_take_the_preset(tmp_path):
    cfg = from_file(tmp_path)
    assert cfg.label_dropout == 0.1 and cfg.log_every == 10  # not in the file: dataclass defaults
    path = tmp_path / "minimal.json"
    path.write_text("{}")
    steps = resolve_config(["--config", str(path)]).max_train_steps
    assert steps == BRIEF_DEFAULTS["max_train_steps"]


# ---------------------------------------------------------------- precedence and explicit zeros
def test_flags_override_json(tmp_path):
    path = write_config(tmp_path, max_train_steps=50, learning_rate=0.5, output_dir="a")
    cfg = resolve_config(["--config", path, "--max_train_steps", "3", "--lr", "2e-4", "--out", "b",
                          "--batch-size", "8", "--toy", "circles", "--use_ema",
                          "--validation_nfe", "1,2"])
    assert (cfg.max_train_steps, cfg.learning_rate, cfg.output_dir) == (3, 2e-4, "b")
    assert (cfg.train_batch_size, cfg.dataset) == (8, "toy:circles")
    assert (cfg.use_ema, cfg.validation_nfe) == (True, [1, 2])
    assert resolve_config(["--config", path, "--steps", "4"]).max_train_steps == 4


def test_explicit_zeros_and_false_stay_as_given(tmp_path):
    zeros = dict(twinflow_enhanced_ratio=0, validation_every=0, twinflow_adversarial_weight=0.0,
                 seed=0, ema_decay=0, checkpointing_steps=0, max_grad_norm=0, label_dropout=0.0,
                 twinflow_rectify_weight=0.0, twinflow_consistency_weight=0,
                 twinflow_realvel_weight=0.0, validation_guidance=0.0, twinflow_dist_match_cof=0.0,
                 use_ema=False, twinflow_allow_no_ema_teacher=True, ema_warmup=False,
                 twinflow_recipe="large")  # dist_match_cof is a large-recipe option
    cfg = from_file(tmp_path, **zeros)
    assert {key: getattr(cfg, key) for key in zeros} == zeros
    path = write_config(tmp_path, validation_every=100, twinflow_adversarial_weight=2.0, seed=5)
    with pytest.warns(ConfigWarning, match="no fake branch"):  # weight 0 of a branch that is off
        cfg = resolve_config(["--config", path, "--validation_every", "0",
                              "--twinflow_adversarial_weight", "0.0", "--seed", "0",
                              "--twinflow_adversarial_enabled", "false"])
    assert (cfg.validation_every, cfg.twinflow_adversarial_weight, cfg.seed) == (0, 0.0, 0)
    assert cfg.twinflow_adversarial_enabled is False
    preset = resolve_config(["--twinflow_adversarial_enabled", "false"])
    assert preset.twinflow_adversarial_enabled is False


def test_command_line_value_forms(tmp_path):
    cfg = resolve_config(["--twinflow_group_proportions", "[1,1,1,0]",
                          "--twinflow_enhanced_range", "0.2,0.8", "--twinflow_rectify_clip", "1",
                          "--run_name", "none", "--learning_rate", ".001",
                          "--twinflow_recipe", "large"])
    assert cfg.twinflow_group_proportions == [1.0, 1.0, 1.0, 0.0]
    assert cfg.twinflow_enhanced_range == [0.2, 0.8]
    assert (cfg.twinflow_rectify_clip, cfg.run_name, cfg.learning_rate) == (1.0, None, 0.001)
    last_wins = resolve_config(["--twinflow_rectify_clip", "1.5",
                                "--twinflow_rectify_clip", "none"])
    assert last_wins.twinflow_rectify_clip is None
    assert resolve_config(["--compile"]).compile is True  # bare boolean flag = true


# ---------------------------------------------------------------- refusals (each from a JSON file)
PRETRAINED = "pretrained_model_name_or_path"


@pytest.mark.parametrize("changes, key, phrase", [
    (dict(prediction_type="epsilon"), "prediction_type", "twinflow_allow_diff2flow: true"),
    (dict(prediction_type="v_prediction", diff2flow_enabled=True), "prediction_type",
     "flow_matching"),
    (dict(use_ema=False), "use_ema", "twinflow_allow_no_ema_teacher: true"),
    (dict(use_ema=False), "use_ema", "twinflow_require_ema: false"),
    (dict(distillation_method="dmd"), "distillation_method", "null"),
    (dict(twinflow_target_step_count=0), "twinflow_target_step_count", "1-8"),
    (dict(twinflow_target_step_count=9), "twinflow_target_step_count", "1-8"),
    (dict(learning_rate=-1e-4), "learning_rate", "> 0"),
    (dict(learning_rate=0.0), "learning_rate", "> 0"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps", "at least 1"),
    (dict(train_batch_size=0), "train_batch_size", "at least 1"),
    (dict(ema_decay=1.5), "ema_decay", "[0, 1]"),
    (dict(ema_decay=-0.01), "ema_decay", "[0, 1]"),
    (dict(mixed_precision="fp32"), "mixed_precision", "bf16"),
    (dict(prediction_type="sample"), "prediction_type", "flow_matching"),
    (dict(twinflow_recipe="huge"), "twinflow_recipe", "large"),
    (dict(twinflow_loss_type="l1"), "twinflow_loss_type", "barron"),
    (dict(twinflow_recipe="large", train_batch_size=1, gradient_accumulation_steps=3),
     "train_batch_size", "gives 3 rows per optimizer step, below the 4 row groups"),
    (dict(twinflow_recipe="large", train_batch_size=3), "train_batch_size", "4 row groups"),
    (dict(twinflow_group_proportions=[0, 0, 0, 0]), "twinflow_group_proportions", "all zero"),
    (dict(twinflow_group_proportions=[1, 1, 1]), "twinflow_group_proportions", "4 shares"),
    (dict(twinflow_time_dist=[1.0, 0.0, 1.0]), "twinflow_time_dist", "Beta"),
    (dict(model_type="lora"), "model_type",
     "adapts a pretrained model: set pretrained_model_name_or_path"),
    (dict(model_type="lycoris"), "model_type", "full, lora"),
    (dict(model_family="sd3"), "model_family",
     "this project trains class-conditional DiT/SiT models"),
    (dict(dataset="toy:moon"), "dataset", "checkerboard"),
    (dict(dataset="mnist"), "dataset", "cifar10"),
    (dict(dataset="cifar10", model="CIFAR-S/2"), "data", "--data"),
    (dict(dataset="folder", model="CIFAR-S/2"), "data", "--data"),
    (dict(dataset="latents:/no/such/latents.safetensors"), "dataset", "latents:"),
    (dict(dataset="image_free"), "dataset", "twinflow_image_free: true"),
    (dict(twinflow_image_free=True), "twinflow_image_free", PRETRAINED),
    ({PRETRAINED: "sit-xl-2.pt"}, PRETRAINED, "convert_checkpoint.py"),
    ({PRETRAINED: "stabilityai/stable-diffusion-3.5-large"}, PRETRAINED, ".safetensors"),
    (dict(model="CIFAR-S/2"), "model", "model: toy"),
    (dict(model="DiT-S2"), "model", "DiT-S/2"),
    (dict(twinflow_enhanced_ratio=0.5), "twinflow_enhanced_ratio", "0.0"),  # the toy has no labels
    (dict(device="gpu"), "device", "cuda"),
    (dict(resume="/no/such/run"), "resume", "does not exist"),
    (dict(validation_nfe=[]), "validation_nfe", "[1, 2, 4]"),
])
def test_refusals_name_the_key_and_the_fix(tmp_path, changes, key, phrase):
    message = refused(["--config", write_config(tmp_path, **changes)])
    assert key in message and phrase in message


def test_allowed_ways_out_are_accepted(tmp_path):
    bridged = dict(prediction_type="epsilon", diff2flow_enabled=True, twinflow_allow_diff2flow=True)
    assert from_file(tmp_path, **bridged).prediction_type == "epsilon"
    for way_out in (dict(twinflow_allow_no_ema_teacher=True), dict(twinflow_require_ema=False)):
        assert from_file(tmp_path, use_ema=False, **way_out).use_ema is False
    off = dict(twinflow_enabled=False, use_ema=False, twinflow_estimate_order=0,
               twinflow_enhanced_ratio=0.5)
    with pytest.warns(ConfigWarning, match="twinflow_estimate_order") as notes:  # one note
        assert from_file(tmp_path, **off).twinflow_enabled is False  # TwinFlow-only rules skipped
    assert len(notes) == 1 and "not used" in str(notes[0].message)
    weights = tmp_path / "toy.safetensors"
    weights.write_bytes(b"")
    cfg = from_file(tmp_path, pretrained_model_name_or_path=str(weights), model=...)
    assert cfg.pretrained_model_name_or_path == str(weights)
    with pytest.warns(ConfigWarning, match="model = 'toy' is not used: the pretrained file"):
        from_file(tmp_path, pretrained_model_name_or_path=str(weights))  # "model" in the file


# One non-default value per option only the large recipe (official SRC) reads.
LARGE_ONLY_CHANGES = [("twinflow_time_weighting", True), ("twinflow_dist_match_cof", 0.25),
                      ("twinflow_enhanced_range", [0.1, 0.9]),
                      ("twinflow_consistency_ratio", 0.5),
                      ("twinflow_group_proportions", [1, 1, 1, 0])]


@pytest.mark.parametrize("key, value", LARGE_ONLY_CHANGES)
def test_large_only_options_are_refused_with_the_tutorial_recipe(tmp_path, key, value):
    assert value != BRIEF_DEFAULTS[key]
    message = refused(["--config", write_config(tmp_path, twinflow_recipe="tutorial",
                                                **{key: value})])
    assert message.startswith(f"{key} = ")
    assert 'only applies to twinflow_recipe: "large"' in message
    # the same value is fine with the large recipe, and the loss options accept it
    cfg = from_file(tmp_path, twinflow_recipe="large", **{key: value})
    assert getattr(cfg, key) == value
    assert isinstance(cfg.twinflow_options(), TwinFlowOptions)
    # without TwinFlow the TwinFlow-only rules do not apply (one note says the key is not used)
    with pytest.warns(ConfigWarning, match=key):
        off = from_file(tmp_path, twinflow_enabled=False, **{key: value})
    assert off.twinflow_recipe == "tutorial" and getattr(off, key) == value


@pytest.mark.parametrize("key, value", LARGE_ONLY_CHANGES[:4])  # proportions: the input sampler
def test_tutorial_check_mirrors_the_loss_options(key, value):
    # the check exists because the loss options themselves refuse these values (tutorial recipe)
    option = key.removeprefix("twinflow_")
    with pytest.raises(OptionError) as loss_error:
        TwinFlowOptions(**{option: tuple(value) if isinstance(value, list) else value})
    assert loss_error.value.option == option
    with pytest.raises(ConfigError, match=f"^{key} = "):  # built from a config: the key is named
        TrainConfig(**{**BRIEF_DEFAULTS, key: value}).twinflow_options()


# (config key, value, the TwinFlowOptions field, other config keys the case needs)
LOSS_OPTION_REFUSALS = [
    ("twinflow_estimate_order", 0, "estimate_order", {}),  # the tutorial recipe needs N >= 1
    ("twinflow_estimate_order", -1, "estimate_order", {"twinflow_recipe": "large"}),
    ("twinflow_delta_t", 0.0, "delta_t", {}),
    ("twinflow_delta_t", 0.5, "delta_t", {}),
    ("twinflow_target_clamp", 0.0, "target_clamp", {}),
    ("twinflow_adversarial_weight", -1.0, "adversarial_weight", {}),
    ("twinflow_rectify_weight", -0.5, "rectify_weight", {}),
    ("twinflow_enhanced_ratio", -0.1, "enhanced_ratio", {}),
    ("twinflow_consistency_weight", -1.0, "consistency_weight", {}),
    ("twinflow_realvel_weight", -2.0, "realvel_weight", {}),
    ("twinflow_consistency_ratio", 1.5, "consistency_ratio", {"twinflow_recipe": "large"}),
    ("twinflow_consistency_ratio", -0.25, "consistency_ratio", {"twinflow_recipe": "large"}),
    ("twinflow_rectify_clip", 0.0, "rectify_clip", {}),
    ("twinflow_dist_match_cof", -1.0, "dist_match_cof", {"twinflow_recipe": "large"}),
    ("twinflow_enhanced_range", [0.6, 0.4], "enhanced_range", {"twinflow_recipe": "large"}),
    ("twinflow_enhanced_range", [0.0, 1.5], "enhanced_range", {"twinflow_recipe": "large"}),
]


@pytest.mark.parametrize("key, value, option, extra", LOSS_OPTION_REFUSALS)
def test_loss_option_refusals_come_from_twinflow_options(tmp_path, key, value, option, extra):
    recipe = extra.get("twinflow_recipe", "tutorial")
    loss_value = tuple(value) if isinstance(value, list) else value
    with pytest.raises(OptionError) as loss_error:
        TwinFlowOptions(recipe=recipe, **{option: loss_value})
    rule = loss_error.value.rule
    assert loss_error.value.option == option and rule.strip()
    message = refused(["--config", write_config(tmp_path, **{key: value}, **extra)])
    assert message == f"{key} = {value!r} {rule}"


def test_official_switches_are_reachable(tmp_path):
    # SRC flow-matching mode (estimate_order 0) and consistc_ratio, large recipe (issue 11 item 5)
    large = dict(twinflow_recipe="large", twinflow_estimate_order=0,
                 twinflow_consistency_ratio=0.5)
    cfg = from_file(tmp_path, **large)
    options = cfg.twinflow_options()
    assert (options.estimate_order, options.consistency_ratio, options.recipe) == (0, 0.5, "large")
    assert cfg.input_sampling_options()["consistency_ratio"] == 0.5
    flags = resolve_config(["--twinflow_consistency_ratio", "0", "--twinflow_recipe", "large"])
    assert flags.twinflow_options().consistency_ratio == 0.0


def test_large_recipe_adv_rows_need_the_adversarial_branch(tmp_path):
    large_off = dict(twinflow_recipe="large", twinflow_adversarial_enabled=False)
    message = refused(["--config", write_config(tmp_path, **large_off)])  # shares [1, 1, 1, 1]
    assert message.startswith("twinflow_adversarial_enabled = False")
    assert "twinflow_adversarial_enabled: true" in message
    assert "twinflow_group_proportions: [1, 1, 1, 0]" in message
    small_adv = write_config(tmp_path, twinflow_group_proportions=[2, 1, 1, 0.5], **large_off)
    assert "twinflow_adversarial_enabled" in refused(["--config", small_adv])
    # both ways out are accepted, and so is the tutorial recipe without the adversarial branch
    no_adv = from_file(tmp_path, twinflow_group_proportions=[1, 1, 1, 0], **large_off)
    assert no_adv.twinflow_group_proportions == [1, 1, 1, 0]
    assert no_adv.twinflow_adversarial_enabled is False
    assert from_file(tmp_path, twinflow_recipe="large").twinflow_adversarial_enabled
    tutorial = from_file(tmp_path, twinflow_adversarial_enabled=False)
    assert tutorial.twinflow_recipe == "tutorial"
    with pytest.warns(ConfigWarning, match="twinflow_recipe are not used"):
        off = from_file(tmp_path, twinflow_enabled=False, **large_off)
    assert off.twinflow_enabled is False  # TwinFlow-only rule


def test_distillation_method_alone_is_refused_too(tmp_path):
    path = write_config(tmp_path, twinflow_enabled=False, distillation_method="lcm")
    message = refused(["--config", path])
    assert "distillation_method" in message and "twinflow_enabled: true" in message


def test_more_than_four_target_steps_warns(tmp_path):
    with pytest.warns(ConfigWarning, match="twinflow_target_step_count"):
        cfg = from_file(tmp_path, twinflow_target_step_count=6)
    assert cfg.twinflow_target_step_count == 6


# ---------------------------------------------------------------- keys and types
def test_unknown_keys_suggest_the_closest(tmp_path):
    message = refused(["--config", write_config(tmp_path, twinflow_enhance_ratio=0.5)])
    assert "twinflow_enhance_ratio" in message
    assert "did you mean twinflow_enhanced_ratio" in message
    message = refused(["--lerning_rate", "1e-4"])
    assert "--lerning_rate" in message and "did you mean --learning_rate" in message
    assert "did you mean --max_train_steps" in refused(["--max-train-steps", "3"])


@pytest.mark.parametrize("key, value, phrase", [
    ("max_train_steps", True, "booleans are not numbers"),
    ("learning_rate", False, "booleans are not numbers"),
    ("learning_rate", "1e-4", "without quotes"),
    ("seed", "0", "without quotes"),
    ("use_ema", 1, "true or false"),
    ("twinflow_enabled", "true", "true or false"),
    ("train_batch_size", 2.5, "integer"),
    ("twinflow_group_proportions", 1, "list"),
    ("twinflow_group_proportions", [1, 1, True, 1], "booleans are not numbers"),
    ("dataset", 5, "string"),
    ("output_dir", None, "string"),
])
def test_wrong_types_are_refused(tmp_path, key, value, phrase):
    message = refused(["--config", write_config(tmp_path, **{key: value})])
    assert key in message and phrase in message


def test_ints_are_accepted_for_floats_and_converted(tmp_path):
    cfg = from_file(tmp_path, learning_rate=1, twinflow_target_clamp=2)
    assert type(cfg.learning_rate) is float and type(cfg.twinflow_target_clamp) is float
    assert cfg.learning_rate == 1.0


@pytest.mark.parametrize("argv, phrase", [
    (["--max_train_steps", "true"], "booleans are not numbers"),
    (["--max_train_steps", "abc"], "integer"),
    (["--use_ema", "maybe"], "true or false"),
    (["--learning_rate", "nan"], "finite"),
    (["--learning_rate"], "expected one argument"),
    (["3"], "--flag"),
])
def test_command_line_type_errors(argv, phrase):
    assert phrase in refused(argv)


def test_bad_json_files(tmp_path):
    assert "missing.json" in refused(["--config", str(tmp_path / "missing.json")])
    broken = tmp_path / "broken.json"
    broken.write_text('{"seed": 1,}')
    assert "line 1" in refused(["--config", str(broken)])
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert "JSON object" in refused(["--config", str(listed)])


def test_validate_checks_a_config_built_in_python():
    with pytest.raises(ConfigError, match="learning_rate"):
        validate(TrainConfig(learning_rate="fast"))
    with pytest.raises(ConfigError, match="ema_decay"):
        validate(TrainConfig(ema_decay=2.0))
    assert validate(TrainConfig()) == []
    assert validate(TrainConfig(twinflow_enabled=True, twinflow_enhanced_ratio=0.0)) == []


# ---------------------------------------------------------------- views, round trip, docs
def test_twinflow_options_map_onto_the_loss_keywords(tmp_path):
    distinct = dict(twinflow_estimate_order=3, twinflow_delta_t=0.02, twinflow_target_clamp=0.7,
                    twinflow_adversarial_weight=0.3, twinflow_rectify_weight=0.4,
                    twinflow_consistency_weight=0.6, twinflow_realvel_weight=0.8,
                    twinflow_recipe="large", twinflow_loss_type="barron",
                    twinflow_time_weighting=True, twinflow_dist_match_cof=0.75,
                    twinflow_rectify_clip=1.0, twinflow_enhanced_range=[0.1, 0.9],
                    twinflow_group_proportions=[1, 2, 3, 0], twinflow_time_dist=[2.0, 1.0, 0.5])
    cfg = from_file(tmp_path, **distinct)
    assert cfg.twinflow_options() == TwinFlowOptions(
        estimate_order=3, delta_t=0.02, target_clamp=0.7, enhanced_ratio=0.0,
        adversarial_enabled=True, adversarial_weight=0.3, rectify_weight=0.4,
        consistency_weight=0.6, realvel_weight=0.8, recipe="large", loss_type="barron",
        time_weighting=True, dist_match_cof=0.75, rectify_clip=1.0, enhanced_range=(0.1, 0.9),
        consistency_ratio=1.0, rcgm_teacher_is_student=False, enhance_around_null=False)
    assert cfg.input_sampling_options() == dict(
        recipe="large", group_proportions=(1.0, 2.0, 3.0, 0.0), time_dist=(2.0, 1.0, 0.5),
        consistency_ratio=1.0)


def test_config_defaults_are_the_loss_options_defaults_but_simpletuners_two():
    # one source of truth: only adversarial_enabled (SimpleTuner off, tutorial on) and
    # enhanced_ratio (SimpleTuner 0.5, tutorial class 0) differ from TwinFlowOptions()
    cfg = TrainConfig()
    assert (cfg.twinflow_adversarial_enabled, cfg.twinflow_enhanced_ratio) == (False, 0.5)
    tutorial = TrainConfig(twinflow_adversarial_enabled=True, twinflow_enhanced_ratio=0.0)
    assert tutorial.twinflow_options() == TwinFlowOptions()
    large = TrainConfig(twinflow_recipe="large", twinflow_adversarial_enabled=True,
                        twinflow_enhanced_ratio=0.0)
    assert large.twinflow_options() == TwinFlowOptions(recipe="large")


def test_frozen_teacher_switches_of_the_large_recipe(tmp_path):
    # SRC `ema_decay_rate == 1`: the RCGM target uses the student; image-free also centres CFG
    # on F_null (docs/math.md#ema-teacher)
    weights = tmp_path / "pretrained.safetensors"
    weights.write_bytes(b"")  # existence is all the config checks
    frozen = {"twinflow_recipe": "large", "ema_decay": 1.0, PRETRAINED: str(weights), "model": ...}
    options = from_file(tmp_path, **frozen).twinflow_options()
    assert (options.rcgm_teacher_is_student, options.enhance_around_null) == (True, False)
    image_free = resolve_config(["--config", write_config(tmp_path, **frozen), "--image-free"])
    options = image_free.twinflow_options()
    assert (options.rcgm_teacher_is_student, options.enhance_around_null) == (True, True)
    options = from_file(tmp_path, **{**frozen, "ema_decay": 0.999}).twinflow_options()
    assert (options.rcgm_teacher_is_student, options.enhance_around_null) == (False, False)


def test_json_round_trip(tmp_path):
    path = write_config(tmp_path, twinflow_rectify_clip=1.0)
    cfg = resolve_config(["--config", path, "--seed", "3"])
    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({**cfg.to_dict(), "lora_ranks": 4})


def test_markdown_table_and_help_list_every_field():
    table = config_table_markdown().splitlines()
    assert table[0] == "| key | type | default | meaning |"
    rows = {line.split("`")[1]: line for line in table[2:]}
    assert set(rows) == set(BRIEF_DEFAULTS) and len(table) == 2 + len(BRIEF_DEFAULTS)
    assert "`0.99`" in rows["ema_decay"] and "`null`" in rows["run_name"]
    assert '"bf16"' in rows["mixed_precision"]
    text = build_parser("Train TwinFlow.").format_help()
    assert all(f"--{key}" in text for key in BRIEF_DEFAULTS)
    aliases = ("--toy", "--steps", "--batch-size", "--lr", "--out", "--pretrained", "--image-free")
    assert all(alias in text for alias in aliases)
