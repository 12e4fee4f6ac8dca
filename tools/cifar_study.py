"""CIFAR-10 from scratch at equal compute: flow matching vs TwinFlow (issue 19), one command.

Trains four arms of the same model, batch, learning rate and seed with train.py, each for the
same single-thread CPU budget, then samples every final checkpoint at 1, 2, 4 NFE and with the
50-step ODE and measures the samples against held-out images:

  A  flow matching only;
  B  TwinFlow (tutorial recipe, adversarial branch on) from step 0;
  C  flow matching, then TwinFlow (tutorial recipe) from step K = the step arm A reached after
     `--fm-share` (default 2/3) of the budget (`twinflow_start_step`);
  D  as C with the large recipe (row groups: each row pays for one term, so a step is cheaper).

    python tools/cifar_study.py --train-data cifar10-jpeg-train.tar.gz \\
        --test-data cifar10-jpeg-test.tar.gz --out outputs/cifar_study --docs docs \\
        --budget 360 --parallel 4 --num-samples 1000 --equal-steps B,C    # README's table

Equal compute: every arm runs with OMP_NUM_THREADS=1, two arms at a time (`--parallel`), and gets
SIGTERM once its CPU time since training started (the moment train.py claims its run folder, after
the data is loaded) reaches `--budget` seconds; train.py finishes the step, writes its checkpoint
and exits. On a core of its own a one-thread process's CPU time is its wall-clock time; CPU time is
used so that other work on a shared machine does not decide the comparison (both are reported).
With `--parallel 4` all arms run at once and K comes from arm A's first `--calibration` CPU
seconds (its flow-matching rate, extrapolated); with 2, K is read off A's finished trace. Arm A
keeps a copy of its checkpoint every `checkpointing_steps`, so A is also measured at the step counts
the other arms reached (equal steps).

Quality, per checkpoint (EMA weights, as sample.py samples them): the random-feature Fréchet
distance `fd_random_features` (twinflow_min/metrics.py; a proxy, not FID) of `--num-samples` samples
against every image of `--test-data`, the number `python sample.py RUN --proxy-metrics --fid-data
TEST --num N --nfe K` prints (same seed, same samples), and the neighbour-pixel roughness: the mean
squared difference of horizontally and vertically adjacent pixels on the [-1, 1] scale (the data's
own value is reported next to it). Picture grids: one per arm, rows 1, 2, 4 NFE and the ODE, one
column per class. Outputs: OUT/results.json, OUT/results.md (the table and the commands), OUT/runs/
(the train.py runs), DOCS/cifar_study_<arm>.png.

`--quick` is a seconds-long smoke run (tiny budget and sample count, batch 4, checkpoint every step)
for the tests; its numbers mean nothing. Time convention: see twinflow_min/transport.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # sample.py and the package, from any working directory
    sys.path.insert(0, str(REPO_ROOT))

from twinflow_min import metrics  # noqa: E402
from twinflow_min.checks import EXIT_REFUSED, is_count  # noqa: E402
from twinflow_min.data import load_dataset  # noqa: E402

ARMS = ("A", "B", "C", "D")
ARM_TITLES = {
    "A": "flow matching",
    "B": "TwinFlow (tutorial) from step 0",
    "C": "flow matching, then TwinFlow (tutorial) from step K",
    "D": "flow matching, then TwinFlow (large recipe) from step K",
}
SAMPLERS = ("nfe1", "nfe2", "nfe4", "ode50")
SAMPLER_FLAGS = {
    "nfe1": ["--nfe", "1"],
    "nfe2": ["--nfe", "2"],
    "nfe4": ["--nfe", "4"],
    "ode50": ["--ode"],
}
SAMPLER_LABELS = {"nfe1": "1 NFE", "nfe2": "2 NFE", "nfe4": "4 NFE", "ode50": "ODE 50"}
POLL_SECONDS = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StudyError(Exception):
    """A bad flag, a missing file or a failed arm: main() prints it as one line."""


# ------------------------------------------------------------------------------------------------
# Measures on finished images (uint8 or [-1, 1]); no diffusion time here
# ------------------------------------------------------------------------------------------------


def neighbour_roughness(images) -> float:
    """Mean squared difference of adjacent pixels, (horizontal + vertical) / 2, [-1, 1] scale.

    images: (N, C, H, W), uint8 (mapped by x / 127.5 - 1) or float in [-1, 1]; H, W >= 2. The
    roughness measure of issue 19: noise raises it, a blurry mean lowers it. Raises ValueError
    for another shape.
    """
    array = torch.as_tensor(np.asarray(images))
    if array.dim() != 4 or array.shape[2] < 2 or array.shape[3] < 2:
        raise ValueError(
            f"images must have shape (N, C, H, W) with H, W >= 2, got {tuple(array.shape)}"
        )
    x = array.double() / 127.5 - 1 if array.dtype == torch.uint8 else array.double()
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
    vertical = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
    return float((horizontal + vertical) / 2)


def step_at_cpu(trace: list[tuple[float, int]], cpu_s: float) -> int:
    """The step a run had reached after `cpu_s` CPU seconds: linear interpolation in its trace.

    trace: (CPU seconds since training started, step) pairs in time order, the first one (0, 0).
    Beyond the last pair the trace's mean rate (steps per CPU second) is extended. Floors to an
    integer step. Raises ValueError for fewer than two pairs.
    """
    if len(trace) < 2:
        raise ValueError("need at least two (cpu seconds, step) points to interpolate")
    cpus = np.array([point[0] for point in trace], dtype=np.float64)
    steps = np.array([point[1] for point in trace], dtype=np.float64)
    if cpu_s <= cpus[-1]:
        return int(np.floor(np.interp(cpu_s, cpus, steps)))
    rate = (steps[-1] - steps[0]) / max(cpus[-1] - cpus[0], 1e-9)
    return int(np.floor(steps[-1] + rate * (cpu_s - cpus[-1])))


# ------------------------------------------------------------------------------------------------
# The arms: one train.py config each
# ------------------------------------------------------------------------------------------------


def arm_config(arm: str, args, runs_dir: Path, start_step: int | None) -> dict:
    """The train.py config (JSON keys) of one arm; everything but the objective is shared."""
    config = {
        "dataset": "folder",
        "data": str(Path(args.train_data).resolve()),
        "model": args.model,
        "train_batch_size": args.batch_size,
        "use_ema": True,
        "ema_decay": 0.99,
        "learning_rate": args.lr,
        "lr_schedule": "constant",
        "lr_warmup_steps": 0,
        "adam_beta2": 0.99,
        "max_grad_norm": 1.0,
        "label_dropout": 0.1,
        "seed": args.seed,
        "max_train_steps": 10_000_000,
        "validation_every": 0,
        "checkpointing_steps": args.checkpointing_steps,
        "eval_samples": 0,
        "log_every": args.log_every,
        "device": "cpu",
        "output_dir": str(runs_dir),
        "run_name": arm,
    }
    if arm == "A":
        return config
    config.update(
        twinflow_enabled=True,
        twinflow_adversarial_enabled=True,
        twinflow_enhanced_ratio=0.5,
        twinflow_estimate_order=2,
        twinflow_target_step_count=2,
    )
    if arm in ("C", "D"):
        config["twinflow_start_step"] = start_step
    if arm == "D":
        config["twinflow_recipe"] = "large"
    return config


@dataclass
class ArmRun:
    """One train.py process, watched until its CPU budget is spent."""

    arm: str
    run_dir: Path
    process: subprocess.Popen
    started: float
    snapshots: Path | None = None  # arm A: copies of every checkpoint it writes
    trace: list = field(default_factory=list)  # (CPU s since training started, step)
    setup_cpu: float | None = None  # CPU seconds when the run folder appeared
    train_started: float | None = None  # wall time then
    terminated: bool = False
    exit_code: int | None = None
    cpu_total: float = 0.0
    wall_train: float = 0.0
    last_snapshot_mtime: float = 0.0


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process from /proc (Linux), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14, 15 of proc(5)


def last_logged_step(run_dir: Path) -> int:
    """The step of the last metrics.jsonl row (0 before the first row)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().strip().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0  # not written yet, or a row half-written right now


