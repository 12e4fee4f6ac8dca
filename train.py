"""Train TwinFlow: a 2-D toy on a laptop CPU, CIFAR-10 from scratch, or fine-tuning of a pretrained
DiT/SiT.

Paper: TwinFlow (arXiv:2512.05150). The loss is `twinflow_min.twinflow.twinflow_losses` (official
`TwinFlow.training_step`, tutorial or large-scale recipe) called through `twinflow_min.objective`,
the teacher is the EMA of the student (`twinflow_min.ema`), samples come from the UCGM sampler at
guidance 0 (`twinflow_min.sampler`). Time convention: see twinflow_min/transport.py.

    python train.py --toy moons                                   # 1-1.5 minutes on a 2-core CPU
    python train.py --dataset cifar10 --data cifar-10-python.tar.gz
    python train.py --config my_simpletuner_config.json --max_train_steps 3
    python train.py --pretrained sit-b-2.safetensors --image-free
    python train.py --resume outputs/toy-moons                    # continue where it stopped

Exit codes: 0 done; 2 a setting, file or folder was refused (nothing trained); 3 the loss, gradient
or weights became non-finite; 4 a checkpoint could not be written; 130 / 143 stopped by Ctrl-C
(SIGINT) / SIGTERM (after a first signal the step is finished and a checkpoint written; a second
stops at once).
"""

from __future__ import annotations

import os
import signal
import sys


def _stopped_while_importing(signum, frame):
    name = signal.Signals(signum).name
    print(f"train.py: stopped by {name} during start-up; nothing was trained or written",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)


if __name__ == "__main__":  # a stop signal while the imports below load: one line, no traceback
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _stopped_while_importing)

import dataclasses  # noqa: E402 (the handlers above come first)
import json
import math

import torch
from tqdm import tqdm

from twinflow_min.checks import CheckpointError, resolve_device
from twinflow_min.config import ConfigError, TrainConfig
from twinflow_min.config_cli import resolve_config_with_notes
from twinflow_min.data_sources import (SetupError, build_data_and_model, check_prediction_type,
                                       check_resume_fits)
from twinflow_min.objective import choose_objective
from twinflow_min.plots import loss_curves_png
from twinflow_min.run_dir import (RunFolderError, check_output_folder, claim_run_folder,
                                  clean_resumed_folder, read_metrics, resume_folder, run_name)
from twinflow_min.train_state import read_checkpoint, restore_rng_states, summary_of
from twinflow_min.training import (SIGNAL_NAMES, Checkpointer, CheckpointWriteError, Interrupted,
                                   StepLog, StopRequest, TrainingDiverged, TrajectoryLog,
                                   choose_precision, describe_schedule, learning_rate, make_teacher,
                                   next_teacher)
from twinflow_min.twinflow import check_model_fits, image_free_batch

EXIT_REFUSED, EXIT_DIVERGED, EXIT_WRITE_FAILED = 2, 3, 4


