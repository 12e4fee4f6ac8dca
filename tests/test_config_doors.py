"""The config door refuses what cannot work before any work starts, one line each (issues 11-19).

Each case goes through `resolve_config(argv)`, the function `train.py main()` calls first; a few
also run `python train.py` to see the line a user sees. Limits are written here from the issue
texts and briefs (64-bit integers: 2**63 - 1; micro-batch and evaluation samples at most 2**16),
not read from the code.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from twinflow_min.config import ConfigError, ConfigWarning
from twinflow_min.config_cli import resolve_config, resolve_config_with_notes

REPO = Path(__file__).resolve().parent.parent
INT64_MAX = 2**63 - 1

# The LoRA example config of the SimpleTuner TwinFlow guide (FLUX.1-dev), as a user would paste it
GUIDE_CONFIG = {"model_family": "flux", "model_type": "lora", "lora_rank": 16,
                "pretrained_model_name_or_path": "black-forest-labs/FLUX.1-dev",
                "twinflow_enabled": True, "twinflow_target_step_count": 2, "use_ema": True,
                "twinflow_image_free": True}


def refused(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as error:
        resolve_config(argv)
    message = str(error.value)
    assert "\n" not in message and message.strip()  # one line, as train.py prints it
    return message


def accepted(argv: list[str]):
    """The config of argv, which must come without a note (ConfigWarning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = resolve_config(argv)
    notes = [str(note.message) for note in caught if issubclass(note.category, ConfigWarning)]
    assert not notes, notes
    return cfg


def only_note(argv: list[str]) -> str:
    with pytest.warns(ConfigWarning) as notes:
        resolve_config(argv)
    lines = [str(note.message) for note in notes if issubclass(note.category, ConfigWarning)]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    return lines[0]


@pytest.fixture
def cifar(tmp_path) -> list[str]:
    """Flags of a CIFAR-10 run (the config only checks that the archive exists)."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"")
    return ["--dataset", "cifar10", "--data", str(archive)]


@pytest.fixture
def pretrained(tmp_path) -> str:
    weights = tmp_path / "sit-s-2.safetensors"
    weights.write_bytes(b"")
    return str(weights)


# ---------------------------------------------------------------- issue 13 item 1: numbers
@pytest.mark.parametrize("argv, phrase", [
    (["--seed", "99999999999999999999"], f"at most 2**63 - 1 = {INT64_MAX}"),
    (["--max_train_steps", str(2**64)], "64-bit"),
    (["--batch-size", str(10**30)], "64-bit"),
    (["--seed", "-1"], "from 0 to 2**63 - 1"),
    (["--batch-size", "0"], "at least 1"),
    (["--batch-size", "-5"], "at least 1"),
    (["--batch-size", "1000000"], "above 65536"),
    (["--gradient_accumulation_steps", "0"], "at least 1"),
    (["--max_train_steps", "0"], "at least 1"),
    (["--max_train_steps", "2.5"], "integer"),
    (["--max_train_steps", "ten"], "integer"),
    (["--learning_rate", "abc"], "a number"),
    (["--learning_rate", "inf"], "finite"),
    (["--ema_decay", "nan"], "finite"),
    (["--eval_samples", "-1"], "0-65536"),
    (["--eval_samples", "10000000"], "0-65536"),
    (["--validation_every", "-1"], "from 0"),
    (["--checkpointing_steps", "-3"], "from 0"),
    (["--log_every", "0"], "at least 1"),
    (["--lr_warmup_steps", "-1"], "from 0"),
    (["--lr_decay_steps", "0"], "none (= max_train_steps)"),
    (["--twinflow_start_step", "-1"], "from 0"),
    (["--twinflow_start_step", "2000"], "not below max_train_steps = 2000"),  # the toy preset's
    (["--validation_nfe", "0,1"], "step counts >= 1"),
    (["--validation_nfe", "1,x"], "integer"),
    (["--label_dropout", "1"], "[0, 1)"),
    (["--seed", "0x10"], "expected an integer, got '0x10'; write a decimal number"),
    (["--validation_nfe", "1,2,99999999999999999999"], "64-bit"),
    (["--twinflow_time_dist", "1,1"], "[a, b, scale]"),
    (["--twinflow_group_proportions", "1,1,1,nan", "--twinflow_recipe", "large"], "finite"),
    (["--output_dir", ""], "must name a folder"),
])
def test_numbers_are_checked_at_the_door(argv, phrase):
    key = next(word for word in argv if word.startswith("--")).lstrip("-")
    message = refused(argv)
    assert phrase in message
    assert key.replace("-", "_") in message or key == "batch-size" and "train_batch_size" in message


def test_numbers_at_their_limits_are_accepted():
    cfg = accepted(["--seed", str(INT64_MAX), "--batch-size", str(2**16), "--eval_samples", "0",
                    "--lr_decay_steps", "8", "--twinflow_start_step", "1999"])
    assert (cfg.seed, cfg.train_batch_size, cfg.eval_samples) == (INT64_MAX, 2**16, 0)
    assert (cfg.lr_decay_steps, cfg.twinflow_start_step) == (8, 1999)
    assert accepted(["--lr_decay_steps", "none"]).lr_decay_steps is None


def test_a_json_number_too_large_for_a_float_is_refused(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text('{"learning_rate": 1e400}')  # JSON reads it as inf
    assert "learning_rate" in refused(["--config", str(path)])


# ---------------------------------------------------------------- issue 13 item 2: devices
def test_malformed_device_names_list_this_machines_devices():
    message = refused(["--device", "gpu"])
    assert "device 'gpu'" in message and "this machine has: cpu" in message
    assert "this machine has: cpu" in refused(["--device", "cuda:x"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_refused():
    message = refused(["--device", "cuda"])
    assert "not on this machine" in message and "cpu" in message


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_off_a_mac_is_refused():
    assert "not on this machine" in refused(["--device", "mps"])


def test_existing_devices_are_accepted():
    assert accepted(["--device", "cpu"]).device == "cpu"
    assert accepted(["--device", "auto"]).device == "auto"


# ---------------------------------------------------------------- issue 13 item 3: config files
@pytest.mark.parametrize("content, phrase", [
    (b"", "the file is empty"),
    (b"  \n\t\n", "the file is empty"),
    ('{"seed": 1, "output_dir": "caf\u00e9"}'.encode("latin-1"), "not UTF-8 text (byte 0xe9"),
    (b"\xff\xfe{\x00}\x00", "not UTF-8"),  # UTF-16
    (b'{"seed": 1,}', "not JSON"),
    (b"seed: 1", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'"hello"', "expected a JSON object"),
    (b"null", "expected a JSON object"),
    (b'{"seed": 1, "seed": 2}', "'seed' is written twice"),
])
def test_config_files_that_are_not_a_json_object(tmp_path, content, phrase):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    message = refused(["--config", str(path)])
    assert message.startswith(f"--config {path}: ") and phrase in message


def test_config_paths_that_are_not_files(tmp_path):
    assert "cannot read it" in refused(["--config", str(tmp_path)])  # a folder
    assert "cannot read it" in refused(["--config", str(tmp_path / "missing.json")])
    path = tmp_path / "a.json"
    path.write_text("{}")
    assert "--config is given twice" in refused(["--config", str(path), "--config", str(path)])


def test_resume_paths_that_are_not_checkpoints(tmp_path):
    assert refused(["--resume", str(tmp_path)]).startswith("resume: no checkpoint at ")
    text = tmp_path / "notes.safetensors"
    text.write_text("not a checkpoint")
    assert refused(["--resume", str(text)]).startswith(f"resume: cannot read {text}")
    assert "no checkpoint at" in refused(["--resume", str(tmp_path / "missing")])


def test_a_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"seed": 5}).encode())
    assert accepted(["--config", str(path)]).seed == 5


# ---------------------------------------------------------------- issue 13 item 4: ignored flags
def test_data_with_a_dataset_that_does_not_read_it(tmp_path, pretrained):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"")
    message = refused(["--data", str(archive)])  # toy preset
    assert "is not read by dataset 'toy:moons'" in message and "drop --data" in message
    latents = tmp_path / "latents.safetensors"
    latents.write_bytes(b"")
    assert "not read" in refused(["--dataset", f"latents:{latents}", "--data", str(archive),
                                  "--model", "CIFAR-S/2"])
    message = refused(["--pretrained", pretrained, "--image-free", "--data", str(archive)])
    assert "twinflow_image_free trains on the model's own samples" in message


def test_twinflow_settings_without_twinflow_get_one_note():
    note = only_note(["--twinflow_enabled", "false", "--twinflow_adversarial_weight", "2",
                      "--twinflow_estimate_order", "3"])
    assert note.startswith("twinflow_enabled is false (plain flow matching): ")
    assert "twinflow_estimate_order" in note and "twinflow_adversarial_weight" in note


def test_fake_branch_settings_without_the_fake_branch_get_one_note():
    # tutorial recipe: the 1 -> 0 consistency term belongs to the fake branch (twin_branch_on)
    note = only_note(["--toy", "moons", "--twinflow_adversarial_enabled", "false",
                      "--twinflow_consistency_weight", "2", "--twinflow_rectify_weight", "3"])
    assert note == ("twinflow_adversarial_enabled is false (no fake branch): "
                    "twinflow_rectify_weight, twinflow_consistency_weight are not used; "
                    "set twinflow_adversarial_enabled: true to train it")
    # large recipe: its consistency rows are e2e base rows, trained without the fake branch
    note = only_note(["--toy", "moons", "--twinflow_recipe", "large",
                      "--twinflow_group_proportions", "[1, 1, 1, 0]",
                      "--twinflow_adversarial_enabled", "false",
                      "--twinflow_consistency_weight", "2", "--twinflow_adversarial_weight", "3"])
    assert "twinflow_adversarial_weight is not used" in note
    assert "consistency" not in note
    assert resolve_config_with_notes(["--toy", "moons", "--twinflow_adversarial_enabled",
                                      "false", "--twinflow_realvel_weight", "0"])[1] == []


def test_twinflow_start_step_without_twinflow_is_refused():
    message = refused(["--twinflow_enabled", "false", "--twinflow_start_step", "5"])
    assert message.startswith("twinflow_start_step = 5 ") and "twinflow_enabled: true" in message


def test_lora_settings_with_full_fine_tuning_get_one_note():
    note = only_note(["--lora_rank", "8", "--lora_dropout", "0.1"])
    assert note == "model_type is full: lora_rank, lora_dropout are not used " \
                   "(set model_type: lora for adapters)"


def test_settings_the_user_wrote_that_would_not_be_read(tmp_path, pretrained):
    message = refused(["--lr_decay_steps", "500", "--lr_schedule", "constant"])
    assert message.startswith("lr_decay_steps = 500 sets the length of the cosine schedule")
    assert "set lr_schedule: cosine" in message
    path = tmp_path / "constant.json"
    path.write_text(json.dumps({"lr_decay_steps": 50}))  # dataclass default: constant schedule
    assert "lr_decay_steps = 50" in refused(["--config", str(path)])
    assert accepted(["--lr_decay_steps", "500"]).lr_decay_steps == 500  # toy preset: cosine
    message = refused(["--pretrained", pretrained, "--image-free", "--model", "CIFAR-B/2"])
    assert message.startswith("model = 'CIFAR-B/2' is not used: the pretrained file defines")


def test_notes_come_back_as_lines_for_the_entry_point_to_print():
    cfg, notes = resolve_config_with_notes(["--lora_rank", "8", "--twinflow_enabled", "false",
                                            "--twinflow_estimate_order", "3"])
    assert cfg.lora_rank == 8 and len(notes) == 2
    assert notes[0].startswith("model_type is full: lora_rank is not used")
    assert notes[1].startswith("twinflow_enabled is false (plain flow matching): ")
    assert resolve_config_with_notes([])[1] == []


def test_notes_name_only_keys_the_user_wrote():
    # the toy preset sets the adversarial branch and enhanced ratio itself: switching TwinFlow off
    # must not blame the user for them, only for the TwinFlow key they did write
    assert resolve_config_with_notes(["--toy", "moons", "--twinflow_enabled", "false"])[1] == []
    notes = resolve_config_with_notes(["--toy", "moons", "--twinflow_enabled", "false",
                                       "--twinflow_delta_t", "0.02"])[1]
    assert notes == ["twinflow_enabled is false (plain flow matching): twinflow_delta_t is not "
                     "used; set twinflow_enabled: true to train with TwinFlow"]


def test_md5_switch_without_cifar_files_gets_one_note():
    assert only_note(["--data_check_md5", "false"]).startswith("data_check_md5 is not used")


def test_output_dir_and_run_name_with_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"output_dir": "outputs", "run_name": "a"}))
    base = ["--config", str(path), "--resume", str(run)]
    message = refused([*base, "--output_dir", "elsewhere"])
    assert message.startswith("output_dir = 'elsewhere' cannot be used with resume")
    assert "writes only into the run it resumes" in message
    message = refused([*base, "--run_name", "b"])
    assert message.startswith("run_name = 'b' cannot be used with resume")
    assert refused([*base, "--out", "x"]).startswith("output_dir = 'x'")  # the alias too
    same = accepted([*base, "--output_dir", "outputs", "--run_name", "a"])  # repeated: harmless
    assert same.resume == str(run)


# ---------------------------------------------------------------- issue 11 item 8: from scratch
def test_frozen_teacher_from_scratch_is_refused(pretrained):
    message = refused(["--ema_decay", "1"])
    assert message.startswith("ema_decay = 1.0 ") and "outputting zeros" in message
    assert "ema_decay < 1" in message and "pretrained" in message
    # ways out: a pretrained model, flow matching first (the teacher restarts from the student),
    # no EMA
    assert accepted(["--ema_decay", "1", "--twinflow_start_step", "100"]).ema_decay == 1.0
    assert accepted(["--ema_decay", "1", "--pretrained", pretrained, "--dataset", "toy:moons"])
    no_ema = ["--ema_decay", "1", "--use_ema", "false", "--twinflow_allow_no_ema_teacher", "true"]
    assert accepted(no_ema).use_ema is False
    assert accepted(["--ema_decay", "1", "--twinflow_enabled", "false",
                     "--twinflow_adversarial_enabled", "false", "--twinflow_enhanced_ratio", "0.5"])


def test_cfg_target_without_null_class_training_is_refused(cifar, pretrained):
    message = refused([*cifar, "--label_dropout", "0"])  # cifar10 preset: enhanced_ratio 0.5
    assert message.startswith("label_dropout = 0.0 never trains the null class")
    assert "label_dropout: 0.1" in message and "twinflow_enhanced_ratio: 0" in message
    assert accepted([*cifar, "--label_dropout", "0", "--twinflow_enhanced_ratio", "0"])
    assert accepted([*cifar, "--label_dropout", "0", "--pretrained", pretrained])  # trained already


# ---------------------------------------------------------------- issue 11 item 6: micro-batches
def test_large_recipe_micro_batches_smaller_than_the_groups():
    large = ["--twinflow_recipe", "large"]
    cfg = accepted([*large, "--batch-size", "1", "--gradient_accumulation_steps", "4"])
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (1, 4)
    three = ["--twinflow_group_proportions", "1,1,1,0"]
    assert accepted([*large, *three, "--batch-size", "1", "--gradient_accumulation_steps", "3"])
    message = refused([*large, "--batch-size", "2", "--gradient_accumulation_steps", "1"])
    assert message == ("train_batch_size = 2 x gradient_accumulation_steps = 1 gives 2 rows per "
                       "optimizer step, below the 4 row groups of the large recipe (micro-batches "
                       "smaller than that take the groups in turn); raise either, or zero a group "
                       "proportion")


# ---------------------------------------------------------------- issue 14: LoRA, the guide
def test_lora_needs_a_pretrained_model(pretrained):
    message = refused(["--model_type", "lora"])
    assert message.startswith("model_type = 'lora' adapts a pretrained model")
    cfg = accepted(["--model_type", "lora", "--pretrained", pretrained, "--image-free"])
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == (16, None, 0.0)
    assert cfg.lora_target_modules == ["qkv", "proj", "fc1", "fc2", "adaLN_modulation"]


@pytest.mark.parametrize("flags, phrase", [
    (["--lora_rank", "0"], "lora_rank = 0 must be at least 1"),
    (["--lora_alpha", "0"], "lora_alpha = 0.0 must be > 0"),
    (["--lora_alpha", "-2"], "lora_alpha = -2.0 must be > 0"),
    (["--lora_dropout", "1"], "lora_dropout = 1.0 must lie in [0, 1)"),
    (["--lora_target_modules", "[]"], "lora_target_modules = [] must name at least one layer"),
    (["--lora_target_modules", "qkv,"], "must not hold an empty name"),
    (["--lora_target_modules", "[1]"], "expected a string"),
])
def test_lora_values(pretrained, flags, phrase):
    assert phrase in refused(["--model_type", "lora", "--pretrained", pretrained, "--image-free",
                              *flags])


def test_the_guides_config_fails_only_on_what_this_project_does_not_do(tmp_path, pretrained):
    path = tmp_path / "guide.json"
    path.write_text(json.dumps(GUIDE_CONFIG))
    message = refused(["--config", str(path)])
    assert message.startswith("model_family = 'flux' ")
    assert "this project trains class-conditional DiT/SiT models" in message
    path.write_text(json.dumps({**GUIDE_CONFIG, "model_family": "sit"}))
    message = refused(["--config", str(path)])
    hub = "pretrained_model_name_or_path = 'black-forest-labs/FLUX.1-dev' looks like a hub name"
    assert message.startswith(hub)
    fix = "nothing is downloaded: convert a release with python tools/convert_checkpoint.py"
    assert fix in message
    local = {**GUIDE_CONFIG, "model_family": "sit", "pretrained_model_name_or_path": pretrained}
    path.write_text(json.dumps(local))
    assert accepted(["--config", str(path)]).model_type == "lora"


@pytest.mark.parametrize("name, phrase", [
    ("weights/missing.safetensors", "does not exist"),  # a local path, not a hub name
    ("sit-xl-2.pt", "does not exist"),
    ("org/model", "looks like a hub name"),
])
def test_pretrained_names_that_are_not_local_files(name, phrase):
    message = refused(["--pretrained", name, "--image-free"])
    assert phrase in message and "convert_checkpoint.py" in message


def test_pretrained_folder_and_foreign_file(tmp_path):
    assert "is a folder" in refused(["--pretrained", str(tmp_path), "--image-free"])
    torch_file = tmp_path / "sit-xl-2.pt"
    torch_file.write_bytes(b"")
    message = refused(["--pretrained", str(torch_file), "--image-free"])
    assert "is not a .safetensors file; convert it with python tools/convert_checkpoint.py" \
        in message


# ---------------------------------------------------------------- the line a user sees
@pytest.mark.parametrize("argv, phrase", [
    (["--seed", "99999999999999999999"], "seed"),
    (["--device", "gpu"], "this machine has"),
    (["--batch-size", "0"], "train_batch_size = 0 must be at least 1"),
])
def test_train_py_prints_one_line_and_exits_2(argv, phrase):
    result = subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and phrase in lines[0]
