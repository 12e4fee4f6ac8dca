r"""Paper companion: TwinFlow vs its RCGM base vs flow matching on a 2-D toy at 1/2/4 NFE.

TwinFlow (arXiv:2512.05150), Sec. 4 ablation (adding the twin-trajectory terms to the RCGM base
improves 1-NFE quality). Five methods (toy/companion.py `METHODS`), each trained with the same
model, batch, optimizer and steps for every seed of --seeds:
  flow-matching      plain flow matching
  rcgm               L_base alone (official RCGM mode: tutorial training_step, no using_twinflow)
  rcgm+realvel       L_base + real velocity
  twinflow-tutorial  L_base + real velocity + L_adv + L_rectify + consistency (tutorial recipe)
  twinflow-large     the large recipe, equal e2e / mul / any / adv row groups
and, with --methods, two rows that split the tutorial recipe's twin-branch terms apart:
  rcgm+realvel+consistency   tutorial recipe without L_adv and L_rectify
  rcgm+realvel+adv+rectify   tutorial recipe without the consistency term
each sampled with 1, 2, 4 NFE (official UCGM presets) and a 50-step Euler ODE, scored by the energy
distance to 4,000 fresh data points on fixed draws. Writes, under --out (a new folder):
  compare_<toy>.md    mean ± sd over the seeds per method and sampler, the data-vs-data floor, and
                      every run's numbers
  compare_<toy>.png   one row per method (first seed): 1, 2, 4 NFE and the ODE over the data
  <toy>-<method>-seed<k>/   each train.py run (checkpoint, samples, loss curves)

Default budget: 1,000 steps per run (half the toy preset's 2,000) x 5 methods x 3 seeds, one thread:
5.1 min wall on a 2-core CPU (measured with one other script on the second core). Time convention:
see twinflow_min/transport.py.

    python toy/compare_methods.py                           # moons, 3 seeds
    python toy/compare_methods.py --toy 8gaussians --steps 2000 --out outputs/compare-8g
    python toy/compare_methods.py --methods rcgm+realvel rcgm+realvel+consistency \
        rcgm+realvel+adv+rectify twinflow-tutorial --out outputs/compare-terms
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toy.companion import (  # noqa: E402
    COLUMNS,
    DATA_ROW,
    METHODS,
    QUICK_FLAGS,
    ToyParser,
    data_floor,
    fresh_folder,
    markdown_table,
    mean_spread,
    positive_int,
    refuse_extra,
    refuse_repeats,
    run,
    script_settings,
    seed_value,
    stack_rows,
    torch_threads,
    wall_time,
)
from twinflow_min.data import TOY_DATASETS  # noqa: E402

SCRIPT = "compare_methods.py"
DEFAULT_STEPS, QUICK_STEPS = 1000, 3
DEFAULT_METHODS = ("flow-matching", "rcgm", "rcgm+realvel", "twinflow-tutorial", "twinflow-large")


def parse_args(argv):
    parser = ToyParser(SCRIPT, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", default="moons", choices=TOY_DATASETS)
    parser.add_argument("--steps", type=positive_int, default=None,
                        help=f"training steps per run (default {DEFAULT_STEPS}; "
                             f"{QUICK_STEPS} with --quick)")
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=None,
                        help="training seeds (default 0 1 2; 0 with --quick)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        default=list(DEFAULT_METHODS),
                        help=f"methods to train (default {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1: fastest for the 64-wide MLP on a busy CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3 steps, one seed, 200 evaluation samples")
    parser.add_argument("--out", default="outputs/compare", help="a new output folder")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further train.py flags for every run, e.g. --extra --batch-size 64")
    args = parser.parse_args(argv)
    args.steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    refuse_repeats(parser, seeds=args.seeds, methods=args.methods)
    methods = {f"method {method}": METHODS[method] for method in args.methods}
    refuse_extra(SCRIPT, args.extra, script_settings(methods, "choose the methods with --methods"))
    return args


def main(argv: list[str] | None = None) -> dict:
    """Train every method for every seed, write table and figure; {method: [summary per seed]}."""
    args = parse_args(argv)
    out = fresh_folder(SCRIPT, args.out)
    extra = [*(QUICK_FLAGS if args.quick else []), *args.extra]
    results: dict[str, list[dict]] = {method: [] for method in args.methods}
    tic = time.time()
    with torch_threads(args.threads):
        for seed in args.seeds:
            for method in args.methods:
                summary = run(args.toy, METHODS[method], seed=seed, steps=args.steps, out=out,
                              name=f"{args.toy}-{method}-seed{seed}", extra=extra)
                results[method].append(summary)
                print(f"{method:24s} seed {seed}: "
                      + "  ".join(f"{c} {summary[k]:.4f}" for c, k in COLUMNS)
                      + f"  ({summary['seconds']:.0f} s)", flush=True)
        num = results[args.methods[0]][0]["num_samples"]
        floor = data_floor(args.toy, num, args.seeds)
    seconds = time.time() - tic

    rows = [Image.open(Path(runs[0]["run_dir"]) / "samples_multistep.png").convert("RGB")
            for runs in results.values()]
    figure_path = stack_rows(rows, list(results), out / f"compare_{args.toy}.png")
    header = ["method", *(c for c, _ in COLUMNS), "s / run"]
    table = [[method, *(mean_spread(s[k] for s in runs) for _, k in COLUMNS),
              f"{statistics.fmean(s['seconds'] for s in runs):.0f}"]
             for method, runs in results.items()]
    table.append([DATA_ROW, *[mean_spread(floor)] * len(COLUMNS), "-"])
    every = [[method, str(seed), *(f"{s[k]:.4f}" for _, k in COLUMNS)]
             for method, runs in results.items() for seed, s in zip(args.seeds, runs)]
    seeds = ", ".join(map(str, args.seeds))
    batch = summary["batch_size"]  # the last run's; all runs share it
    text = "\n".join([
        f"Energy distance to fresh `{args.toy}` data ({num:,} samples, lower is better): "
        f"mean ± sd over {len(args.seeds)} training seed(s) ({seeds}); {args.steps:,} steps of "
        f"batch {batch} per run (toy preset otherwise). `{DATA_ROW}`: a fresh data draw per seed "
        f"scored the same way, the metric's floor. Wall time {wall_time(seconds)} in all, "
        f"{args.threads} thread(s).", "",
        markdown_table(header, table), "", "Every run:", "",
        markdown_table(["method", "seed", *(c for c, _ in COLUMNS)], every)])
    (out / f"compare_{args.toy}.md").write_text(text + "\n")
    print(text)
    print(f"wrote {figure_path} and {out / f'compare_{args.toy}.md'}")
    return results


if __name__ == "__main__":
    main()
