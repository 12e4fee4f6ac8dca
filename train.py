"""Train TwinFlow: a 2-D toy on a laptop CPU, CIFAR-10 from scratch, or fine-tuning of a pretrained DiT/SiT.

Paper: TwinFlow (arXiv:2512.05150). The loss is `twinflow_min.twinflow.twinflow_losses` (official
`TwinFlow.training_step`, tutorial or large-scale recipe), the teacher is the EMA of the student
(`twinflow_min.ema`), samples come from the UCGM sampler at guidance 0 (`twinflow_min.sampler`).

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake branch.

    python train.py --toy moons                                   # 1-1.5 minutes on a 2-core CPU
    python train.py --dataset cifar10 --data cifar-10-python.tar.gz
    python train.py --config my_simpletuner_config.json --max_train_steps 3
    python train.py --pretrained sit-b-2.safetensors --image-free
    python train.py --resume outputs/toy-moons                    # continue exactly where it stopped

Reads top to bottom: setup -> data -> model -> EMA -> optimizer -> resume -> loop -> final evaluation.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from twinflow_min.config import ConfigError, TrainConfig
from twinflow_min.config_cli import resolve_config
from twinflow_min.ema import EMATeacher
from twinflow_min.train_state import capture_rng_states, read_checkpoint, restore_rng_states, save_checkpoint
from twinflow_min.plots import loss_curves_png
from twinflow_min.training import (SetupError, StopRequest, TrainingDiverged, TrajectoryLog, build_data_and_model,
                                   describe_terms, make_run_dir)
from twinflow_min.twinflow import flow_matching_loss, image_free_batch, sample_training_inputs, twinflow_losses


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: TrainConfig) -> dict:
    # ---------------------------------------------------------------- setup
    device = select_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls; time arithmetic stays fp32
        torch.backends.cudnn.allow_tf32 = True
    use_autocast = cfg.mixed_precision != "no" and device.type == "cuda"
    if cfg.mixed_precision != "no" and not use_autocast:
        print(f"note: mixed_precision={cfg.mixed_precision} is ignored on {device.type}; training in float32")
    autocast_dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
    autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if use_autocast else nullcontext
    scaler = torch.amp.GradScaler(device.type) if (use_autocast and cfg.mixed_precision == "fp16") else None
    torch.manual_seed(cfg.seed)  # model initialisation only; every training draw uses `generator` below
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    # ---------------------------------------------------------------- data and model
    data, model = build_data_and_model(cfg, device)
    model = model.to(device)
    run_dir = make_run_dir(cfg)  # after the data and model load: a setup error leaves no empty run folder
    model.train()
    num_classes = model.config.num_classes
    y_null = None if num_classes == 0 else torch.full((cfg.train_batch_size,), num_classes, device=device)

    # ---------------------------------------------------------------- EMA teacher and optimizer
    ema = None
    if cfg.use_ema:
        ema = EMATeacher(model, decay=cfg.ema_decay, warmup=cfg.ema_warmup)
    elif cfg.twinflow_enabled:
        ema = EMATeacher(model, decay=0.0)  # allowed by the config: the student is its own teacher
        print("note: no EMA teacher; the student is its own teacher (twinflow_allow_no_ema_teacher)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
    forward_model = torch.compile(model) if cfg.compile else model

    # ---------------------------------------------------------------- resume
    start_step = 0
    generators = {"train": generator, **data.generators}
    if cfg.resume:
        state = read_checkpoint(cfg.resume, device=device)
        model.load_state_dict(state["model"])
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_states(state["rng"], generators, device)
        data.load_state_dict(state["info"]["data_state"])
        if scaler is not None and "grad_scaler" in state["info"]["extra"]:
            scaler.load_state_dict(state["info"]["extra"]["grad_scaler"])
        start_step = state["info"]["step"]
        print(f"resumed from {state['path']} at step {start_step}")

    def checkpoint(step: int) -> Path:
        return save_checkpoint(run_dir, model=model, ema=ema, optimizer=optimizer, step=step,
                               train_config=cfg.to_dict(), data_state=data.state_dict(),
                               rng_states=capture_rng_states(generators, device),
                               extra={"grad_scaler": scaler.state_dict()} if scaler is not None else None)

    options = cfg.twinflow_options()
    input_options = cfg.input_sampling_options()
    trajectory = TrajectoryLog()
    last_checkpoint = None
    metrics_file = (run_dir / "metrics.jsonl").open("a")
    validation_nfes = sorted(set(cfg.validation_nfe) | {cfg.twinflow_target_step_count}) \
        if cfg.twinflow_enabled else [cfg.validation_num_inference_steps]
    if cfg.twinflow_enabled and cfg.validation_guidance != 0.0:
        print(f"note: validation_guidance={cfg.validation_guidance} is forced to 0.0: TwinFlow bakes "
              f"guidance into training (enhanced_ratio) and samples at guidance 0")

    def learning_rate(step: int) -> float:
        """Linear warm-up, then constant or cosine decay to 0 at max_train_steps (a pure function of step)."""
        scale = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps > 0 else 1.0
        if cfg.lr_schedule == "cosine":
            scale *= 0.5 * (1 + math.cos(math.pi * step / cfg.max_train_steps))
        return cfg.learning_rate * scale

    # ---------------------------------------------------------------- loop
    # The EMA teacher is updated once per optimizer step, right before the step's teacher passes (official
    # order, reference §2.10). Doing that update at the end of the previous step is the same sequence and keeps
    # every between-steps state (checkpoint, Ctrl-C) consistent, so a resumed run continues bit for bit.
    if ema is not None and start_step == 0:
        ema.update(model)
    stop = StopRequest()
    progress = tqdm(range(start_step, cfg.max_train_steps), initial=start_step, total=cfg.max_train_steps,
                    desc=f"train {run_dir.name}", dynamic_ncols=True, disable=None)
    tic, done = time.time(), start_step
    with stop.on_interrupt():
        for step in progress:
            teacher = ema.teacher if ema is not None else model
            step_terms: dict[str, float] = {}
            for _ in range(cfg.gradient_accumulation_steps):
                x, y = data.next_batch()
                if y is not None and cfg.label_dropout > 0:
                    drop = torch.rand(y.shape, generator=generator, device=device) < cfg.label_dropout
                    y = torch.where(drop, torch.full_like(y, num_classes), y)  # null class: real unconditional branch
                if cfg.twinflow_image_free:
                    x = image_free_batch(forward_model, torch.randn(x.shape, generator=generator, device=device), y)
                with autocast():
                    if cfg.twinflow_enabled:
                        inputs = sample_training_inputs(x, generator, **input_options)
                        terms = twinflow_losses(forward_model, teacher, x, y, y_null=y_null[: x.shape[0]]
                                                if y_null is not None else None, **inputs, **options)
                        trajectory.add(inputs, options)
                    else:
                        z = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
                        t = torch.rand(x.shape[0], generator=generator, device=device, dtype=x.dtype)
                        terms = flow_matching_loss(forward_model, x, y, z=z, t=t)
                loss = terms["loss"] / cfg.gradient_accumulation_steps  # accumulation: the mean over micro-batches
                for name, value in terms.items():
                    step_terms[name] = step_terms.get(name, 0.0) + value.item() / cfg.gradient_accumulation_steps
                if not math.isfinite(step_terms["loss"]):
                    raise TrainingDiverged(step, step_terms, last_checkpoint)
                (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm
                                                       if cfg.max_grad_norm > 0 else float("inf"))
            if not torch.isfinite(grad_norm) and scaler is None:
                raise TrainingDiverged(step, {**step_terms, "grad_norm": grad_norm.item()}, last_checkpoint)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step)
            if scaler is not None:
                scaler.step(optimizer)  # fp16: skips the step on inf gradients and lowers the scale
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)  # = the official update before the next step's teacher passes
            done = step + 1

            if done % cfg.log_every == 0 or done == cfg.max_train_steps:
                row = {"step": done, **step_terms, "grad_norm": grad_norm.item(), "lr": learning_rate(step),
                       "steps_per_s": cfg.log_every / max(time.time() - tic, 1e-9)}
                tic = time.time()
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                progress.set_postfix_str(describe_terms(step_terms))
            if cfg.validation_every > 0 and done % cfg.validation_every == 0:
                data.validate(ema.teacher if ema is not None else model, validation_nfes,
                              run_dir / "validation" / f"step_{done:07d}.png")
                trajectory.write(run_dir / "trajectory_map.png")
            if cfg.checkpointing_steps > 0 and done % cfg.checkpointing_steps == 0 and done < cfg.max_train_steps:
                last_checkpoint = checkpoint(done)
            if stop.requested:
                break
    progress.close()
    metrics_file.close()

    # ---------------------------------------------------------------- final checkpoint and evaluation
    path = checkpoint(done)
    summary = {"run_dir": str(run_dir), "checkpoint": str(path), "step": done}
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    if history:
        loss_curves_png(run_dir / "loss_curves.png", history)
    if trajectory.count:
        trajectory.write(run_dir / "trajectory_map.png")
    if done < cfg.max_train_steps:
        print(f"interrupted after step {done}; checkpoint written to {path}. Continue with: "
              f"python train.py --resume {run_dir}")
        return {**summary, "interrupted": True}
    sampling_model = ema.teacher if (ema is not None and cfg.use_ema) else model
    summary.update(data.final_evaluation(sampling_model, validation_nfes, run_dir, cfg))
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    try:
        cfg = resolve_config(argv)
    except ConfigError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return train(cfg)
    except SetupError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
