"""Peak memory and time of one training step: flow matching, TwinFlow (both recipes), DMD2-style.

The paper's memory claim: TwinFlow trains one network (plus its EMA teacher) where DMD2-style
distillation holds three (generator, trainable fake score, frozen real score) and two optimizers.
This script measures one optimizer step of each on the same DiT and prints the ratios to plain flow
matching. The DMD2-style step is a baseline written in bench/dmd2_baseline.py (see its docstring),
not a library feature. Flow matching and TwinFlow each keep one EMA copy (flow matching's for
sampling, TwinFlow's as the teacher); the DMD2-style step keeps none, like DMD2's EDM trainer.

How memory is measured (also printed with the table):
  CUDA  torch.cuda.max_memory_allocated() over one step, each variant alone on the device.
  CPU   state + transient: the bytes of the distinct tensor storages alive before the step (weights,
        EMA copy, optimizer state; gradients are freed between steps) plus the peak of the CPU
        allocator's live-byte counter during the step, as torch.profiler(profile_memory=True)
        reports it in its [memory] events ("Total Allocated"). Tensor bytes only, no caching.
Time: median of interleaved rounds (bench/_common.py). Measurements, never a test.

    python bench/bench_memory.py                               # CIFAR-T/2, batch 32, CPU
    python bench/bench_memory.py --model CIFAR-S/2 --batch 64 --device cuda --dtype bf16
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RECIPES,
    base_parser,
    build,
    check_common,
    check_counts,
    check_large_batch,
    forward_equivalents,
    interleaved_medians,
    make_train_step,
    peak_step_memory,
    write_json,
)
from dmd2_baseline import make_dmd2_step  # noqa: E402

VARIANTS = (*RECIPES, "dmd2")
WARMUP_STEPS = 2  # optimizer state and the EMA copy exist after the first step


def make_variant(name: str, model_name: str, batch: int, device, dtype: str, checkpointing: bool):
    """One variant's step closure (its `.state` holds what it keeps between steps)."""
    overrides = {"gradient_checkpointing": True} if checkpointing else {}
    if name == "dmd2":
        return make_dmd2_step(model_name, batch, device, dtype, **overrides)
    return make_train_step(name, build(model_name, device, **overrides), batch, device, dtype)


def measure(model_name: str, batch: int, device, dtype: str, rounds: int,
            checkpointing: bool = False) -> dict:
    """{variant: {state_mib, transient_mib, peak_mib, ms_per_step, fwd_equivalents, method}}."""
    results = {}
    for name in VARIANTS:  # memory: one variant alive at a time
        step = make_variant(name, model_name, batch, device, dtype, checkpointing)
        for _ in range(WARMUP_STEPS):
            step()
        results[name] = peak_step_memory(step, device, step.state)
        cfg = getattr(step, "cfg", False)
        results[name]["fwd_equivalents"] = forward_equivalents(name, batch, cfg=cfg)["total"]
        del step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    steps = {}
    for name in VARIANTS:  # time: all alive, interleaved
        steps[name] = make_variant(name, model_name, batch, device, dtype, checkpointing)
        steps[name]()
    times = interleaved_medians(steps, rounds, device)
    for name in VARIANTS:
        results[name]["ms_per_step"] = times[name]
    return results


def print_table(results: dict, title: str) -> None:
    """The side-by-side table with ratios to flow matching."""
    base = results["flow matching"]
    print(title)
    print(f"  memory: {base['method']}")
    print(f"  {'variant':18s} {'state MiB':>10s} {'step MiB':>9s} {'peak MiB':>9s} {'x FM':>6s}"
          f" {'ms/step':>9s} {'x FM':>6s} {'fwd-eq':>7s} {'x FM':>6s}")
    for name, row in results.items():
        print(f"  {name:18s} {row['state_mib']:10.2f} {row['transient_mib']:9.2f}"
              f" {row['peak_mib']:9.2f} {row['peak_mib'] / base['peak_mib']:6.2f}"
              f" {row['ms_per_step']:9.1f} {row['ms_per_step'] / base['ms_per_step']:6.2f}"
              f" {row['fwd_equivalents']:7.2f}"
              f" {row['fwd_equivalents'] / base['fwd_equivalents']:6.2f}")


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--model", default="CIFAR-T/2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute transformer blocks in backward")
    parser.set_defaults(rounds=3)
    args = parser.parse_args(argv)
    device = check_common(parser, args)
    check_counts(parser, batch=args.batch)
    check_large_batch(parser, args.batch)
    results = measure(args.model, args.batch, device, args.dtype, args.rounds,
                      args.gradient_checkpointing)
    title = (f"{args.model}, batch {args.batch}, {device}, {args.dtype}"
             f"{', gradient checkpointing' if args.gradient_checkpointing else ''};"
             f" one step each, time = median of {args.rounds} interleaved rounds")
    print_table(results, title)
    write_json(args.json, {"model": args.model, "batch": args.batch, "device": str(device),
                           "dtype": args.dtype, "results": results})
    return results


if __name__ == "__main__":
    main()
