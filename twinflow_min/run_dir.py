"""The run folder: checked before any work, claimed atomically, resumed only by its own run.

A fresh run writes into OUTPUT_DIR/<run name>, or <run name>-2, -3, ... when that name is taken: the
folder is claimed with one `mkdir` that fails if the folder exists, so two runs started at the same
moment never share one. Before any data is loaded, `check_output_folder` makes sure the folder can
be made (the output folder is a folder and writable, the run name fits the file system). A resume
writes only into the folder of the run it resumes, and first removes what a killed run left there:
temporary files of an atomic write, and the `metrics.jsonl` rows beyond the resumed step. No
TwinFlow math here; the time convention of the project is stated in `twinflow_min/transport.py`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from twinflow_min.train_state import CHECKPOINT_NAME, SUMMARY_NAME, write_summary

MAX_RUN_SUFFIX = 1000  # <name>-2 ... <name>-1000: past that, ask for another run name
METRICS_NAME = "metrics.jsonl"


class RunFolderError(ValueError):
    """An output folder, run name or resume path that cannot be used (one line with the fix)."""


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def run_name(cfg) -> str:
    """The run's folder name: run_name, else the pretrained file (image-free), else the dataset."""
    if cfg.run_name:
        return cfg.run_name
    if cfg.twinflow_image_free and cfg.pretrained_model_name_or_path:
        # no dataset: name it after the model
        return f"{Path(cfg.pretrained_model_name_or_path).stem}-image-free"
    return cfg.dataset.replace(":", "-").replace("/", "_").replace("\\", "_")


def check_output_folder(output_dir: str | Path, name: str) -> None:
    """Raise RunFolderError unless OUTPUT_DIR/<name>-NNNN can be created; creates nothing.

    Checks: every existing part of the path is a folder; a test folder can be made in the nearest
    existing one (a real attempt, since permission bits do not bind root and read-only mounts show
    no bits); the name plus the longest suffix fits the file system's limit on one name.
    """
    output_dir = Path(output_dir)
    existing = _nearest_existing(output_dir)
    if not existing.is_dir():
        raise RunFolderError(f"output_dir {output_dir}: {existing} is a file, not a folder; "
                             f"choose another --output_dir")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".twinflow-write-test-", dir=existing))
    except OSError as error:
        raise RunFolderError(f"output_dir {output_dir}: cannot create folders in {existing} "
                             f"({error.strerror}); choose a writable --output_dir") from None
    limit = os.pathconf(existing, "PC_NAME_MAX")
    longest = len(os.fsencode(f"{name}-{MAX_RUN_SUFFIX}"))
    if longest > limit:
        raise RunFolderError(f"run name {name[:40]}... is {len(os.fsencode(name))} bytes; this "
                             f"file system allows {limit} bytes per name (with a -NNNN suffix): "
                             f"give a shorter --run_name")


def claim_run_folder(output_dir: str | Path, name: str) -> Path:
    """Create and return OUTPUT_DIR/<name>, or <name>-2, -3, ... if taken (atomic mkdir each)."""
    base = Path(output_dir) / name
    base.parent.mkdir(parents=True, exist_ok=True)
    for index in range(1, MAX_RUN_SUFFIX + 1):
        path = base if index == 1 else base.with_name(f"{name}-{index}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RunFolderError(f"{base} and {MAX_RUN_SUFFIX - 1} numbered variants exist; give a new "
                         f"--run_name")


def resume_folder(resume: str | Path) -> Path:
    """The folder of the run to resume; refuses a checkpoint file that is not that run's own
    checkpoint.

    `--resume DIR` or `--resume DIR/checkpoint.safetensors` continue the run in DIR. Any other file
    (a copy, `other.safetensors`) belongs to no run folder this script could safely write into:
    writing beside it would overwrite an unrelated run's checkpoint and metrics.
    """
    path = Path(resume)
    if path.is_dir():
        return path
    if path.name != CHECKPOINT_NAME:
        raise RunFolderError(f"--resume {path}: a resume continues the run in the folder of its "
                             f"{CHECKPOINT_NAME}, and this file is not one; pass the run folder, "
                             f"or move the file to NEW_FOLDER/{CHECKPOINT_NAME} and --resume "
                             f"NEW_FOLDER")
    return path.parent


def clean_resumed_folder(run_dir: Path, step: int, summary: dict) -> list[Path]:
    """Before a resume at `step`: remove orphaned temporary files, metrics rows beyond `step`, and
    make checkpoint.json match the checkpoint (it may be empty, damaged or one write behind).
    Returns the removed files."""
    removed = []
    for name in (CHECKPOINT_NAME, SUMMARY_NAME, METRICS_NAME):
        for orphan in run_dir.glob(f"{name}.*.tmp"):
            orphan.unlink()
            removed.append(orphan)
    write_summary(run_dir, summary)
    truncate_metrics(run_dir / METRICS_NAME, step)
    return removed


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of `path` with "step" <= `step` (drop a row cut short by a kill); atomic."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", step + 1) <= step:
            kept.append(line)
    tmp = path.with_name(f"{path.name}.resume.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def append_metrics(run_dir: Path, row: dict) -> None:
    """One JSON row per logged step, appended (the file is opened and closed per row)."""
    with (run_dir / METRICS_NAME).open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def training_config(checkpoint: str | Path) -> dict:
    """The training config ("train_config") of the run that wrote `checkpoint`, as saved in the
    checkpoint.json next to the file; {} for a file without one (a converted pretrained checkpoint)
    or an unreadable one: callers then fall back to the user's flags or say nothing.
    """
    summary = Path(checkpoint).parent / SUMMARY_NAME
    try:
        config = json.loads(summary.read_text()).get("train_config", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}