def checkpoint_step(path: Path) -> int:
    """The training step stored in a twinflow-min checkpoint's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return int(json.loads(handle.metadata()["twinflow_min.train_state"])["step"])


def keep_snapshot(run: ArmRun) -> None:
    """Copy the run's checkpoint when it changed, named by the step stored inside it."""
    source = run.run_dir / "checkpoint.safetensors"
    try:
        mtime = source.stat().st_mtime
    except OSError:
        return
    if mtime == run.last_snapshot_mtime:
        return
    temporary = run.snapshots / "incoming.safetensors"
    shutil.copyfile(source, temporary)  # the file is replaced atomically: the copy is one version
    run.last_snapshot_mtime = mtime
    temporary.replace(run.snapshots / f"step_{checkpoint_step(temporary):08d}.safetensors")


def start_arm(arm: str, config: dict, study: Path, snapshot: bool) -> ArmRun:
    config_path = study / "configs" / f"arm_{arm}.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = open(study / f"train_{arm}.log", "w")
    command = [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config_path)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    run = ArmRun(arm, Path(config["output_dir"]) / arm, process, time.time())
    if snapshot:
        run.snapshots = study / "snapshots" / arm
        run.snapshots.mkdir(parents=True, exist_ok=True)
    print(f"arm {arm}: started ({' '.join(command[1:])})", flush=True)
    return run


