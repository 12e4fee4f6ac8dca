"""Paper companion: when does few-step quality arrive? 1/2/4 NFE at several training lengths.

TwinFlow (arXiv:2512.05150), Sec. 4: the twin-trajectory terms are meant to give a good 1-NFE
generator without first training a multi-step model. Here each method of --methods (toy/companion.py
`METHODS`) is trained from scratch for each length of --lengths (a full run with its own cosine
schedule, what `python train.py --toy moons --max_train_steps N` does) and sampled with 1, 2, 4 NFE
(official UCGM presets) and a 50-step Euler ODE. Writes, under --out (a new folder):
  nfe_vs_steps_<toy>.md    energy distance per method, length and sampler (mean ± sd over seeds)
  nfe_vs_steps_<toy>.png   one panel per method: energy distance (log) against training steps
  nfe_vs_steps_<toy>_<method>.png   one panel of that figure, for one method
  <toy>-<method>-<N>steps-seed<k>/   each train.py run (checkpoint, samples, loss curves)
Default: lengths 250 500 1000 2000 for twinflow-tutorial, rcgm and flow-matching, one seed, one
thread: 3.6 min wall on a 2-core CPU (measured with one other script on the second core). Time
convention: see twinflow_min/transport.py.

    python toy/nfe_vs_steps.py
    python toy/nfe_vs_steps.py --lengths 500 4000 --methods twinflow-large rcgm --seeds 0 1
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
    side_by_side,
    torch_threads,
    wall_time,
)
from twinflow_min.data import TOY_DATASETS  # noqa: E402
from twinflow_min.plots import line_plot_png  # noqa: E402

SCRIPT = "nfe_vs_steps.py"
DEFAULT_METHODS = ("twinflow-tutorial", "rcgm", "flow-matching")
DEFAULT_LENGTHS, QUICK_LENGTHS = (250, 500, 1000, 2000), (2, 4)


def parse_args(argv):
    parser = ToyParser(SCRIPT, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=None,
                        help="training lengths in steps (default 250 500 1000 2000; "
                             "2 4 with --quick)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        default=list(DEFAULT_METHODS),
                        help=f"methods (default {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--toy", default="moons", choices=TOY_DATASETS)
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=[0],
                        help="training seeds (default 0)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: lengths 2 and 4, 200 evaluation samples")
    parser.add_argument("--out", default="outputs/nfe-vs-steps", help="a new output folder")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further train.py flags given to every run")
    args = parser.parse_args(argv)
    args.lengths = sorted(args.lengths or (QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS))
    refuse_repeats(parser, lengths=args.lengths, seeds=args.seeds, methods=args.methods)
    methods = {f"method {method}": METHODS[method] for method in args.methods}
    settings = script_settings(methods, "choose the methods with --methods",
                               max_train_steps="use --lengths")
    refuse_extra(SCRIPT, args.extra, settings)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Train every method at every length and seed; {(method, length): [summary per seed]}."""
    args = parse_args(argv)
    out = fresh_folder(SCRIPT, args.out)
    extra = [*(QUICK_FLAGS if args.quick else []), *args.extra]
    results: dict[tuple[str, int], list[dict]] = {}
    tic = time.time()
    with torch_threads(args.threads):
        for seed in args.seeds:
            for method in args.methods:
                for steps in args.lengths:
                    summary = run(args.toy, METHODS[method], seed=seed, steps=steps, out=out,
                                  name=f"{args.toy}-{method}-{steps}steps-seed{seed}", extra=extra)
                    results.setdefault((method, steps), []).append(summary)
                    print(f"{method:18s} {steps:6d} steps seed {seed}: "
                          + "  ".join(f"{c} {summary[k]:.4f}" for c, k in COLUMNS)
                          + f"  ({summary['seconds']:.0f} s)", flush=True)
        num = summary["num_samples"]
        floor = data_floor(args.toy, num, args.seeds)
    seconds = time.time() - tic

    panels = []
    for method in args.methods:
        series = {c: (args.lengths, [statistics.fmean(s[k] for s in results[method, n])
                                     for n in args.lengths]) for c, k in COLUMNS}
        series[DATA_ROW] = (args.lengths, [statistics.fmean(floor)] * len(args.lengths))
        path = line_plot_png(out / f"nfe_vs_steps_{args.toy}_{method}.png", series, log_y=True,
                             title=f"{args.toy}: {method}", xlabel="training steps",
                             ylabel="energy distance (log10)", size=(520, 380))
        panels.append(Image.open(path).convert("RGB"))
    figure_path = side_by_side(panels, out / f"nfe_vs_steps_{args.toy}.png")
    header = ["method", "steps", *(c for c, _ in COLUMNS)]
    table = [[method, f"{n:,}", *(mean_spread(s[k] for s in results[method, n])
                                  for _, k in COLUMNS)]
             for method in args.methods for n in args.lengths]
    table.append([DATA_ROW, "-", *[mean_spread(floor)] * len(COLUMNS)])
    seeds = ", ".join(map(str, args.seeds))
    batch = summary["batch_size"]  # the last run's; all runs share it
    text = "\n".join([
        f"Energy distance to fresh `{args.toy}` data ({num:,} samples, lower is better) after N "
        f"training steps (batch {batch}, cosine schedule over the N steps, toy preset otherwise); "
        f"{len(args.seeds)} training seed(s) ({seeds})"
        f"{', mean ± sd' if len(args.seeds) > 1 else ''}. Wall time {wall_time(seconds)} in all, "
        f"{args.threads} thread(s).", "",
        markdown_table(header, table)])
    (out / f"nfe_vs_steps_{args.toy}.md").write_text(text + "\n")
    print(text)
    print(f"wrote {figure_path} and {out / f'nfe_vs_steps_{args.toy}.md'}")
    return results


if __name__ == "__main__":
    main()
