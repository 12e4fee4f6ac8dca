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
    torchrun --standalone --nproc_per_node 8 train.py --config ...  # DDP (distributed.py)

Exit codes: 0 done; 2 a setting, file or folder was refused (nothing trained); 3 the loss, gradient
or weights became non-finite; 4 a checkpoint could not be written; 130 / 143 stopped by Ctrl-C
(SIGINT) / SIGTERM (after a first signal the step is finished and a checkpoint written; a second
stops at once); 1 another rank of a torchrun run failed with an unexpected error (under torchrun
every rank exits with the code of the error that stopped the run; rank 0 prints it).
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
from pathlib import Path

import torch
from tqdm import tqdm

from twinflow_min.checks import EXIT_REFUSED, CheckpointError, resolve_device
from twinflow_min.config import ConfigError, TrainConfig
from twinflow_min.config_cli import resolve_config_with_notes
from twinflow_min.data_sources import (SetupError, build_data_and_model, check_prediction_type,
                                       check_resume_fits)
from twinflow_min.distributed import (DistributedRun, PeerFailed, check_world_size, launched_rank,
                                      micro_step_sync, rank_rng_states, reported_by_rank_0,
                                      start_distributed, stdout_of_rank_0_only, unwrap, wrap_loss)
from twinflow_min.lora_training import (add_adapters, load_model_state, lora_base,
                                        optimized_parameters)
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

EXIT_FAILED, EXIT_DIVERGED, EXIT_WRITE_FAILED = 1, 3, 4  # EXIT_REFUSED: checks.py
EXIT_OF_KIND = {"ConfigError": EXIT_REFUSED, "SetupError": EXIT_REFUSED, "RunFolderError":
                EXIT_REFUSED, "CheckpointError": EXIT_REFUSED, "TrainingDiverged": EXIT_DIVERGED,
                "CheckpointWriteError": EXIT_WRITE_FAILED}  # another rank's error -> exit code


