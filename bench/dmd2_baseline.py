"""A DMD2-style distillation step, written here ONLY as a memory and time baseline (bench_memory).

Not part of the library and not a DMD2 implementation to train with: it reproduces the structure of
one DMD2 iteration (Yin et al. 2024, arXiv:2405.14867; the EDM trainer of tianweiy/DMD2) with this
project's DiT in flow-matching form, so that its cost can be set next to TwinFlow's on one network:

  networks    generator G (trainable), fake score (trainable), real score (frozen teacher); all
              three start as copies of one network (DMD2 initialises both trainable nets from the
              teacher)
  optimizers  two AdamW, one for G and one for the fake score; no EMA (DMD2's EDM trainer keeps
              none)
  generator turn (DMD2 runs it every dfake_gen_update_ratio-th iteration; this step always does,
              the iteration with the highest memory):
      x_fake = z - F_G(z, 1, 0)                                   one-step sample, with gradient
      x_s = (1 - s) x_fake + s n,  s ~ U(0.02, 0.98)              noised, no gradient below
      x0_real = x_s - s F_real(x_s, s, s),  x0_fake = x_s - s F_fake(x_s, s, s)
      p_real = x_fake - x0_real,  p_fake = x_fake - x0_fake
      grad = (p_real - p_fake) / mean|p_real|                       per sample
      L_G = 0.5 mean (x_fake - sg(x_fake - grad))^2                 so dL_G/dx_fake is grad / numel
  guidance turn: the fake score learns the generator's samples, flow matching on sg(x_fake).
The GAN classifier head of DMD2's final recipe is left out (it adds a head and one more pass with
gradient through the fake score), so this baseline's memory and time are lower bounds for DMD2.
Time convention: see twinflow_min/transport.py.
"""

from __future__ import annotations

import copy

import torch
from _common import autocast, build, make_batch  # noqa: E402  (bench/ is on sys.path)

from twinflow_min.twinflow import flow_matching_loss  # noqa: E402

NOISE_RANGE = (0.02, 0.98)  # DMD2 min_step_percent / max_step_percent of the noise levels


def make_dmd2_step(model_name: str, batch: int, device: torch.device, dtype_name: str = "fp32",
                   **overrides):
    """A closure running one DMD2-style iteration (both turns); `.state`: nets and optimizers."""
    generator_net = build(model_name, device, **overrides)
    real_score = copy.deepcopy(generator_net).requires_grad_(False)
    fake_score = copy.deepcopy(generator_net)
    optimizer_g = torch.optim.AdamW(generator_net.parameters(), lr=1e-4)
    optimizer_f = torch.optim.AdamW(fake_score.parameters(), lr=1e-4)
    rng = torch.Generator(device=device).manual_seed(0)
    x, y, _ = make_batch(generator_net, batch, device)
    x_shape = x.shape
    ones = torch.ones(batch, device=device)
    low, high = NOISE_RANGE

    def step():
        z = torch.randn(x_shape, generator=rng, device=device)
        with autocast(device, dtype_name):
            x_fake = z - generator_net(z, ones, torch.zeros_like(ones), y).float()  # (B, ...)
            with torch.no_grad():
                s = low + (high - low) * torch.rand(batch, generator=rng, device=device)  # (B,)
                s_x = s.reshape(-1, *([1] * (len(x_shape) - 1)))  # (B, 1, ...)
                noise = torch.randn(x_shape, generator=rng, device=device)
                x_s = (1 - s_x) * x_fake + s_x * noise
                x0_real = x_s - s_x * real_score(x_s, s, s, y).float()
                x0_fake = x_s - s_x * fake_score(x_s, s, s, y).float()
                p_real, p_fake = x_fake - x0_real, x_fake - x0_fake
                scale = p_real.abs().flatten(1).mean(1).reshape(s_x.shape)  # (B, 1, ...)
                grad = torch.nan_to_num((p_real - p_fake) / scale)
            loss_g = 0.5 * (x_fake - (x_fake - grad).detach()).square().mean()
        loss_g.backward()
        optimizer_g.step()
        optimizer_g.zero_grad(set_to_none=True)
        with autocast(device, dtype_name):
            t = torch.rand(batch, generator=rng, device=device)
            n = torch.randn(x_shape, generator=rng, device=device)
            loss_f = flow_matching_loss(fake_score, x_fake.detach(), y, z=n, t=t)["loss"]
        loss_f.backward()
        optimizer_f.step()
        optimizer_f.zero_grad(set_to_none=True)

    step.state = (generator_net, real_score, fake_score, optimizer_g, optimizer_f)
    step.networks = (generator_net, real_score, fake_score)
    return step
