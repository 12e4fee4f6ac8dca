"""The small pieces `train.py` wires together: precision, schedule, teacher, checkpoints, stops.

Kept out of `train.py` so that script reads top to bottom as the training algorithm (DiT `train.py`,
nanoGPT `train.py`, edm `training_loop.py` habits). Nothing here is TwinFlow math: the losses live
in `twinflow.py` (called through `objective.py`), the sampler in `sampler.py`, the data in
`data_sources.py`. Time convention: see twinflow_min/transport.py.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from twinflow_min.data_sources import SetupError
from twinflow_min.distributed import DistributedRun, gather_rank_states
from twinflow_min.ema import EMATeacher
from twinflow_min.lora import LoRATeacher, has_lora
from twinflow_min.lora_training import checkpoint_parts
from twinflow_min.plots import trajectory_map_png
from twinflow_min.run_dir import append_metrics
from twinflow_min.train_state import (
    CHECKPOINT_NAME,
    capture_rng_states,
    first_nonfinite,
    save_checkpoint,
)
from twinflow_min.twinflow import TwinFlowOptions

# --------------------------------------------------------------------------------------------
# Errors and stops
# --------------------------------------------------------------------------------------------

class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient or weight: stop and say where, with every term, instead of
    training on NaN.

    `step` is the 1-based optimizer step; `last_checkpoint` describes the last checkpoint written
    with finite weights (or None).
    """

    def __init__(self, step: int, terms: dict[str, float], last_checkpoint: str | None,
                 what: str = "loss"):
        values = ", ".join(f"{name}={value:.6g}" for name, value in terms.items())
        advice = "Lower the learning rate or set max_grad_norm, then"
        if last_checkpoint is None:
            where = f"no checkpoint was written before it. {advice} start again"
        else:
            where = (f"the last good checkpoint is {last_checkpoint}. {advice} resume from it with "
                     f"--resume")
        super().__init__(f"non-finite {what} at step {step} ({values}); {where}")
        self.step, self.terms, self.last_checkpoint = step, terms, last_checkpoint


class CheckpointWriteError(RuntimeError):
    """The checkpoint of a step could not be written (full disk, read-only folder): one line."""


class Interrupted(KeyboardInterrupt):
    """A stop signal acted on at once: outside the training loop, or the second one inside it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM, the signal a cluster sends before it preempts a job.

    While `graceful()` is active (the training loop) the first signal asks the loop to stop after
    the current step: train.py then writes a checkpoint and prints how to resume. Outside it, or on
    a second signal, `Interrupted` is raised at once; train.py turns it into one line. `note` says
    what a stop at once leaves behind (kept current by train.py). Exit code: 128 + the signal number
    (130 for SIGINT, 143 for SIGTERM). Handlers are only installed in the main thread.
    """

    def __init__(self):
        self.signum: int | None = None  # the signal that asked for a graceful stop
        self.note = "during start-up; nothing was trained or written"
        self._graceful = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)

    def _handle(self, signum, frame) -> None:
        if not self._graceful:
            raise Interrupted(signum)
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        name = SIGNAL_NAMES.get(signum, f"signal {signum}")
        print(f"\n{name}: stopping after this step and writing a checkpoint (again: stop at once)",
              flush=True)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in SIGNAL_NAMES}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextlib.contextmanager
    def graceful(self):
        self._graceful = True
        try:
            yield
        finally:
            self._graceful = False


# --------------------------------------------------------------------------------------------
# Precision, learning rate, teacher
# --------------------------------------------------------------------------------------------

AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_precision(mixed_precision: str, device: torch.device):
    """(autocast context factory, GradScaler) for mixed_precision "no" | "bf16" | "fp16" on
    `device`.

    bf16 runs under torch.autocast on CUDA and CPU; fp16 needs CUDA (its GradScaler guards the small
    range of float16), so it is refused elsewhere. Parameters stay float32 (master weights); the
    model's time embeddings, target arithmetic and losses run in float32 (see twinflow_min/model.py
    and twinflow_min/twinflow.py). The scaler is created with `enabled=` (nanoGPT habit): when
    disabled its scale / unscale_ / step / update pass straight through.
    """
    if mixed_precision == "fp16" and device.type != "cuda":
        raise SetupError(f"mixed_precision = 'fp16' needs a CUDA GPU, but the device is "
                         f"{device.type}; use --mixed_precision bf16 (CPU autocast) or no")
    dtype = AUTOCAST_DTYPES[mixed_precision]
    autocast = functools.partial(torch.autocast, device.type, dtype=dtype,
                                 enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision == "fp16")
    return autocast, scaler


