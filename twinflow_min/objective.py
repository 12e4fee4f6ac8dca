"""The training objective, chosen once per run and called as one line in the loop.

Each objective is a small callable (edm `training/loss.py` style) that draws its own random inputs
from the run's generator and returns the loss terms of one micro-batch:

    terms = objective(model, teacher, x, y, step=step, micro_step=micro_step)  # {"loss", "loss_*"}

- `FlowMatchingObjective`: plain flow matching (TwinFlow off, and the first `twinflow_start_step`
  steps of a TwinFlow run);
- `TwinFlowObjective`: TwinFlow, tutorial or large recipe (`twinflow_min.twinflow.twinflow_losses`,
  docs/math.md#per-sample-losses and docs/math.md#large-recipe).

Draw order per micro-batch (a resumed run replays it exactly, docs/math.md#rng-replay): flow
matching draws z then t; TwinFlow draws everything `sample_training_inputs` returns. Time
convention: see twinflow_min/transport.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from twinflow_min.twinflow import (TwinFlowOptions, flow_matching_loss, sample_training_inputs,
                                   twinflow_losses)


class FlowMatchingObjective:
    """L_FM = mean ell2(F(x_t, t, t) - (z - x)), z ~ N(0, I), t ~ U(0, 1) drawn from `generator`."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, model, teacher, x: Tensor, y, *, step: int,
                 micro_step: int) -> dict[str, Tensor]:
        draw = dict(generator=self.generator, device=x.device, dtype=x.dtype)
        z = torch.randn(x.shape, **draw)  # (B, ...)
        t = torch.rand(x.shape[0], **draw)  # (B,)
        return flow_matching_loss(model, x, y, z=z, t=t)


class TwinFlowObjective:
    """TwinFlow terms from step `start_step` on; plain flow matching before it (issue 19).

    `options` is the run's TwinFlowOptions (built once), `input_options` the keywords of
    `sample_training_inputs`; `y_null` (B,) the null-class labels (None for an unconditional model).
    `trajectory` (a `TrajectoryLog`) records the (t, t_tgt) of every row trained with gradient.
    """

    def __init__(self, generator: torch.Generator, *, options: TwinFlowOptions, input_options: dict,
                 y_null: Tensor | None, accumulation_steps: int, start_step: int, trajectory):
        self.generator, self.options, self.input_options = generator, options, input_options
        self.y_null, self.accumulation_steps = y_null, accumulation_steps
        self.start_step, self.trajectory = start_step, trajectory
        self.flow_matching = FlowMatchingObjective(generator)

    def __call__(self, model, teacher, x: Tensor, y, *, step: int,
                 micro_step: int) -> dict[str, Tensor]:
        if step < self.start_step:
            return self.flow_matching(model, teacher, x, y, step=step, micro_step=micro_step)
        inputs = sample_training_inputs(x, self.generator, **self.input_options,
                                        accumulation_index=micro_step,
                                        accumulation_steps=self.accumulation_steps)
        y_null = None if self.y_null is None else self.y_null[: x.shape[0]]
        terms = twinflow_losses(model, teacher, x, y, y_null=y_null, **inputs, options=self.options)
        self.trajectory.add(inputs, self.options)
        return terms


def choose_objective(cfg, generator: torch.Generator, num_classes: int, device: torch.device,
                     trajectory):
    """The run's objective: flow matching with TwinFlow off, else TwinFlow (twinflow_start_step)."""
    if not cfg.twinflow_enabled:
        return FlowMatchingObjective(generator)
    y_null = None
    if num_classes > 0:
        y_null = torch.full((cfg.train_batch_size,), num_classes, device=device)  # null class id
    return TwinFlowObjective(generator, options=cfg.twinflow_options(),
                             input_options=cfg.input_sampling_options(), y_null=y_null,
                             accumulation_steps=cfg.gradient_accumulation_steps,
                             start_step=cfg.twinflow_start_step, trajectory=trajectory)