def train(cfg: TrainConfig, stop: StopRequest, run: DistributedRun | None = None) -> dict:
    # ---------------------------------------------------------------- setup: checks before any work
    run = run or DistributedRun(device=device_of(cfg))  # torchrun: this process's rank and device
    device = run.device
    autocast, scaler = choose_precision(cfg.mixed_precision, device)
    resume = read_resume(cfg, device, run)
    base = lora_base(cfg, resume)  # model_type lora: the base file, hashed once; else None
    if resume is None and run.is_main:
        check_output_folder(cfg.output_dir, run_name(cfg))
    torch.manual_seed(cfg.seed)  # model initialisation only (the same on every rank)
    generator = torch.Generator(device=device).manual_seed(run.seed(cfg.seed))  # rank 0: cfg.seed

    # ---------------------------------------------------------------- data, model, optimizer
    rank_data = dataclasses.replace(cfg, seed=run.seed(cfg.seed))  # this rank's data order
    data, model = build_data_and_model(rank_data, device)
    if base is not None:
        add_adapters(cfg, model)  # only the adapters and the TwinFlow embedders train
    check_model(cfg, model, data, resume)
    cfg = with_schedule_horizon(cfg, resume)
    model = model.to(device).train()
    if run.rank > 0:  # the global stream (e.g. dropout masks) differs per rank too
        torch.manual_seed(run.seed(cfg.seed))
    teacher = make_teacher(cfg, model)
    optimizer = torch.optim.AdamW(optimized_parameters(model), lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    forward_model = torch.compile(model) if cfg.compile else model
    trajectory = TrajectoryLog()
    objective = choose_objective(cfg, generator, model.config.num_classes, device, trajectory)
    generators = {"train": generator, **data.generators}

    # ---------------------------------------------------------------- run folder and resume
    run_dir = resume["folder"] if resume else claim_folder(cfg, run)
    checkpoints = Checkpointer(run_dir, cfg, model, optimizer, scaler, data, generators, device,
                               lora_base=base, run=run)
    start = 0
    if resume is not None:
        start = restore(resume, cfg, model, teacher, optimizer, scaler, data, generators, run)
        checkpoints.last = f"{resume['path']} (step {start})"
    if start == 0:
        teacher.update(model)  # the official update right before step 0's teacher passes
    loss_module = wrap_loss(forward_model, objective, run)  # DDP under torchrun (distributed.py)
    print_global_batch(cfg, run)

    # ---------------------------------------------------------------- loop
    progress = tqdm(range(start, cfg.max_train_steps), initial=start, total=cfg.max_train_steps,
                    desc=f"train {run_dir.name}", dynamic_ncols=True,
                    disable=None if run.is_main else True)
    log, done = StepLog(run_dir, cfg, progress, run), start
    with stop.graceful():
        for step in progress:
            stop.note = f"during step {step + 1}; the last checkpoint is {checkpoints.describe()}"
            terms = accumulate_gradients(cfg, loss_module, teacher.teacher, data, autocast,
                                         scaler, step, checkpoints.last, run)
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
            if stop_agreed(stop, run):
                break
        path = checkpoints.save(done, teacher)
    progress.close()
    return finish(cfg, stop, run_dir, path, done, data, teacher, trajectory, run)


# ------------------------------------------------------------------------------------------------
# Setup helpers
# ------------------------------------------------------------------------------------------------

def device_of(cfg: TrainConfig) -> torch.device:
    try:
        return resolve_device(cfg.device)
    except ValueError as error:
        raise SetupError(str(error)) from None


def read_resume(cfg: TrainConfig, device: torch.device,
                run: DistributedRun) -> dict | None:
    """The checkpoint to resume (plus its "folder"), read before any data is loaded; None for a
    fresh run."""
    if not cfg.resume:
        return None
    folder = resume_folder(cfg.resume)
    resume = {**read_checkpoint(cfg.resume, device=device), "folder": folder}
    # a run resumes with the number of processes it was trained with (distributed.py)
    check_world_size(resume["info"]["extra"].get("world_size", 1), run, resume["path"])
    step = resume["info"]["step"]
    if step > cfg.max_train_steps:
        raise SetupError(f"{resume['path']} is at step {step}, past max_train_steps = "
                         f"{cfg.max_train_steps}: nothing to train; "
                         f"pass a larger --max_train_steps")
    return resume


def claim_folder(cfg: TrainConfig, run: DistributedRun) -> Path:
    """Rank 0 claims a fresh run folder (atomically, run_dir.py); every rank learns its name."""
    with run.guarded():
        claimed = claim_run_folder(cfg.output_dir, run_name(cfg)) if run.is_main else None
    return Path(run.gather(str(claimed))[0])


def print_global_batch(cfg: TrainConfig, run: DistributedRun) -> None:
    batch, count = cfg.train_batch_size, cfg.gradient_accumulation_steps
    print(f"global batch: {batch} per process x {run.world_size} process(es) x {count} "
          f"accumulation step(s) = {batch * run.world_size * count} samples per optimizer step")


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


def restore(resume, cfg, model, teacher, optimizer, scaler, data, generators, run) -> int:
    """Load every saved state of a resumed run and tidy its folder; returns the step it continues
    from."""
    try:
        load_model_state(model, resume["model"])  # a LoRA run: only its trainable tensors
        if resume["ema"] is not None:
            teacher.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise SetupError(f"--resume {resume['path']}: the checkpoint does not fit this run's model "
                         f"({first_line}); resume with the run's own settings") from None
    extra = resume["info"]["extra"]  # this rank's generators and data position (distributed.py)
    restore_rng_states(rank_rng_states(resume["rng"], run.rank), generators, run.device)
    data.load_state_dict(extra["rank_data_states"][run.rank] if run.rank else
                         resume["info"]["data_state"])
    if "grad_scaler" in resume["info"]["extra"]:
        scaler.load_state_dict(resume["info"]["extra"]["grad_scaler"])
    step = resume["info"]["step"]
    if run.is_main:
        clean_resumed_folder(resume["folder"], step,
                             summary_of(step, resume["info"]["train_config"]))
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


def accumulate_gradients(cfg, loss_module, teacher, data, autocast, scaler, step,
                         last_checkpoint, run: DistributedRun) -> dict[str, float]:
    """Backward of every micro-batch of `step`; returns its terms (means over micro-batches).

    `loss_module` is the objective as one module call (DDP under torchrun: gradients all-reduced
    in the last micro-step's backward only). Every rank checks its batch and its loss before the
    backward, so a failure on one rank stops all of them (twinflow_min/distributed.py).
    """
    parts, count, terms = unwrap(loss_module), cfg.gradient_accumulation_steps, {}
    for micro_step in range(count):
        with run.guarded():
            x, y = next_training_batch(cfg, data, parts.student, parts.objective.generator)
        with micro_step_sync(loss_module, micro_step, count):
            with run.guarded():
                with autocast():
                    micro_terms = loss_module(teacher, x, y, step, micro_step)
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
    """Validation pictures every validation_every steps (rank 0), a checkpoint every
    checkpointing_steps."""
    run = checkpoints.run
    if cfg.validation_every > 0 and done % cfg.validation_every == 0:
        with run.guarded():  # rank 0 draws; the other ranks wait for it here
            if run.is_main:
                picture = run_dir / "validation" / f"step_{done:07d}.png"
                data.validate(teacher.teacher, nfes, picture)
                trajectory.write(run_dir / "trajectory_map.png")
    last = done == cfg.max_train_steps  # the final checkpoint is written after the loop
    if cfg.checkpointing_steps > 0 and done % cfg.checkpointing_steps == 0 and not last:
        checkpoints.save(done, teacher)


# ------------------------------------------------------------------------------------------------
# The end of a run
# ------------------------------------------------------------------------------------------------

def stop_agreed(stop: StopRequest, run: DistributedRun) -> bool:
    """True when Ctrl-C / SIGTERM reached any rank: every rank then stops after the same step."""
    if not run.any(stop.requested):
        return False
    stop.signum = stop.signum or next(signum for signum in run.gather(stop.signum) if signum)
    return True


def finish(cfg, stop, run_dir, path, done, data, teacher, trajectory, run) -> dict:
    """Figures; on an interrupt the resume line; else the final evaluation and metrics.json (all
    on rank 0: the other ranks are done once the last checkpoint is written)."""
    summary = {"run_dir": str(run_dir), "checkpoint": str(path), "step": done}
    if not run.is_main:
        interrupted = {"interrupted": True, "exit_code": stop.exit_code} if stop.requested else {}
        return {**summary, "rank": run.rank, **interrupted}
    history = read_metrics(run_dir)
    if history:
        loss_curves_png(run_dir / "loss_curves.png", history)
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
    code listed in the module docstring after printing one line (under torchrun: rank 0 prints
    what every rank stopped on; the other ranks print nothing to stdout)."""
    stop, run = StopRequest(), None
    with stop.installed(), stdout_of_rank_0_only():
        try:
            cfg, notes = resolve_config_with_notes(argv)
            for note in notes if launched_rank() == 0 else []:
                print(f"train.py: note: {note}", file=sys.stderr)
            run = start_distributed(cfg.device)
            summary = train(cfg, stop, run)
        except (ConfigError, SetupError, RunFolderError, CheckpointError) as error:
            fail(error, EXIT_REFUSED)
        except TrainingDiverged as error:
            fail(error, EXIT_DIVERGED)
        except CheckpointWriteError as error:
            fail(error, EXIT_WRITE_FAILED)
        except PeerFailed as error:
            fail(error, EXIT_OF_KIND.get(error.kind, EXIT_FAILED))
        except Interrupted as interrupt:
            name = SIGNAL_NAMES.get(interrupt.signum, f"signal {interrupt.signum}")
            fail(f"stopped at once by {name} {stop.note}", 128 + interrupt.signum)
        finally:
            if run is not None:
                run.close()
    if summary.get("interrupted"):
        raise SystemExit(summary["exit_code"])
    return summary


def fail(error, code: int):
    """Print one line (rank 0; a rank > 0 only for an error rank 0 cannot have seen) and exit."""
    rank = launched_rank()
    printed_by_rank_0 = reported_by_rank_0(error) or isinstance(error, ConfigError) or code > 128
    if rank == 0 or not printed_by_rank_0:
        where = f"rank {rank}: " if rank else ""
        text = f"train.py: error: {where}{error}" if code < 128 else f"train.py: {where}{error}"
        print(text, file=sys.stderr)
    raise SystemExit(code) from None


if __name__ == "__main__":
    main()