def learning_rate(cfg, step: int) -> float:
    """The learning rate of 0-based `step`: linear warm-up over lr_warmup_steps, then constant, or
    cosine decay to 0 at lr_decay_steps and 0 after it (a pure function of step)."""
    scale = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps > 0 else 1.0
    if cfg.lr_schedule == "cosine":
        horizon = cfg.lr_decay_steps
        scale *= 0.5 * (1 + math.cos(math.pi * min(step, horizon) / horizon))
    return cfg.learning_rate * scale


def describe_schedule(cfg, start_step: int) -> str:
    """One line on what the learning-rate schedule does from `start_step` on (printed on resume)."""
    if cfg.lr_schedule == "constant":
        return f"learning rate: constant {cfg.learning_rate:g} (from the run)"
    horizon, end = cfg.lr_decay_steps, cfg.max_train_steps
    text = f"learning rate: cosine from {cfg.learning_rate:g} to 0 over {horizon} steps"
    if end <= horizon:
        return f"{text}; now at step {start_step} of {end}"
    return (f"{text}: steps {max(horizon, start_step) + 1}-{end} train at lr 0; pass "
            f"--lr_decay_steps {end} to stretch it")


def make_teacher(cfg, model: torch.nn.Module) -> EMATeacher:
    """The teacher F^- (docs/math.md#ema-teacher): the student's EMA, or the student (decay 0).
    A LoRA model's teacher averages only its trainable tensors (twinflow_min/lora.py)."""
    kind = LoRATeacher if has_lora(model) else EMATeacher
    if cfg.use_ema:
        return kind(model, decay=cfg.ema_decay, warmup=cfg.ema_warmup)
    if cfg.twinflow_enabled:
        print("note: no EMA teacher; the student is its own teacher "
              "(twinflow_allow_no_ema_teacher)")
    return kind(model, decay=0.0)


def next_teacher(teacher: EMATeacher, model: torch.nn.Module, done: int, cfg) -> EMATeacher:
    """The teacher for step `done` (0-based), updated after step `done` - 1.

    The official order updates the EMA right before a step's teacher passes; doing it at the end of
    the previous step is the same sequence and keeps every between-steps state (checkpoint, Ctrl-C)
    complete, so a resumed run continues bit for bit. At `twinflow_start_step` K > 0 the teacher is
    re-initialised from the student (a fresh EMA with its warm-up), as at step 0 of a TwinFlow run.
    """
    start = cfg.twinflow_start_step if cfg.twinflow_enabled else 0
    if done == start and start > 0:
        teacher = make_teacher(cfg, model)
        print(f"step {done}: TwinFlow terms on; the EMA teacher starts again from the student")
    teacher.update(model)
    return teacher


# --------------------------------------------------------------------------------------------
# Checkpoints and logs
# --------------------------------------------------------------------------------------------

