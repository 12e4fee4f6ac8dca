"""Shared parts of the paper-companion scripts in toy/: the compared methods, quiet runs, seeds.

TwinFlow (arXiv:2512.05150), Sec. 4. Every method is `train.py` on the toy preset (see
twinflow_min/config.py `PRESETS["toy"]`: 64-wide MLP, batch 96, AdamW 2e-3 with a cosine schedule,
EMA 0.99 teacher and sampled model) plus the flags below, so all rows share model, batch, optimizer
and step count. The last two split the tutorial recipe's twin-branch terms apart;
toy/compare_methods.py runs the first five unless --methods names others.

  flow-matching      plain flow matching, F(x_t, t, t) regressed on z - x  (twinflow_enabled false)
  rcgm               L_base alone: the official RCGM mode (tutorial `TwinFlow.training_step` with
                     using_twinflow False: l2(F(x_t, t, t_tgt), RCGM target), t_tgt ~ U(0, t),
                     N = 2)
  rcgm+realvel       L_base + the real-velocity term l2(F(x_t, t, t), z - x)
  twinflow-tutorial  L_base + real velocity + L_adv + L_rectify (Eq. 9) + the 1 -> 0 consistency
                     term (the tutorial recipe, all weights 1)
  twinflow-large     the large recipe: e2e / mul / any / adv row groups in equal shares, L_rectify
                     on the e2e rows, l2 loss, no time weight (twinflow_recipe "large" defaults)
  rcgm+realvel+consistency   the tutorial recipe without L_adv and L_rectify (their weights 0)
  rcgm+realvel+adv+rectify   the tutorial recipe without the consistency term (its weight 0)

Samples are scored by `twinflow_min.evaluate.evaluate_toy` on fixed draws (seed TOY_EVAL_SEED), so
runs with different training seeds see the same noise and reference data. The loss terms:
docs/math.md#rcgm-target, #real-velocity, #adversarial-loss, #rectify-loss, #consistency,
#large-recipe. Time convention: see twinflow_min/transport.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from twinflow_min.canvas import FONT_LARGE, draw_text, text_width  # noqa: E402
from twinflow_min.checks import EXIT_REFUSED  # noqa: E402
from twinflow_min.config_cli import ALIASES  # noqa: E402
from twinflow_min.data import sample_toy  # noqa: E402
from twinflow_min.evaluate import TOY_EVAL_SEED  # noqa: E402
from twinflow_min.metrics import energy_distance  # noqa: E402
from twinflow_min.run_dir import training_config  # noqa: E402

METHODS = {
    "flow-matching": ["--twinflow_enabled", "false"],
    "rcgm": ["--twinflow_adversarial_enabled", "false", "--twinflow_realvel_weight", "0"],
    "rcgm+realvel": ["--twinflow_adversarial_enabled", "false"],
    "twinflow-tutorial": [],
    "twinflow-large": ["--twinflow_recipe", "large"],
    "rcgm+realvel+consistency": ["--twinflow_adversarial_weight", "0",
                                 "--twinflow_rectify_weight", "0"],
    "rcgm+realvel+adv+rectify": ["--twinflow_consistency_weight", "0"],
}
# (column title, train.py summary key): 1/2/4 NFE with the official UCGM presets, 50-step Euler ODE
COLUMNS = [
    ("1 NFE", "energy_distance_nfe1"),
    ("2 NFE", "energy_distance_nfe2"),
    ("4 NFE", "energy_distance_nfe4"),
    ("50-step ODE", "energy_distance_ode50"),
]
DATA_ROW = "data (2nd draw)"  # the metric's floor: a fresh data draw scored like a model's samples
QUICK_FLAGS = ["--eval_samples", "200"]  # --quick: tiny evaluation so the tests take seconds
DATA_SEED_OFFSET = 1000  # data-vs-data draw i uses seed DATA_SEED_OFFSET + i (not the eval's)


def fail(script: str, message: str) -> None:
    """One line on stderr, exit status 2 (the house style for bad user input)."""
    print(f"toy/{script}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_REFUSED)


class ToyParser(argparse.ArgumentParser):
    """argparse with prog "toy/<script>" whose errors are one `fail` line (no usage block)."""

    def __init__(self, script: str, **kwargs):
        super().__init__(prog=f"toy/{script}", allow_abbrev=False, **kwargs)
        self.script = script

    def error(self, message: str):
        fail(self.script, message)


def fresh_folder(script: str, out) -> Path:
    """`out` as a Path that is new or empty (nothing is ever overwritten); else a one-line error."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        fail(script, f"--out {out} is a file; choose a new folder")
    if out.exists() and any(out.iterdir()):
        fail(
            script,
            f"--out {out} already exists and is not an empty folder; choose a new folder "
            f"(these scripts never overwrite results)",
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _int_in(text: str, lo: int, hi: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def seed_value(text: str) -> int:
    """argparse type of one training seed: an int in [0, 2**31 - 1]."""
    return _int_in(text, 0, 2**31 - 1, "a seed in [0, 2147483647]")


def positive_int(text: str) -> int:
    """argparse type of a step count, sample count or thread count: an int >= 1."""
    return _int_in(text, 1, 10**9, "an integer >= 1")


def share_value(text: str) -> float:
    """argparse type of a twin-trajectory share: a decimal (0.25) or a fraction p/q (1/3) in
    [0, 1), returned as the float nearest to it."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a number or fraction p/q in [0, 1) (the adv group's share of the batch), "
            f"got {text!r}"
        )
    return value


def refuse_repeats(parser: argparse.ArgumentParser, **lists) -> None:
    """One-line argparse error for a list flag that names a value twice (--seeds 0 0)."""
    for name, values in lists.items():
        if len(set(values)) != len(values):
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} {values} repeats a value; give distinct values")


@contextlib.contextmanager
def torch_threads(count: int):
    """Run with `count` intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_argv(toy: str, method_flags: list[str], *, seed: int, steps: int, out: Path,
               name: str) -> list[str]:
    """The train.py flags a script sets for one run (its --extra flags come after them)."""
    return ["--toy", toy, "--seed", str(seed), "--max_train_steps", str(steps),
            "--output_dir", str(out), "--run_name", name, "--checkpointing_steps", "0",
            *method_flags]


def flag_key(flag: str) -> str | None:
    """The TrainConfig key a train.py flag sets: "--steps" and "--max_train_steps=9" both give
    "max_train_steps" (aliases of `twinflow_min.config_cli.ALIASES` resolved); None for a value."""
    if not flag.startswith("--"):
        return None
    name = flag.split("=", 1)[0]
    return ALIASES.get(name, name[2:])


# What a user sets instead of each key `train_argv` sets itself (scripts override a few)
RUN_SETTINGS = {
    "dataset": "use --toy",
    "max_train_steps": "use --steps",
    "seed": "use --seeds",
    "output_dir": "use --out, before --extra",
    "run_name": "the script names each run",
    "checkpointing_steps": "each run keeps only its final checkpoint",
}


def script_settings(methods: dict[str, list[str]], instead: str, **overrides: str) -> dict:
    """{TrainConfig key: why an --extra flag for it is refused} for every key a script sets itself.

    The keys of `train_argv` ("set by this script; <hint>", hints from RUN_SETTINGS replaced by
    `overrides`), then the keys of each method's flags in `methods` ({label: train.py flags}):
    "set by this script for <label>; <instead>".
    """
    hints = {**RUN_SETTINGS, **overrides}
    settings = {}
    for flag in train_argv("moons", [], seed=0, steps=1, out=Path("."), name="run"):
        if flag_key(flag):
            settings[flag_key(flag)] = f"set by this script; {hints[flag_key(flag)]}"
    for label, flags in methods.items():
        for flag in flags:
            if flag_key(flag):
                settings.setdefault(flag_key(flag), f"set by this script for {label}; {instead}")
    for flags in METHODS.values():  # keys that tell the methods apart: a row would change method
        for flag in flags:
            if flag_key(flag):
                settings.setdefault(flag_key(flag), "decides which method a row trains; "
                                                    "choose the rows with --methods")
    settings["config"] = ("a config file could change what this script sets; give train.py "
                          "flags instead")
    return settings


def refuse_extra(script: str, extra: list[str], settings: dict[str, str]) -> None:
    """One-line refusal of an --extra flag for a key the script sets itself (`script_settings`):
    applied after the script's own flags, it would win and the script's table would lie.

    `--out` after --extra (it would reach train.py, because --extra takes the rest of the line)
    gets its own hint: put --out before --extra.
    """
    for flag in extra:
        name = flag.split("=", 1)[0]
        if name == "--out":
            fail(script, "--extra --out: --extra passes the rest of the line to train.py; "
                         "put --out before --extra")
        if flag_key(flag) in settings:
            fail(script, f"--extra {name}: {settings[flag_key(flag)]}")
    if _value_of(extra, "eval_samples") in ("0", "0.0"):
        fail(script, "--extra --eval_samples 0: every run is scored; give a count >= 1")


def _value_of(argv: list[str], key: str) -> str | None:
    """The last value given for `key` in train.py flags `argv` (--key V or --key=V), else None."""
    value = None
    for index, flag in enumerate(argv):
        if flag_key(flag) != key:
            continue
        if "=" in flag:
            value = flag.split("=", 1)[1]
        elif index + 1 < len(argv):
            value = argv[index + 1]
    return value


def wall_time(seconds: float) -> str:
    """The tables' wall-time phrase: "6 s" under a minute, else "4.4 min"."""
    if round(seconds) < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def run(toy: str, method_flags: list[str], *, seed: int, steps: int, out: Path, name: str,
        extra: list[str] = ()) -> dict:
    """One quiet `train.main` run: its summary plus "seconds" (wall time, evaluation included) and
    "batch_size" (the run's saved train_batch_size).

    train.py's own summary print is swallowed so that the scripts' tables stay readable; its errors
    (stderr, SystemExit) pass through unchanged. `extra` follows the script's own flags, so callers
    refuse (`refuse_extra`) any that would override them.
    """
    argv = [*train_argv(toy, method_flags, seed=seed, steps=steps, out=out, name=name), *extra]
    tic = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = train.main(argv)
    seconds = time.time() - tic
    batch_size = training_config(summary["checkpoint"])["train_batch_size"]
    return {**summary, "seconds": seconds, "batch_size": batch_size}


def data_floor(toy: str, num: int, seeds) -> list[float]:
    """Energy distance of fresh data draws (one per seed) to the evaluation's reference draw.

    The reference is the one `evaluate_toy` uses (seed TOY_EVAL_SEED + 1), so these numbers are the
    metric's noise floor for `num` samples: a model cannot be told apart from the data below them.
    """
    reference = sample_toy(toy, num, torch.Generator().manual_seed(TOY_EVAL_SEED + 1))
    return [
        energy_distance(
            sample_toy(toy, num, torch.Generator().manual_seed(DATA_SEED_OFFSET + s)), reference
        )
        for s in seeds
    ]


def mean_spread(values) -> str:
    """The string "mean ± sd" (sample sd; the value alone for one value), 4 decimals."""
    values = list(values)
    if any(not math.isfinite(v) for v in values):
        return "nan"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table: header cells, then one row of cells per entry."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def stack_rows(
    rows: list[Image.Image], labels: list[str], path: Path, label_width: int = 170
) -> Path:
    """Images stacked top to bottom, each labelled on its left (a margin of at least `label_width`
    pixels, wider for a long label); written to `path`."""
    label_width = max(label_width, *(text_width(label, FONT_LARGE) + 20 for label in labels))
    figure = Image.new(
        "RGB", (label_width + max(r.width for r in rows), sum(r.height for r in rows)), "white"
    )
    draw, top = ImageDraw.Draw(figure), 0
    for label, row in zip(labels, rows):
        figure.paste(row, (label_width, top))
        draw_text(draw, (10, top + row.height // 2), label, FONT_LARGE, align="lc")
        top += row.height
    figure.save(path)
    return path


def side_by_side(images: list[Image.Image], path: Path) -> Path:
    """Images placed left to right on white; written to `path`."""
    figure = Image.new(
        "RGB", (sum(i.width for i in images), max(i.height for i in images)), "white"
    )
    left = 0
    for image in images:
        figure.paste(image, (left, 0))
        left += image.width
    figure.save(path)
    return path