def watch(run: ArmRun, budget: float) -> bool:
    """One poll: record the trace, keep snapshots, send SIGTERM at the budget; True once exited."""
    cpu = process_cpu_seconds(run.process.pid)
    if cpu is not None and run.setup_cpu is None and run.run_dir.is_dir():
        run.setup_cpu, run.train_started = cpu, time.time()
        run.trace.append((0.0, 0))
    if cpu is not None and run.setup_cpu is not None:
        run.trace.append((cpu - run.setup_cpu, last_logged_step(run.run_dir)))
        if not run.terminated and cpu - run.setup_cpu >= budget:
            run.process.send_signal(signal.SIGTERM)
            run.terminated = True
    if run.snapshots is not None:
        keep_snapshot(run)
    pid, status, usage = os.wait4(run.process.pid, os.WNOHANG)
    if pid == 0:
        return False
    run.exit_code = os.waitstatus_to_exitcode(status)
    run.process.returncode = run.exit_code  # Popen must not wait for it again
    run.cpu_total = usage.ru_utime + usage.ru_stime
    run.wall_train = time.time() - (run.train_started or run.started)
    if run.snapshots is not None:
        keep_snapshot(run)
    return True


def run_arms(runs: list[ArmRun], budget: float) -> None:
    """Poll the running arms until every one has exited."""
    pending = list(runs)
    while pending:
        time.sleep(POLL_SECONDS)
        pending = [run for run in pending if not watch(run, budget)]


def arm_result(run: ArmRun, budget: float) -> dict:
    """Steps, CPU and wall seconds of a finished arm; StudyError if it did not end as asked."""
    summary_path = run.run_dir / "checkpoint.json"
    ended_as_asked = run.exit_code in (0, 128 + signal.SIGTERM)
    log = run.run_dir.parent.parent / f"train_{run.arm}.log"
    usable = run.setup_cpu is not None and summary_path.is_file()
    if not ended_as_asked or not usable:
        raise StudyError(
            f"arm {run.arm} ended with exit code {run.exit_code} and no usable "
            f"checkpoint; see its log {log}"
        )
    steps = int(json.loads(summary_path.read_text())["step"])
    return {
        "arm": run.arm,
        "title": ARM_TITLES[run.arm],
        "steps": steps,
        "exit_code": run.exit_code,
        "budget_cpu_s": budget,
        "setup_cpu_s": round(run.setup_cpu, 2),
        "train_cpu_s": round(run.cpu_total - run.setup_cpu, 2),
        "train_wall_s": round(run.wall_train, 2),
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.run_dir / "checkpoint.safetensors"),
    }


# ------------------------------------------------------------------------------------------------
# Evaluation (worker processes, one thread each)
# ------------------------------------------------------------------------------------------------


def _one_thread() -> None:
    torch.set_num_threads(1)


def evaluate_checkpoint(
    path: str, reference_stats, num_samples: int, seed: int, batch_size: int
) -> dict:
    """Samples of one checkpoint (EMA weights) at every sampler: FD, roughness, first ten images."""
    import sample
    from twinflow_min.checkpoint import load_pretrained

    model, _ = load_pretrained(path, weights="auto")
    model.eval()
    feature_net = metrics.RandomFeatureNet()
    result, pictures, ode, one_step = {}, {}, None, None
    for name in SAMPLERS:
        argv = [path, *SAMPLER_FLAGS[name]]
        options, _ = sample.sampler_options(sample.build_parser().parse_args(argv))
        sampler = sample.Sampler(model, seed, torch.device("cpu"), options, None)
        images = torch.cat(
            [
                sampler(min(batch_size, num_samples - start), start=start)
                for start in range(0, num_samples, batch_size)
            ]
        )
        quantised = metrics.to_uint8(images)
        stats = metrics.compute_statistics(quantised, feature_net, progress=False)
        result[name] = {
            metrics.PROXY_FD_KEY: metrics.frechet_distance(*stats, *reference_stats),
            "roughness": neighbour_roughness(quantised),
        }
        pictures[name] = quantised[:10].numpy()
        one_step = images if name == "nfe1" else one_step
        ode = images if name == "ode50" else ode
    result[metrics.GAP_KEY] = metrics.sample_gap(one_step, ode)
    return {"path": path, "num_samples": num_samples, "metrics": result, "pictures": pictures}


