"""Cost of one TwinFlow training step relative to plain flow matching, measured side by side.

TwinFlow (arXiv:2512.05150) trades extra network passes (teacher rollout, fake branch, delta_v)
for 1-NFE sampling. This script times one optimizer step (loss, backward, AdamW, EMA) of the same
model under three losses: plain flow matching, the tutorial recipe (every term on every row) and
the large recipe (row groups). Variants interleave round by round so machine noise hits all of them
alike; medians and ratios are printed. A measurement, never a test.

Next to each measured ratio it prints the bound read off the loss code: forward-equivalents per
sample, a row with gradient counting 3 (forward + a backward counted as two), a no-grad row 1.
  flow matching  F(x_t, t, t) with gradient: 3.
  tutorial       4 rows with gradient (base F(x_t, t, t_tgt), F(z, 1, 0), real velocity, adv):
                 12; teacher rollout, N = 2 passes for each of the 2 RCGM rows: 4; CFG target
                 (conditional models, enhanced_ratio 0.5 like train.py's default): 2; delta_v
                 (v_fake and v_real, no grad): 2. Total 18, or 20 with CFG: x6.0 / x6.7 of FM.
  large          every row once with gradient: 3; x_fake for the adv quarter: 0.25; teacher
                 rollout over the e2e+mul+any rows: 2 x 0.75; CFG over those rows: 2 x 0.75;
                 delta_v over the e2e quarter: 2 x 0.25. Total 5.25, or 6.75 with CFG: x1.75 /
                 x2.25.
The "counted" column checks that bound by counting the rows of every model and teacher call of one
step with forward hooks. The bound covers the work that grows with the rows; where other costs weigh
in (small models, small batches, CPUs) the measured ratio drifts from it: fixed per-step costs
(AdamW, EMA update) pull it down, per-call overhead pushes it up (the large recipe makes more,
smaller calls: the toy model at batch 128 measured x2.1 against the bound x1.75).
Time convention: see twinflow_min/transport.py.

    python bench/bench_train_step.py                      # toy model, batch 128, CPU
    python bench/bench_train_step.py --model CIFAR-T/2 --batch 32
    python bench/bench_train_step.py --model CIFAR-S/2 --batch 64 --device cuda --dtype bf16
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RECIPES,
    base_parser,
    build,
    check_common,
    check_counts,
    check_large_batch,
    count_forward_equivalents,
    forward_equivalents,
    interleaved_medians,
    make_train_step,
    write_json,
)

WARMUP_STEPS = 3


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--no-cfg", action="store_true",
                        help="conditional models: enhanced_ratio 0 instead of 0.5")
    parser.set_defaults(rounds=10)
    args = parser.parse_args(argv)
    device = check_common(parser, args)
    check_counts(parser, batch=args.batch, steps=args.steps)
    check_large_batch(parser, args.batch)
    steps, predicted, counted = {}, {}, {}
    for name in RECIPES:
        model = build(args.model, device)
        steps[name] = make_train_step(name, model, args.batch, device, args.dtype,
                                      cfg=not args.no_cfg)
        for _ in range(WARMUP_STEPS):
            steps[name]()
        predicted[name] = forward_equivalents(name, args.batch, cfg=steps[name].cfg)
        teacher = steps[name].state[1]
        modules = [model] if teacher is model else [model, teacher]
        counted[name] = count_forward_equivalents(steps[name], modules, args.batch)
    times = interleaved_medians(steps, args.rounds, device, repeats=args.steps)
    cfg_note = "CFG on" if steps["twinflow tutorial"].cfg else "no CFG"
    print(f"{args.model}, batch {args.batch}, {device}, {args.dtype}, {cfg_note};"
          f" median of {args.rounds} interleaved rounds of {args.steps} steps:")
    print(f"  {'recipe':18s} {'ms/step':>9s} {'x FM':>6s} | {'fwd-eq/sample':>13s}"
          f" {'counted':>8s} {'bound x FM':>10s}")
    base_time, base_fwd = times["flow matching"], predicted["flow matching"]["total"]
    result = {}
    for name in RECIPES:
        total = predicted[name]["total"]
        result[name] = {"ms_per_step": times[name], "ratio": times[name] / base_time,
                        "fwd_equivalents": predicted[name], "counted": counted[name],
                        "bound_ratio": total / base_fwd}
        print(f"  {name:18s} {times[name]:9.2f} {times[name] / base_time:6.2f} |"
              f" {total:13.2f} {counted[name]:8.2f} {total / base_fwd:10.2f}")
    for name in RECIPES[1:]:
        parts = ", ".join(f"{part} {value:g}" for part, value in predicted[name].items()
                          if part != "total" and value)
        print(f"  {name}: {parts}")
    write_json(args.json, {"model": args.model, "batch": args.batch, "device": str(device),
                           "dtype": args.dtype, "results": result})
    return result


if __name__ == "__main__":
    main()
