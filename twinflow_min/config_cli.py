"""Command line of training: a JSON file and one flag per TrainConfig key, merged into one checked TrainConfig.

Paper: TwinFlow (arXiv:2512.05150), Sec. 4 (training settings). This is the front end of `config.py`: it reads a
SimpleTuner-style `config.json` (`--config`; key names from SimpleTuner's TwinFlow guide, `bghira/SimpleTuner`
documentation/distillation/TWINFLOW.md, also spelled `--key` as SimpleTuner writes them) and command-line flags
named exactly like the keys, then hands the result to `config.validate`. The official TwinFlow code reads
`src/configs/*.yaml` in `src/train.py` with no flags and no checks; here every mistake is one ConfigError line.

Where the values come from (later wins):
  * without --config: PRESETS[name] picked from the dataset (a `toy:*` dataset, or none and no pretrained model
    -> "toy"; any other dataset, or none but a pretrained model -> "cifar10"), then command-line flags;
  * with --resume DIR and no --config: the run's own saved config (its checkpoint), then the flags;
  * with --config FILE.json: the dataclass defaults (SimpleTuner's), then the file's keys, then the flags.
An explicit 0 / false / 0.0 always stays as given: nothing here falls back with `value or default`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
import warnings
from pathlib import Path

# config.py never imports this module at its top (only lazily, by name), so this import has no cycle.
from twinflow_min.config import (FIELDS, HINTS, PRESETS, ConfigError, ConfigWarning, TrainConfig, _base_type,
                                 _type_name, _unknown_key_error, check_keys_and_types, validate)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits; train.py wants one ConfigError line
        raise ConfigError(f"command line: {message}")


ALIASES = {"--toy": "dataset", "--steps": "max_train_steps", "--batch-size": "train_batch_size",
           "--lr": "learning_rate", "--out": "output_dir", "--pretrained": "pretrained_model_name_or_path"}


def _default(field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _metavar(key: str) -> str:
    """INT, FLOAT, LIST, TEXT or the allowed values, with |none where None is allowed (for --help)."""
    base, optional = _base_type(HINTS[key])
    choices = FIELDS[key].metadata["choices"]
    name = "|".join(choices) if choices else "LIST" if typing.get_origin(base) is list else \
        {int: "INT", float: "FLOAT", str: "TEXT"}[base]
    return f"{name}|none" if optional else name


def build_parser(description: str = "Train TwinFlow.") -> argparse.ArgumentParser:
    """--config FILE.json and one flag per TrainConfig field, same name; defaults SUPPRESSed (absent = not given)."""
    parser = _Parser(description=description, argument_default=argparse.SUPPRESS, allow_abbrev=False,
                     epilog="Booleans: --flag true|false (bare --flag = true). Lists: [1,2,4] or 1,2,4. None: none.")
    parser.add_argument("--config", metavar="FILE.json", help="JSON config with these keys (SimpleTuner names)")
    boolean = dict(nargs="?", const="true", metavar="true|false")
    for key, field in FIELDS.items():
        text = f"{field.metadata['help']} (default: {json.dumps(_default(field))})".replace("%", "%%")
        is_bool = _base_type(HINTS[key])[0] is bool
        parser.add_argument(f"--{key}", help=text, **(boolean if is_bool else dict(metavar=_metavar(key))))
    aliases = parser.add_argument_group("aliases")
    for flag, key in ALIASES.items():
        transform = (lambda name: f"toy:{name}") if flag == "--toy" else str
        metavar = "NAME" if flag == "--toy" else _metavar(key)
        aliases.add_argument(flag, dest=key, type=transform, metavar=metavar, help=f"= --{key}"
                             + (" toy:NAME" if flag == "--toy" else ""))
    aliases.add_argument("--image-free", dest="twinflow_image_free", help="= --twinflow_image_free true", **boolean)
    return parser


def _parse_flag(key: str, text: str):
    """A flag's text as the JSON value it stands for; `_coerce` checks its type afterwards."""
    base, optional = _base_type(HINTS[key])
    if optional and text.lower() in ("none", "null"):
        return None
    if base is bool:
        return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower(), text)
    if typing.get_origin(base) is list and not text.lstrip().startswith("["):
        return [_parse_word(word) for word in text.split(",")]
    return text if base is str else _parse_word(text)


def _parse_word(text: str):
    for parse in (json.loads, float):  # JSON, then Python's float spellings (".5", "1.")
        try:
            return parse(text)
        except ValueError:
            pass
    return text  # stays a string: `_coerce` reports the wrong type


def _load_json(path: str) -> dict:
    try:
        values = json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config {path}: not JSON ({error.msg} at line {error.lineno} column {error.colno})") \
            from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object {{\"key\": value}}, got {type(values).__name__}")
    return values


def _saved_config(path: str) -> dict:
    from twinflow_min.train_state import CheckpointError, saved_train_config  # train_state imports model only
    try:
        return {key: value for key, value in saved_train_config(path).items() if key != "resume"}
    except CheckpointError as error:
        raise ConfigError(f"resume: {error}") from None


def preset_name(flags: dict) -> str:
    """Preset used without --config: from the dataset flag, else "cifar10" for a pretrained model, else "toy"."""
    if "dataset" in flags:
        return "toy" if flags["dataset"].startswith("toy:") else "cifar10"
    return "cifar10" if flags.get("pretrained_model_name_or_path") else "toy"


def resolve_config(argv: list[str] | None = None, description: str = "Train TwinFlow.") -> TrainConfig:
    """parse -> load JSON (if any) -> check keys and types -> build -> validate; warnings go to `warnings.warn`."""
    namespace, unknown = build_parser(description).parse_known_args(argv)
    if unknown:
        flag = next((word for word in unknown if word.startswith("-")), None)
        if flag is None:
            raise ConfigError(f"command line: unexpected value {unknown[0]!r}; every value follows its --flag")
        raise _unknown_key_error(flag.lstrip("-").split("=")[0], " on the command line", prefix="--")
    given = vars(namespace)
    config_path = given.pop("config", None)
    flags = check_keys_and_types({key: _parse_flag(key, text) for key, text in given.items()}, " on the command line")
    if config_path is not None:
        start = check_keys_and_types(_load_json(config_path), f" in {config_path}")
    elif flags.get("resume"):  # continue with the run's own config; flags still win (e.g. more max_train_steps)
        start = check_keys_and_types(_saved_config(flags["resume"]), f" in the checkpoint {flags['resume']}")
    else:
        start = PRESETS[preset_name(flags)]
    cfg = TrainConfig(**{**start, **flags})
    for note in validate(cfg):
        warnings.warn(note, ConfigWarning, stacklevel=2)
    return cfg


def config_table_markdown() -> str:
    """The README table of every key: key, type, default, meaning."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, field in FIELDS.items():
        choices = field.metadata["choices"]
        kind = " \\| ".join(f'"{choice}"' for choice in choices) if choices else _type_name(HINTS[key])
        meaning = field.metadata["help"].replace("|", "\\|")
        rows.append(f"| `{key}` | {kind} | `{json.dumps(_default(field), ensure_ascii=False)}` | {meaning} |")
    return "\n".join(rows)