def data_floor(train_images: np.ndarray, reference_stats, num_samples: int, seed: int) -> dict:
    """The measures on `num_samples` real training images (what a perfect sampler would score)."""
    generator = np.random.default_rng(seed)
    chosen = train_images[generator.choice(len(train_images), num_samples, replace=False)]
    stats = metrics.compute_statistics(
        torch.from_numpy(chosen), metrics.RandomFeatureNet(), progress=False
    )
    return {
        metrics.PROXY_FD_KEY: metrics.frechet_distance(*stats, *reference_stats),
        "roughness": neighbour_roughness(chosen),
    }


def nearest_snapshot(snapshots: Path, step: int) -> Path:
    """The snapshot whose step is closest to `step` (the earlier one on a tie)."""
    found = sorted(snapshots.glob("step_*.safetensors"))
    if not found:
        raise StudyError(f"no snapshots in {snapshots}: arm A wrote no checkpoint")
    return min(found, key=lambda path: (abs(int(path.stem[5:]) - step), int(path.stem[5:])))


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def write_grid(path: Path, pictures: dict) -> None:
    from twinflow_min.plots import image_grid_png

    rows = np.concatenate([pictures[name] for name in SAMPLERS])
    image_grid_png(
        path,
        rows,
        nrow=len(pictures["nfe1"]),
        upscale=2,
        labels=[SAMPLER_LABELS[name] for name in SAMPLERS],
    )