class Checkpointer:
    """Writes the run's checkpoint; remembers the last one written with finite weights.

    Before every write the student and teacher weights are checked: a checkpoint never holds a NaN
    or an infinity (TrainingDiverged names the last good one instead). A write that fails (full
    disk, read-only folder) raises CheckpointWriteError naming the step and the last good
    checkpoint. Under torchrun every rank calls `save`: the ranks' generator and data states are
    gathered and rank 0 alone writes them (twinflow_min/distributed.py); the others wait for it.
    """

    def __init__(self, run_dir: Path, cfg, model, optimizer, scaler, data, generators, device,
                 lora_base=None, run: DistributedRun | None = None):
        self.run_dir, self.cfg, self.model = run_dir, cfg, model
        self.run = run or DistributedRun(device=device)
        self.lora_base = lora_base  # a LoRA run (lora_training.LoRABase): save only its adapters
        self.optimizer, self.scaler, self.data = optimizer, scaler, data
        self.generators, self.device = generators, device
        self.last: str | None = None

    def describe(self) -> str:
        return self.last if self.last is not None else "none (no checkpoint was written yet)"

    def save(self, step: int, teacher: EMATeacher) -> Path:
        rng_states, data_states = gather_rank_states(
            self.run, capture_rng_states(self.generators, self.device), self.data.state_dict())
        with self.run.guarded():
            if self.run.is_main:
                self.write(step, teacher, rng_states, data_states)
        self.last = f"{self.run_dir / CHECKPOINT_NAME} (step {step})"
        return self.run_dir / CHECKPOINT_NAME

    def write(self, step: int, teacher: EMATeacher, rng_states: dict, data_states: list) -> None:
        weights = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        weights.update({f"ema.{k}": v for k, v in teacher.teacher.state_dict().items()})
        bad = first_nonfinite(weights)
        if bad is not None:
            raise TrainingDiverged(step, {bad: math.nan}, self.last,
                                   what="weights, so no checkpoint was written with them,")
        extra = {"grad_scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else None
        if self.run.world_size > 1:  # absent: 1 process (every checkpoint before issue 15)
            extra = {**(extra or {}), "world_size": self.run.world_size,
                     "rank_data_states": data_states}
        parts = checkpoint_parts(self.model, self.lora_base) if self.lora_base else {}
        try:
            save_checkpoint(self.run_dir, model=self.model, ema=teacher, optimizer=self.optimizer,
                            step=step, train_config=self.cfg.to_dict(),
                            data_state=self.data.state_dict(), rng_states=rng_states,
                            extra=extra, **parts)
        except OSError as error:
            raise CheckpointWriteError(f"cannot write the checkpoint of step {step} in "
                                       f"{self.run_dir} ({error.strerror or error}); the last good "
                                       f"checkpoint is {self.describe()}") from None


class StepLog:
    """metrics.jsonl rows every `log_every` steps and at the last step; the progress-bar postfix."""

    def __init__(self, run_dir: Path, cfg, progress, run: DistributedRun | None = None):
        self.run_dir, self.cfg, self.progress = run_dir, cfg, progress
        self.run = run or DistributedRun()
        self.tic = time.time()

    def __call__(self, done: int, terms: dict[str, float], grad_norm: float, lr: float) -> None:
        due = done % self.cfg.log_every == 0
        if not due and done != self.cfg.max_train_steps:
            return
        terms = self.run.mean(terms)  # under torchrun: the terms of the whole global batch
        if not self.run.is_main:
            return
        row = {"step": done, **terms, "grad_norm": grad_norm, "lr": lr,
               "steps_per_s": self.cfg.log_every / max(time.time() - self.tic, 1e-9)}
        self.tic = time.time()
        append_metrics(self.run_dir, row)
        self.progress.set_postfix_str(describe_terms(terms))


def describe_terms(terms: dict[str, float]) -> str:
    """Short tqdm postfix: 'loss 0.123 base 0.1 adv 0.02 ...'."""
    return " ".join(f"{name.removeprefix('loss_') if name != 'loss' else 'loss'} {value:.4g}"
                    for name, value in terms.items())


class TrajectoryLog:
    """(t, t_tgt) of the rows the network was trained on, for the trajectory map.

    Both branches are kept: real rows t >= 0 and fake (adversarial) rows t < 0. At most `per_call`
    rows are kept per step, and the log is thinned uniformly once it holds more than `max_points`.
    """

    def __init__(self, per_call: int = 64, max_points: int = 40000):
        self.per_call, self.max_points = per_call, max_points
        self.t: list[Tensor] = []
        self.t_tgt: list[Tensor] = []
        self.count = 0

    def add(self, inputs: dict, options: TwinFlowOptions) -> None:
        t, t_tgt = inputs["t"][: self.per_call], inputs["t_tgt"][: self.per_call]
        rows_t, rows_tgt = [t], [t_tgt]  # L_base rows (large recipe: t carries the adv rows' sign)
        if options.recipe == "tutorial":
            if options.realvel_weight > 0:
                rows_t.append(t)  # the real velocity F(x_t, t, t), docs/math.md#real-velocity
                rows_tgt.append(t)
            if options.adversarial_enabled:
                one = t[:1]
                # F(z, 1, 0) (docs/math.md#one-step-generator) and L_adv's F(x_fake_t, -t, -t)
                # (docs/math.md#adversarial-loss)
                rows_t += [torch.ones_like(one), -t]
                rows_tgt += [torch.zeros_like(one), -t]
        self.t.append(torch.cat(rows_t).float().cpu())
        self.t_tgt.append(torch.cat(rows_tgt).float().cpu())
        self.count += sum(r.numel() for r in rows_t)
        if self.count > self.max_points:
            t_all, tgt_all = torch.cat(self.t)[::2], torch.cat(self.t_tgt)[::2]
            self.t, self.t_tgt, self.count = [t_all], [tgt_all], t_all.numel()

    def write(self, path: Path) -> Path | None:
        """The map as a PNG at `path`; nothing (None) while no TwinFlow row was logged yet
        (flow matching before twinflow_start_step logs none)."""
        if not self.count:
            return None
        return trajectory_map_png(path, torch.cat(self.t), torch.cat(self.t_tgt),
                                  title=f"(t, t_tgt) of the rows trained with gradient "
                                        f"({self.count} shown)")
