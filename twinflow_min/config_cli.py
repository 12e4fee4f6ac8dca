"""Command line of training: a JSON file and one flag per TrainConfig key, merged and checked.

Paper: TwinFlow (arXiv:2512.05150), Sec. 4 (training settings). This is the front end of
`config.py`: it reads a SimpleTuner-style `config.json` (`--config`; key names from SimpleTuner's
TwinFlow guide, `bghira/SimpleTuner` documentation/distillation/TWINFLOW.md, also spelled `--key` as
SimpleTuner writes them) and command-line flags named exactly like the keys, then hands the result
to `config.validate`. The official TwinFlow code reads `src/configs/*.yaml` in `src/train.py` with
no flags and no checks; here every mistake is one ConfigError line, raised before any work starts,
and every note (a key that would not be used) is one ConfigWarning line.

Where the values come from (later wins):
  * without --config: PRESETS[name] picked from the dataset (a `toy:*` dataset, or none and no
    pretrained model -> "toy"; any other dataset, or none but a pretrained model -> "cifar10"),
    then the flags;
  * with --resume DIR and no --config: the run's own saved config (its checkpoint), then the flags;
  * with --config FILE.json: the dataclass defaults (SimpleTuner's), the file's keys, the flags.
An explicit 0 / false / 0.0 always stays as given: nothing falls back with `value or default`.
"""

from __future__ import annotations

import argparse
import json
import typing
import warnings
from pathlib import Path

from twinflow_min.checks import CheckpointError
from twinflow_min.config import (FIELDS, HINTS, PRESETS, ConfigError, ConfigWarning, TrainConfig,
                                 base_type, check_keys_and_types, default_of, type_name,
                                 unknown_key_error, validate)
from twinflow_min.train_state import saved_train_config


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits; train.py wants one line
        raise ConfigError(f"command line: {message}")


class _Once(argparse.Action):
    """A flag that may be given once (a second --config would silently replace the first)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            raise ConfigError(f"command line: {option_string} is given twice; merge the files "
                              "into one (flags after it override single keys)")
        setattr(namespace, self.dest, values)


ALIASES = {"--toy": "dataset", "--steps": "max_train_steps", "--batch-size": "train_batch_size",
           "--lr": "learning_rate", "--out": "output_dir",
           "--pretrained": "pretrained_model_name_or_path"}
RESUME_FIXED = ("output_dir", "run_name")  # a resume writes only into the run it resumes


def _metavar(key: str) -> str:
    """INT, FLOAT, LIST, TEXT or the allowed values, |none where None is allowed (for --help)."""
    base, optional = base_type(HINTS[key])
    choices = FIELDS[key].metadata["choices"]
    if choices:
        name = "|".join(choices)
    elif typing.get_origin(base) is list:
        name = "LIST"
    else:
        name = {int: "INT", float: "FLOAT", str: "TEXT"}[base]
    return f"{name}|none" if optional else name


def build_parser(description: str = "Train TwinFlow.") -> argparse.ArgumentParser:
    """--config FILE.json and one flag per TrainConfig field, same name; absent stays absent."""
    epilog = ("Booleans: --flag true|false (bare --flag = true). Lists: [1,2,4] or 1,2,4. "
              "None: none.")
    parser = _Parser(description=description, argument_default=argparse.SUPPRESS,
                     allow_abbrev=False, epilog=epilog)
    parser.add_argument("--config", metavar="FILE.json", action=_Once,
                        help="JSON config with these keys (SimpleTuner names)")
    boolean = dict(nargs="?", const="true", metavar="true|false")
    for key, field in FIELDS.items():
        text = f"{field.metadata['help']} (default: {json.dumps(default_of(key))})"
        is_bool = base_type(HINTS[key])[0] is bool
        kind = boolean if is_bool else dict(metavar=_metavar(key))
        parser.add_argument(f"--{key}", help=text.replace("%", "%%"), **kind)
    aliases = parser.add_argument_group("aliases")
    for flag, key in ALIASES.items():
        if flag == "--toy":
            aliases.add_argument(flag, dest=key, type=lambda name: f"toy:{name}", metavar="NAME",
                                 help=f"= --{key} toy:NAME")
        else:
            aliases.add_argument(flag, dest=key, metavar=_metavar(key), help=f"= --{key}")
    aliases.add_argument("--image-free", dest="twinflow_image_free",
                         help="= --twinflow_image_free true", **boolean)
    return parser


BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _parse_flag(key: str, text: str):
    """A flag's text as the JSON value it stands for; `config._coerce` checks its type next."""
    base, optional = base_type(HINTS[key])
    if optional and text.lower() in ("none", "null"):
        return None
    if base is bool:
        return BOOLEAN_WORDS.get(text.lower(), text)
    if typing.get_origin(base) is list and not text.lstrip().startswith("["):
        return [_parse_word(word) for word in text.split(",")]
    if base is str:
        return text
    return _parse_word(text)


def _parse_word(text: str):
    for parse in (json.loads, float):  # JSON, then Python's float spellings (".5", "1.")
        try:
            return parse(text)
        except ValueError:
            pass
    return text  # stays a string: `_coerce` reports the wrong type


def _no_duplicate_keys(path: str):
    """object_pairs_hook of json.loads: a key written twice is refused (JSON keeps the last)."""
    def build(pairs: list[tuple]) -> dict:
        values = {}
        for key, value in pairs:
            if key in values:
                raise ConfigError(f"--config {path}: key {key!r} is written twice; keep one")
            values[key] = value
        return values
    return build