def table_markdown(rows: list[dict], floor: dict) -> str:
    head = (
        "| arm | steps | train CPU s | train wall s | "
        + " | ".join(f"FD {SAMPLER_LABELS[n]}" for n in SAMPLERS)
        + " | "
        + " | ".join(f"rough {SAMPLER_LABELS[n]}" for n in SAMPLERS)
        + " |"
    )
    lines = [head, "|" + "---|" * (4 + 2 * len(SAMPLERS))]
    for row in rows:
        values = row["metrics"]
        fds = " | ".join(f"{values[n][metrics.PROXY_FD_KEY]:.4g}" for n in SAMPLERS)
        rough = " | ".join(f"{values[n]['roughness']:.4f}" for n in SAMPLERS)
        lines.append(
            f"| {row['label']} | {row['steps']} | {row.get('train_cpu_s', '')} | "
            f"{row.get('train_wall_s', '')} | {fds} | {rough} |"
        )
    blanks = " |" * (len(SAMPLERS) - 1)
    lines.append(
        f"| data ({floor['num_samples']} train images) | | | | "
        f"{floor[metrics.PROXY_FD_KEY]:.4g} |{blanks} {floor['roughness']:.4f} |{blanks}"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise StudyError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-data", required=True, help="class-folder archive or folder")
    parser.add_argument("--test-data", required=True, help="held-out images for the measures")
    parser.add_argument("--out", required=True, help="study folder (must not exist yet)")
    parser.add_argument("--docs", help="folder for cifar_study_<arm>.png (default: --out)")
    parser.add_argument("--arms", default="A,B,C,D", help="arms to run (A is always needed)")
    parser.add_argument(
        "--budget",
        type=float,
        default=720.0,
        help="CPU seconds of training per arm (one thread each; default 720)",
    )
    parser.add_argument(
        "--fm-share",
        type=float,
        default=2 / 3,
        help="share of C's and D's budget spent on flow matching (default 2/3)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="arms (and evaluations) at a time (default 2: A with B, then C with "
        "D); at least the number of arms: all at once, K from --calibration",
    )
    parser.add_argument(
        "--calibration",
        type=float,
        default=30.0,
        help="with all arms at once: CPU seconds of arm A that set K (default 30)",
    )
    parser.add_argument("--model", default="CIFAR-T/2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4, help="constant learning rate")
    parser.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples per sampler")
    parser.add_argument("--checkpointing-steps", type=int, default=25)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument(
        "--equal-steps",
        default="B,C,D",
        help="arms whose step count arm A is also measured at (default B,C,D)",
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (tests)")
    return parser


def checked_args(argv) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.budget, args.num_samples, args.batch_size = 3.0, 12, 4
        args.checkpointing_steps, args.log_every, args.calibration = 1, 1, 1.0
    arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or "A" not in arms:
        raise StudyError(f"--arms must list A and any of B, C, D, got {args.arms!r}")
    args.arms = [arm for arm in ARMS if arm in arms]
    equal_steps = [arm.strip() for arm in args.equal_steps.split(",") if arm.strip()]
    if not set(equal_steps) <= set(args.arms) - {"A"}:
        raise StudyError(
            f"--equal-steps must list arms of --arms other than A, got {args.equal_steps!r}"
        )
    args.equal_steps = equal_steps
    for flag, value in (("--train-data", args.train_data), ("--test-data", args.test_data)):
        if not Path(value).exists():
            raise StudyError(f"{flag} {value}: no such file or folder")
    if Path(args.out).exists():
        raise StudyError(f"--out {args.out} exists; choose a new study folder")
    if not np.isfinite(args.budget) or args.budget <= 0:
        raise StudyError(f"--budget must be a positive number of seconds, got {args.budget}")
    if not np.isfinite(args.calibration) or args.calibration <= 0:
        raise StudyError(
            f"--calibration must be a positive number of seconds, got {args.calibration}"
        )
    if not 0 < args.fm_share < 1:
        raise StudyError(f"--fm-share must be in (0, 1), got {args.fm_share}")
    for flag, value in (
        ("--parallel", args.parallel),
        ("--batch-size", args.batch_size),
        ("--checkpointing-steps", args.checkpointing_steps),
        ("--log-every", args.log_every),
    ):
        if not is_count(value, minimum=1):
            raise StudyError(f"{flag} must be a positive integer, got {value}")
    if not is_count(args.num_samples, minimum=2):
        raise StudyError(f"--num-samples must be an integer >= 2, got {args.num_samples}")
    return args


def train_phase(arms: list[str], args, study: Path, start_step: int | None) -> dict:
    """Train `arms`, `--parallel` at a time; returns each arm's result with its trace."""
    results = {}
    for offset in range(0, len(arms), args.parallel):
        runs = [
            start_arm(arm, arm_config(arm, args, study / "runs", start_step), study, arm == "A")
            for arm in arms[offset : offset + args.parallel]
        ]
        run_arms(runs, args.budget)
        results.update(finished_arms(runs, args.budget))
    return results


def finished_arms(runs: list[ArmRun], budget: float) -> dict:
    results = {}
    for run in runs:
        results[run.arm] = {**arm_result(run, budget), "trace": run.trace}
        print(f"arm {run.arm}: {results[run.arm]['steps']} steps", flush=True)
    return results


def choose_start_step(trace: list, args) -> int:
    start_step = max(1, step_at_cpu(trace, args.fm_share * args.budget))
    print(
        f"twinflow_start_step K = {start_step} (arm A's step after {args.fm_share:.3g} of the "
        f"budget, from its first {trace[-1][0]:.0f} CPU s)",
        flush=True,
    )
    return start_step


def train_all_at_once(args, study: Path) -> tuple[dict, int | None, int]:
    """Every arm at once: A and B first; C and D once A's first `--calibration` CPU seconds give
    its flow-matching rate, so K = that rate x fm_share x budget (extrapolated)."""
    first = [arm for arm in args.arms if arm in ("A", "B")]
    second = [arm for arm in args.arms if arm in ("C", "D")]
    runs = [
        start_arm(arm, arm_config(arm, args, study / "runs", None), study, arm == "A")
        for arm in first
    ]
    start_step, points, pending = None, 0, list(runs)
    while pending:
        time.sleep(POLL_SECONDS)
        pending = [run for run in pending if not watch(run, args.budget)]
        calibrated = runs[0].trace and runs[0].trace[-1][0] >= args.calibration
        if second and start_step is None and (calibrated or runs[0] not in pending):
            start_step, points = choose_start_step(runs[0].trace, args), len(runs[0].trace)
            later = [
                start_arm(arm, arm_config(arm, args, study / "runs", start_step), study, False)
                for arm in second
            ]
            runs, pending = runs + later, pending + later
    return finished_arms(runs, args.budget), start_step, points


class Evaluations:
    """Checkpoints measured in worker processes (one thread each) while later arms still train."""

    def __init__(self, pool, reference_stats, args):
        self.pool, self.reference_stats, self.args = pool, reference_stats, args
        self.jobs, self.rows = {}, []  # path -> future; (grid arm or None, label, path, info)

    def add(self, arm: str | None, label: str, path: str, info: dict) -> None:
        if path not in self.jobs:
            self.jobs[path] = self.pool.submit(
                evaluate_checkpoint,
                path,
                self.reference_stats,
                self.args.num_samples,
                self.args.seed,
                500,
            )
        self.rows.append((arm, label, path, info))

    def add_arms(self, arms: dict, names: list[str], snapshots: Path) -> None:
        """Each arm's final checkpoint, and arm A's snapshot nearest to each other arm's steps."""
        for name in names:
            self.add(name, name, arms[name]["checkpoint"], arms[name])
            if name in self.args.equal_steps:
                snapshot = nearest_snapshot(snapshots, arms[name]["steps"])
                steps = {"steps": int(snapshot.stem[5:])}
                self.add(None, f"A @ {name}'s steps", str(snapshot), steps)

    def collect(self, docs: Path) -> list[dict]:
        """Table rows in the order added; writes the grid of every arm's final checkpoint."""
        rows = []
        for arm, label, path, info in self.rows:
            result = self.jobs[path].result()
            row = {
                "label": label,
                "checkpoint": path,
                "steps": info["steps"],
                "metrics": result["metrics"],
            }
            for key in ("train_cpu_s", "train_wall_s", "setup_cpu_s", "exit_code", "title"):
                if key in info:
                    row[key] = info[key]
            rows.append(row)
            if arm is not None:
                write_grid(docs / f"cifar_study_{arm}.png", result["pictures"])
        return rows


def main(argv: list[str] | None = None) -> dict:
    try:
        return run(checked_args(argv))
    except StudyError as error:
        print(f"cifar_study.py: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_REFUSED) from None


def run(args) -> dict:
    study = Path(args.out)
    study.mkdir(parents=True)
    docs = Path(args.docs) if args.docs else study
    docs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    test_images = load_dataset("folder", args.test_data)[0]
    reference_stats = metrics.compute_statistics(
        torch.from_numpy(test_images), metrics.RandomFeatureNet(), progress=False
    )
    train_images = load_dataset("folder", args.train_data)[0]
    count = min(args.num_samples, len(train_images))
    floor = {**data_floor(train_images, reference_stats, count, args.seed), "num_samples": count}
    first = [arm for arm in args.arms if arm in ("A", "B")]
    second = [arm for arm in args.arms if arm in ("C", "D")]
    tic, start_step, points = time.time(), None, 0
    context = get_context("spawn")
    with ProcessPoolExecutor(args.parallel, mp_context=context, initializer=_one_thread) as pool:
        evaluations = Evaluations(pool, reference_stats, args)
        if args.parallel >= len(args.arms):
            arms, start_step, points = train_all_at_once(args, study)
            evaluations.add_arms(arms, args.arms, study / "snapshots" / "A")
        else:
            arms = train_phase(first, args, study, None)
            evaluations.add_arms(arms, first, study / "snapshots" / "A")
        if second and args.parallel < len(args.arms):
            start_step = choose_start_step(arms["A"]["trace"], args)
            points = len(arms["A"]["trace"])
            arms.update(train_phase(second, args, study, start_step))
            evaluations.add_arms(arms, second, study / "snapshots" / "A")
        training_wall = time.time() - tic
        rows = evaluations.collect(docs)
    summary = {
        "arms": {arm: {k: v for k, v in arms[arm].items() if k != "trace"} for arm in arms},
        "twinflow_start_step": start_step,
        "k_from_trace_points": points,  # K = step_at_cpu(traces["A"][:points], ...)
        "rows": rows,
        "data": floor,
        "budget_cpu_s": args.budget,
        "fm_share": args.fm_share,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "model": args.model,
        "training_wall_s": round(training_wall, 1),
        "total_wall_s": round(time.time() - tic, 1),
        "argv": sys.argv,
        "traces": {arm: arms[arm]["trace"] for arm in arms},
    }
    (study / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = table_markdown(rows, floor)
    commands = "\n".join(
        f"python train.py --config {study / 'configs' / f'arm_{arm}.json'}" for arm in arms
    )
    (study / "results.md").write_text(f"{table}\n\nK = {start_step}\n\n```\n{commands}\n```\n")
    print(table)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
