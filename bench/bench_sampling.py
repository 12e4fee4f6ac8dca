"""Few-step sampling against a 50-step sampler: latency (batch 1), throughput (batch 10, larger).

The paper's inference claim: 1-4 network evaluations (NFE) instead of tens of steps. This script
times the UCGM sampler (twinflow_min/sampler.py) on the same model at 1, 2 and 4 NFE (the official
presets, `preset_for_nfe`) and with the 50-step multi-step reference that train.py evaluates (Euler
on the instantaneous velocity: style "mul", no re-noising, 50 NFE). Each (model, batch) compares
the four samplers in interleaved rounds and reports medians: ms per call, ms per sample, samples/s
and the speed-up against 50 steps. The weights are the random initialisation: the cost of a call
does not depend on them. A measurement, never a test. Time convention: see
twinflow_min/transport.py.

    python bench/bench_sampling.py                 # toy and CIFAR-T/2, batches 1, 10, 64, CPU
    python bench/bench_sampling.py --models CIFAR-S/2 --batches 1 10 256 --device cuda --dtype bf16
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    autocast,
    base_parser,
    build,
    check_common,
    check_counts,
    interleaved_medians,
    make_batch,
    write_json,
)

from twinflow_min.sampler import preset_for_nfe, ucgm_sample  # noqa: E402

MULTISTEP = 50
# the multi-step reference of train.py's evaluation: 50 Euler steps on F(x, t, t), no re-noising
MULTISTEP_OPTIONS = dict(steps=MULTISTEP, style="mul", stochastic_ratio=0.0,
                         boundary_gaps=(0.0, 0.0))
FEW_STEP_NFES = (1, 2, 4)


def sampler_call(model, batch: int, nfe: int, device: torch.device, dtype: str):
    """A closure drawing `batch` samples with `nfe` network calls (MULTISTEP: the reference)."""
    z, y, _ = make_batch(model, batch, device, seed=1)
    options = dict(MULTISTEP_OPTIONS) if nfe == MULTISTEP else preset_for_nfe(nfe)
    generator = torch.Generator(device=device).manual_seed(2)

    def call():
        with autocast(device, dtype):
            return ucgm_sample(model, z, y=y, generator=generator, **options)

    return call


def measure(model_name: str, batches: list[int], device: torch.device, dtype: str,
            rounds: int, **overrides) -> dict:
    """{batch: {nfe: {"ms_per_call", "ms_per_sample", "samples_per_s", "speedup_vs_50"}}}.

    overrides: DiTConfig fields changed from the registry entry (e.g. a tiny stand-in model)."""
    model = build(model_name, device, **overrides).eval()
    results = {}
    for batch in batches:
        calls = {nfe: sampler_call(model, batch, nfe, device, dtype)
                 for nfe in (*FEW_STEP_NFES, MULTISTEP)}
        for call in calls.values():
            call()  # warm-up
        times = interleaved_medians(calls, rounds, device)
        results[batch] = {nfe: {"ms_per_call": ms, "ms_per_sample": ms / batch,
                                "samples_per_s": batch / ms * 1e3,
                                "speedup_vs_50": times[MULTISTEP] / ms}
                          for nfe, ms in times.items()}
    return results


def print_table(model_name: str, results: dict) -> None:
    """One block per batch size: ms/call, ms/sample, samples/s, speed-up vs 50 steps."""
    for batch, rows in results.items():
        kind = "latency" if batch == 1 else "throughput"
        print(f"  {model_name}, batch {batch} ({kind}):")
        for nfe, row in rows.items():
            label = f"{nfe}-step" if nfe == MULTISTEP else f"{nfe} NFE"
            print(f"    {label:8s} {row['ms_per_call']:10.2f} ms/call {row['ms_per_sample']:10.3f}"
                  f" ms/sample {row['samples_per_s']:10.1f} samples/s"
                  f"  x{row['speedup_vs_50']:6.1f} vs {MULTISTEP} steps")


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=["toy", "CIFAR-T/2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 10, 64])
    args = parser.parse_args(argv)
    device = check_common(parser, args)
    check_counts(parser, batches=args.batches)
    print(f"UCGM sampler, {device}, {args.dtype}, random weights;"
          f" median of {args.rounds} interleaved rounds")
    results = {}
    for name in args.models:
        results[name] = measure(name, args.batches, device, args.dtype, args.rounds)
        print_table(name, results[name])
    write_json(args.json, {"device": str(device), "dtype": args.dtype, "rounds": args.rounds,
                           "results": results})
    return results


if __name__ == "__main__":
    main()