def _load_json(path: str) -> dict:
    """The JSON object of a --config file; unreadable, empty, not UTF-8, not JSON, not an object,
    or a key written twice: one ConfigError line."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror})") from None
    if not raw.strip():
        raise ConfigError(f"--config {path}: the file is empty; write a JSON object such as "
                          '{"twinflow_enabled": true}')
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is fine
    except UnicodeDecodeError as error:
        byte = f"byte {raw[error.start]:#04x} at offset {error.start}"
        raise ConfigError(f"--config {path}: not UTF-8 text ({byte}); save it as UTF-8 JSON") \
            from None
    try:
        values = json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config {path}: not JSON ({error.msg} at line {error.lineno} column "
                          f"{error.colno})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object {{\"key\": value}}, "
                          f"got {type(values).__name__}")
    return values


def _saved_config(path: str) -> dict:
    """The config saved in a run's checkpoint, without its own `resume` key."""
    try:
        saved = saved_train_config(path)
    except CheckpointError as error:
        raise ConfigError(f"resume: {error}") from None
    return {key: value for key, value in saved.items() if key != "resume"}


def preset_name(flags: dict) -> str:
    """Preset used without --config: from the dataset flag, else cifar10 for a pretrained model."""
    if "dataset" in flags:
        return "toy" if flags["dataset"].startswith("toy:") else "cifar10"
    return "cifar10" if flags.get("pretrained_model_name_or_path") else "toy"


def _check_resume_flags(flags: dict, start: dict) -> None:
    """--output_dir / --run_name with --resume would be ignored (the run's folder is written)."""
    for key in RESUME_FIXED:
        if key not in flags:
            continue
        if flags[key] == start.get(key, default_of(key)):
            continue
        raise ConfigError(f"{key} = {flags[key]!r} cannot be used with resume: a resume writes "
                          f"only into the run it resumes ({flags['resume']}); drop --{key}, "
                          "or start a new run")


def _check_given_keys(cfg: TrainConfig, flags: set[str], file_keys: set[str]) -> list[str]:
    """Keys the user wrote that this config would never read: refused on the command line
    (clearly meant), one note from a --config file (often a template)."""
    if "lr_decay_steps" in flags | file_keys and cfg.lr_schedule != "cosine":
        raise ConfigError(f"lr_decay_steps = {cfg.lr_decay_steps!r} sets the length of the cosine "
                          f"schedule, but lr_schedule is {cfg.lr_schedule!r}; set lr_schedule: "
                          "cosine (or drop lr_decay_steps)")
    if cfg.pretrained_model_name_or_path is None:
        return []
    unused = f"model = {cfg.model!r} is not used: the pretrained file defines the architecture"
    if "model" in flags:
        raise ConfigError(f"{unused}; drop --model (or the pretrained file)")
    if "model" in file_keys:
        return [unused]
    return []


def resolve_config(argv: list[str] | None = None,
                   description: str = "Train TwinFlow.") -> TrainConfig:
    """`resolve_config_with_notes`, each note issued as a ConfigWarning (one line of text).

    Raises ConfigError (one line) for anything that cannot work.
    """
    cfg, notes = resolve_config_with_notes(argv, description)
    for note in notes:
        warnings.warn(note, ConfigWarning, stacklevel=2)
    return cfg


def resolve_config_with_notes(argv: list[str] | None = None, description: str = "Train TwinFlow."
                              ) -> tuple[TrainConfig, list[str]]:
    """parse -> load JSON (if any) -> check keys and types -> build -> validate.

    Returns the config and its notes (one line each, e.g. keys that are set but not used), for an
    entry point to print as it likes ("train.py: note: ..."). Raises ConfigError (one line) for
    anything that cannot work.
    """
    namespace, unknown = build_parser(description).parse_known_args(argv)
    if unknown:
        flag = next((word for word in unknown if word.startswith("-")), None)
        if flag is None:
            raise ConfigError(f"command line: unexpected value {unknown[0]!r}; "
                              "every value follows its --flag")
        key = flag.lstrip("-").split("=")[0]
        raise unknown_key_error(key, " on the command line", prefix="--")
    given = vars(namespace)
    config_path = given.pop("config", None)
    parsed = {key: _parse_flag(key, text) for key, text in given.items()}
    flags = check_keys_and_types(parsed, " on the command line")
    if config_path is not None:
        start = check_keys_and_types(_load_json(config_path), f" in {config_path}")
    elif flags.get("resume"):  # the run's own config; flags still win (e.g. more steps)
        saved = _saved_config(flags["resume"])
        start = check_keys_and_types(saved, f" in the checkpoint {flags['resume']}")
    else:
        start = PRESETS[preset_name(flags)]
    if flags.get("resume"):
        _check_resume_flags(flags, start)
    cfg = TrainConfig(**{**start, **flags})
    file_keys = set(start) if config_path is not None else set()
    notes = validate(cfg, set(flags) | file_keys) + _check_given_keys(cfg, set(flags), file_keys)
    return cfg, notes


def config_table_markdown() -> str:
    """The README table of every key: key, type, default, meaning."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, field in FIELDS.items():
        choices = field.metadata["choices"]
        if choices:
            kind = " \\| ".join(f'"{choice}"' for choice in choices)
        else:
            kind = type_name(HINTS[key])
        meaning = field.metadata["help"].replace("|", "\\|")
        default = json.dumps(default_of(key), ensure_ascii=False)
        rows.append(f"| `{key}` | {kind} | `{default}` | {meaning} |")
    return "\n".join(rows)