def train(cfg: TrainConfig, stop: StopRequest) -> dict:
    # ---------------------------------------------------------------- setup: checks before any work
    device = device_of(cfg)
    if cfg.model_type == "lora":
        raise SetupError("model_type = 'lora': LoRA is not available in this build; "
                         "use model_type: full")
    autocast, scaler = choose_precision(cfg.mixed_precision, device)
    resume = read_resume(cfg, device)
    if resume is None:
        check_output_folder(cfg.output_dir, run_name(cfg))
    torch.manual_seed(cfg.seed)  # model initialisation only; every training draw uses `generator`
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    # ---------------------------------------------------------------- data, model, optimizer
    data, model = build_data_and_model(cfg, device)
    check_model(cfg, model, data, resume)
    cfg = with_schedule_horizon(cfg, resume)
    model = model.to(device).train()
    teacher = make_teacher(cfg, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    forward_model = torch.compile(model) if cfg.compile else model
    trajectory = TrajectoryLog()
    objective = choose_objective(cfg, generator, model.config.num_classes, device, trajectory)
    generators = {"train": generator, **data.generators}

    # ---------------------------------------------------------------- run folder and resume
    run_dir = resume["folder"] if resume else claim_run_folder(cfg.output_dir, run_name(cfg))
    checkpoints = Checkpointer(run_dir, cfg, model, optimizer, scaler, data, generators, device)
    start = 0
    if resume is not None:
        start = restore(resume, cfg, model, teacher, optimizer, scaler, data, generators, device)
        checkpoints.last = f"{resume['path']} (step {start})"
    if start == 0:
        teacher.update(model)  # the official update right before step 0's teacher passes

    # ---------------------------------------------------------------- loop
    progress = tqdm(range(start, cfg.max_train_steps), initial=start, total=cfg.max_train_steps,
                    desc=f"train {run_dir.name}", dynamic_ncols=True, disable=None)
    log, done = StepLog(run_dir, cfg, progress), start
    with stop.graceful():
        for step in progress:
            stop.note = f"during step {step + 1}; the last checkpoint is {checkpoints.describe()}"
            terms = accumulate_gradients(cfg, objective, forward_model, teacher.teacher, data,
                                         autocast, scaler, step, checkpoints.last)
            grad_norm = clip_gradients(cfg, model, optimizer, scaler, step, terms, checkpoints.last)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            scaler.step(optimizer)  # fp16: skips the step on inf gradients and lowers the scale
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            teacher = next_teacher(teacher, model, done, cfg)
            log(done, terms, grad_norm, learning_rate(cfg, step))
            periodic_work(cfg, done, data, teacher, validation_nfes(cfg), run_dir, trajectory,
                          checkpoints)
            if stop.requested:
                break
        path = checkpoints.save(done, teacher)
    progress.close()
    return finish(cfg, stop, run_dir, path, done, data, teacher, trajectory)


# ------------------------------------------------------------------------------------------------
# Setup helpers
# ------------------------------------------------------------------------------------------------

def device_of(cfg: TrainConfig) -> torch.device:
    try:
        return resolve_device(cfg.device)
    except ValueError as error:
        raise SetupError(str(error)) from None


def read_resume(cfg: TrainConfig, device: torch.device) -> dict | None:
    """The checkpoint to resume (plus its "folder"), read before any data is loaded; None for a
    fresh run."""
    if not cfg.resume:
        return None
    folder = resume_folder(cfg.resume)
    return {**read_checkpoint(cfg.resume, device=device), "folder": folder}


def check_model(cfg: TrainConfig, model, data, resume: dict | None) -> None:
    """The model agrees with the config (prediction type, what TwinFlow needs of it) and with the
    checkpoint a resume continues; SetupError otherwise."""
    check_prediction_type(cfg, model)
    if cfg.twinflow_enabled:
        try:
            check_model_fits(model, cfg.twinflow_options())
        except ValueError as error:
            raise SetupError(str(error)) from None
    if resume is not None:
        check_resume_fits(resume["path"], resume["model_config"], model, data.sample_shape)


def with_schedule_horizon(cfg: TrainConfig, resume: dict | None) -> TrainConfig:
    """lr_decay_steps resolved once per run: max_train_steps of a fresh run (saved with the run's
    config); on resume the run's saved value (older checkpoints: their max_train_steps)."""
    if cfg.lr_decay_steps is not None:
        return cfg
    if resume is None:
        return dataclasses.replace(cfg, lr_decay_steps=cfg.max_train_steps)
    saved = resume["info"]["train_config"]
    horizon = saved.get("lr_decay_steps") or saved["max_train_steps"]
    return dataclasses.replace(cfg, lr_decay_steps=horizon)


def restore(resume, cfg, model, teacher, optimizer, scaler, data, generators, device) -> int:
    """Load every saved state of a resumed run and tidy its folder; returns the step it continues
    from."""
    try:
        model.load_state_dict(resume["model"])
        if resume["ema"] is not None:
            teacher.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise SetupError(f"--resume {resume['path']}: the checkpoint does not fit this run's model "
                         f"({first_line}); resume with the run's own settings") from None
    restore_rng_states(resume["rng"], generators, device)
    data.load_state_dict(resume["info"]["data_state"])
    if "grad_scaler" in resume["info"]["extra"]:
        scaler.load_state_dict(resume["info"]["extra"]["grad_scaler"])
    step = resume["info"]["step"]
    clean_resumed_folder(resume["folder"], step, summary_of(step, resume["info"]["train_config"]))
    print(f"resumed from {resume['path']} at step {step}")
    print(describe_schedule(cfg, step))
    return step


def validation_nfes(cfg: TrainConfig) -> list[int]:
    if cfg.twinflow_enabled:
        return sorted(set(cfg.validation_nfe) | {cfg.twinflow_target_step_count})
    return [cfg.validation_num_inference_steps]


# ------------------------------------------------------------------------------------------------
# One optimizer step
# ------------------------------------------------------------------------------------------------

def next_training_batch(cfg: TrainConfig, data, model, generator: torch.Generator):
    """(x, y) of one micro-batch: labels dropped to the null class at label_dropout; image-free
    x."""
    x, y = data.next_batch()
    if y is not None and cfg.label_dropout > 0:
        drop = torch.rand(y.shape, generator=generator, device=y.device) < cfg.label_dropout
        y = torch.where(drop, torch.full_like(y, model.config.num_classes), y)  # the null class
    if cfg.twinflow_image_free:
        x = image_free_batch(model, torch.randn(x.shape, generator=generator, device=x.device), y)
    return x, y


def accumulate_gradients(cfg, objective, model, teacher, data, autocast, scaler, step,
                         last_checkpoint) -> dict[str, float]:
    """Backward of every micro-batch of `step`; returns its terms (means over micro-batches)."""
    count, terms = cfg.gradient_accumulation_steps, {}
    for micro_step in range(count):
        x, y = next_training_batch(cfg, data, model, objective.generator)
        with autocast():
            micro_terms = objective(model, teacher, x, y, step=step, micro_step=micro_step)
        for name, value in micro_terms.items():
            terms[name] = terms.get(name, 0.0) + value.item() / count
        if not math.isfinite(terms["loss"]):
            raise TrainingDiverged(step + 1, terms, last_checkpoint)
        scaler.scale(micro_terms["loss"] / count).backward()  # the mean over micro-batches
    return terms


def clip_gradients(cfg, model, optimizer, scaler, step, terms, last_checkpoint) -> float:
    """Unscale (fp16), clip to max_grad_norm (0 = no clip); returns the norm before clipping."""
    scaler.unscale_(optimizer)
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()
    if not math.isfinite(grad_norm) and not scaler.is_enabled():  # fp16: the scaler skips the step
        raise TrainingDiverged(step + 1, {**terms, "grad_norm": grad_norm}, last_checkpoint)
    return grad_norm


def periodic_work(cfg, done, data, teacher, nfes, run_dir, trajectory, checkpoints) -> None:
    """Validation pictures every validation_every steps, a checkpoint every checkpointing_steps."""
    if cfg.validation_every > 0 and done % cfg.validation_every == 0:
        data.validate(teacher.teacher, nfes, run_dir / "validation" / f"step_{done:07d}.png")
        trajectory.write(run_dir / "trajectory_map.png")
    last = done == cfg.max_train_steps  # the final checkpoint is written after the loop
    if cfg.checkpointing_steps > 0 and done % cfg.checkpointing_steps == 0 and not last:
        checkpoints.save(done, teacher)


# ------------------------------------------------------------------------------------------------
# The end of a run
# ------------------------------------------------------------------------------------------------

def finish(cfg, stop, run_dir, path, done, data, teacher, trajectory) -> dict:
    """Figures; on an interrupt the resume line; else the final evaluation and metrics.json."""
    summary = {"run_dir": str(run_dir), "checkpoint": str(path), "step": done}
    history = read_metrics(run_dir)
    if history:
        loss_curves_png(run_dir / "loss_curves.png", history)
    if trajectory.count:
        trajectory.write(run_dir / "trajectory_map.png")
    if stop.requested:
        print(f"stopped by {SIGNAL_NAMES[stop.signum]} after step {done}; checkpoint written to "
              f"{path}. {next_command(cfg, done, run_dir)}")
        return {**summary, "interrupted": True, "exit_code": stop.exit_code}
    stop.note = f"during the final evaluation; training is complete and saved in {path}"
    if cfg.eval_samples > 0:  # teacher.teacher: the EMA weights (use_ema), else the student
        summary.update(data.final_evaluation(teacher.teacher, validation_nfes(cfg), run_dir))
    else:
        print("final evaluation skipped (eval_samples 0); sample.py evaluates the checkpoint later")
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


def next_command(cfg: TrainConfig, done: int, run_dir) -> str:
    if done < cfg.max_train_steps:
        return f"Continue with: python train.py --resume {run_dir}"
    return f"Training is complete; evaluate it with: python sample.py {run_dir}"


def main(argv: list[str] | None = None) -> dict:
    """Run train.py; returns the summary of a completed run, else raises SystemExit with the exit
    code listed in the module docstring after printing one line."""
    stop = StopRequest()
    with stop.installed():
        try:
            cfg, notes = resolve_config_with_notes(argv)
            for note in notes:
                print(f"train.py: note: {note}", file=sys.stderr)
            summary = train(cfg, stop)
        except (ConfigError, SetupError, RunFolderError, CheckpointError) as error:
            fail(error, EXIT_REFUSED)
        except TrainingDiverged as error:
            fail(error, EXIT_DIVERGED)
        except CheckpointWriteError as error:
            fail(error, EXIT_WRITE_FAILED)
        except Interrupted as interrupt:
            name = SIGNAL_NAMES.get(interrupt.signum, f"signal {interrupt.signum}")
            fail(f"stopped at once by {name} {stop.note}", 128 + interrupt.signum)
    if summary.get("interrupted"):
        raise SystemExit(summary["exit_code"])
    return summary


def fail(message, code: int):
    print(f"train.py: error: {message}" if code < 128 else f"train.py: {message}", file=sys.stderr)
    raise SystemExit(code) from None


if __name__ == "__main__":
    main()
