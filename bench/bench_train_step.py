"""Cost of one TwinFlow training step relative to plain flow matching, measured side by side.

TwinFlow (arXiv:2512.05150) trades extra forward passes (teacher rollout, fake branch, delta_v) for 1-NFE
sampling. This benchmark times one optimizer step of the same model under three losses — plain flow
matching, the tutorial recipe (every term on every row) and the large recipe (row groups) — interleaving the
variants round by round so machine noise hits all of them alike, and prints medians and ratios. It is a
measurement, never a test.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, negative t is the fake branch.

    python bench/bench_train_step.py                      # toy model, batch 128, CPU
    python bench/bench_train_step.py --model CIFAR-T/2 --batch 16 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twinflow_min.ema import EMATeacher  # noqa: E402
from twinflow_min.model import build_model  # noqa: E402
from twinflow_min.twinflow import flow_matching_loss, sample_training_inputs, twinflow_losses  # noqa: E402


def make_step(name: str, model, batch: int, device: torch.device):
    ema = EMATeacher(model, decay=0.99)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    config = model.config
    shape = (config.data_dim,) if config.data_dim else (config.in_channels, config.input_size, config.input_size)
    y = None if config.num_classes == 0 else torch.randint(config.num_classes, (batch,), device=device)
    x = torch.randn(batch, *shape, device=device)

    def step():
        if name == "flow matching":
            z = torch.randn(x.shape, generator=generator, device=device)
            t = torch.rand(batch, generator=generator, device=device)
            terms = flow_matching_loss(model, x, y, z=z, t=t)
        else:
            recipe = "large" if "large" in name else "tutorial"
            inputs = sample_training_inputs(x, generator, recipe=recipe)
            terms = twinflow_losses(model, ema.teacher, x, y, recipe=recipe, **inputs)
        terms["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    names = ["flow matching", "twinflow tutorial", "twinflow large"]
    steps = {}
    for name in names:
        torch.manual_seed(0)
        model = build_model(args.model).to(device)
        steps[name] = make_step(name, model, args.batch, device)
        for _ in range(3):
            steps[name]()  # warm-up
    times = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    base = statistics.median(times["flow matching"])
    print(f"{args.model}, batch {args.batch}, {device}, median of {args.rounds} interleaved rounds:")
    result = {}
    for name in names:
        median = statistics.median(times[name])
        result[name] = median
        print(f"  {name:18s} {median:8.2f} ms/step   x{median / base:5.2f} of flow matching")
    return result


if __name__ == "__main__":
    main()
