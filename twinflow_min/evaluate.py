"""Evaluation during and after training: few-step samples, the toy energy distance, image grids.

Paper: TwinFlow (arXiv:2512.05150) evaluates 1/2/4-NFE sampling with the UCGM sampler at guidance 0
(official `inference.py`; docs/math.md#ucgm-sampler and docs/math.md#sampler-presets). This module
only wires `sampler.py`, `metrics.py` and `plots.py` together; it holds no math of its own. Time
convention: see twinflow_min/transport.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from twinflow_min.data import sample_toy
from twinflow_min.metrics import energy_distance
from twinflow_min.plots import image_grid_png, scatter_png
from twinflow_min.sampler import preset_for_nfe, ucgm_sample

# A 50-step Euler ODE on the instantaneous velocity (mul style, no re-noising): the multi-step
# reference.
ODE_STEPS = 50
TOY_EVAL_SEED = 777  # seed of the toy evaluation's noise, sampler noise and data (any fixed value)
ODE_OPTIONS = dict(steps=ODE_STEPS, style="mul", stochastic_ratio=0.0, boundary_gaps=(0.0, 0.0))


def sampler_options(nfe: int | str) -> dict:
    """ucgm_sample keywords for an NFE count (official 1/2/4-NFE presets) or "ode" (50-step ODE)."""
    return dict(ODE_OPTIONS) if nfe == "ode" else preset_for_nfe(int(nfe))


@torch.no_grad()
def generate(model, z: Tensor, nfe: int | str, *, y: Tensor | None = None,
             generator: torch.Generator | list[torch.Generator] | None = None) -> Tensor:
    """Samples from noise z with `nfe` network evaluations (or the 50-step ODE for nfe="ode")."""
    was_training = model.training
    model.eval()
    try:
        return ucgm_sample(model, z, y=y, generator=generator, **sampler_options(nfe))
    finally:
        model.train(was_training)


def _label(nfe: int | str) -> str:
    return f"{ODE_STEPS}-step ODE" if nfe == "ode" else f"{nfe} NFE"


@torch.no_grad()
def evaluate_toy(model, dataset: str, *, num: int = 4000, seed: int = 0,
                 device: str | torch.device = "cpu", nfes=(1, 2, 4, "ode"),
                 out_dir: str | Path | None = None) -> dict:
    """Energy distance between `num` samples and `num` fresh data points per NFE (+ PNG figures).

    The noise, the sampler noise and the reference data come from generators seeded by `seed`, so
    the numbers are reproducible and independent of the training RNG.
    """
    noise_gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num, 2, generator=noise_gen).to(device)
    reference = sample_toy(dataset, num, torch.Generator().manual_seed(seed + 1))
    results, panels = {}, []
    for nfe in nfes:
        sampler_gen = torch.Generator(device=device).manual_seed(seed + 2)
        samples = generate(model, z, nfe, generator=sampler_gen).float().cpu()
        key = "energy_distance_ode50" if nfe == "ode" else f"energy_distance_nfe{nfe}"
        results[key] = energy_distance(samples, reference)
        panels.append((f"{_label(nfe)}  ED={results[key]:.4f}",
                       {"data": reference, "samples": samples}))
        if out_dir is not None and nfe != "ode":
            scatter_png(Path(out_dir) / f"samples_nfe{nfe}.png", [panels[-1]],
                        title=f"{dataset}: {_label(nfe)} samples vs data")
    if out_dir is not None:
        scatter_png(Path(out_dir) / "samples_multistep.png", panels,
                    title=f"{dataset}: few-step vs {ODE_STEPS}-step ODE "
                          f"(energy distance to fresh data)")
    results["num_samples"] = num
    return results


@torch.no_grad()
def validation_grid(model, z: Tensor, y: Tensor | None, nfes, path: str | Path) -> Path:
    """One row of images per NFE from the same noise and labels (guidance 0: CFG is trained in)."""
    rows = []
    for nfe in nfes:
        sampler_gen = torch.Generator(device=z.device).manual_seed(0)
        rows.append(generate(model, z, nfe, y=y, generator=sampler_gen).float().clamp(-1, 1).cpu())
    images = torch.cat(rows)  # (len(nfes) * n, C, H, W)
    return image_grid_png(path, images, nrow=z.shape[0], labels=[_label(n) for n in nfes])
